//! Untrusted archives: a table of hostile tar.gz and zip files (tar-slip, absolute paths,
//! symlink and hardlink escapes, device files, compression bombs, too many files, oversize), each
//! refused with a reason and nothing written outside the destination (nor left inside it); and
//! well-formed archives unpacked whole.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use klambda_runtimes::archive::{ArchiveError, Limits, extract};
use zip::write::SimpleFileOptions;

/// A tar entry written with raw header fields, so the test can say what `tar::Builder` refuses.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: Vec<u8>,
}

fn file(name: &str, data: &[u8]) -> Raw<'static> {
    Raw {
        name: Box::leak(name.to_owned().into_boxed_str()),
        kind: tar::EntryType::Regular,
        link: "",
        data: data.to_vec(),
    }
}

fn tar_gz(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for entry in entries {
        let mut header = tar::Header::new_old();
        {
            let old = header.as_old_mut();
            old.name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
            old.linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append(&header, entry.data.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .unwrap_or_else(|e| panic!("{e}"))
}

enum ZipEntry<'a> {
    File(&'a str, Vec<u8>),
    Link(&'a str, &'a str),
}

fn zip(entries: &[ZipEntry<'_>]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    for entry in entries {
        match entry {
            ZipEntry::File(name, data) => {
                writer
                    .start_file(*name, options)
                    .unwrap_or_else(|e| panic!("{e}"));
                writer.write_all(data).unwrap_or_else(|e| panic!("{e}"));
            }
            ZipEntry::Link(name, target) => writer
                .add_symlink(*name, *target, options)
                .unwrap_or_else(|e| panic!("{e}")),
        }
    }
    writer
        .finish()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
}

/// A fresh work directory holding the archive; the destination is `<work>/out`.
fn work(case: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("klambda-archive-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let archive = dir.join("source.archive");
    std::fs::write(&archive, bytes).unwrap_or_else(|e| panic!("{e}"));
    (dir, archive)
}

/// Every path under `dir`, relative.
fn listing(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            found.push(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn hostile_archives_are_refused_with_a_reason_and_leave_nothing() {
    let zeros = vec![0u8; 16 * 1024 * 1024];
    let small = Limits {
        max_total_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let many: Vec<Raw<'_>> = (0..100_001).map(|n| file(&format!("f/{n}"), b"")).collect();
    let noise: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|n| (n.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let raw = |name, kind, link| Raw {
        name,
        kind,
        link,
        data: Vec::new(),
    };
    let cases: Vec<(&str, Vec<u8>, Limits, &str)> = vec![
        (
            "tar-slip",
            tar_gz(&[file("../evil.txt", b"x")]),
            Limits::default(),
            "'..'",
        ),
        (
            "tar-slip-nested",
            tar_gz(&[file("a/../../evil.txt", b"x")]),
            Limits::default(),
            "'..'",
        ),
        (
            "tar-absolute",
            tar_gz(&[file("/tmp/evil.txt", b"x")]),
            Limits::default(),
            "absolute",
        ),
        (
            "tar-backslash",
            tar_gz(&[file("..\\evil.txt", b"x")]),
            Limits::default(),
            "backslash",
        ),
        (
            "tar-symlink-out",
            tar_gz(&[raw("passwd", tar::EntryType::Symlink, "/etc/passwd")]),
            Limits::default(),
            "links are not unpacked",
        ),
        (
            "tar-symlink-then-write-through",
            tar_gz(&[
                raw("up", tar::EntryType::Symlink, ".."),
                file("up/evil.txt", b"x"),
            ]),
            Limits::default(),
            "links are not unpacked",
        ),
        (
            "tar-hardlink-out",
            tar_gz(&[raw("shadow", tar::EntryType::Link, "/etc/shadow")]),
            Limits::default(),
            "links are not unpacked",
        ),
        (
            "tar-char-device",
            tar_gz(&[raw("null", tar::EntryType::Char, "")]),
            Limits::default(),
            "not unpacked",
        ),
        (
            "tar-fifo",
            tar_gz(&[raw("pipe", tar::EntryType::Fifo, "")]),
            Limits::default(),
            "not unpacked",
        ),
        (
            "tar-gzip-bomb",
            tar_gz(&[file("zeros", &zeros)]),
            Limits::default(),
            "compression bomb",
        ),
        (
            "tar-100k-files",
            tar_gz(&many),
            Limits::default(),
            "more than 50000 files",
        ),
        (
            "tar-oversize",
            tar_gz(&[file("big", &noise)]),
            small,
            "more than 1048576 bytes",
        ),
        (
            "zip-slip",
            zip(&[ZipEntry::File("../evil.txt", b"x".to_vec())]),
            Limits::default(),
            "'..'",
        ),
        (
            "zip-absolute",
            zip(&[ZipEntry::File("/tmp/evil.txt", b"x".to_vec())]),
            Limits::default(),
            "absolute",
        ),
        (
            "zip-symlink",
            zip(&[ZipEntry::Link("passwd", "/etc/passwd")]),
            Limits::default(),
            "links are not unpacked",
        ),
        (
            "zip-bomb",
            zip(&[ZipEntry::File("zeros", zeros.clone())]),
            Limits::default(),
            "compression bomb",
        ),
        (
            "zip-oversize",
            zip(&[ZipEntry::File("big", noise.clone())]),
            small,
            "more than 1048576 bytes",
        ),
        (
            "not-an-archive",
            b"#!/bin/sh\necho hi\n".to_vec(),
            Limits::default(),
            "not a tar.gz or zip",
        ),
        (
            "truncated",
            tar_gz(&[file("a.txt", &noise)])[..5000].to_vec(),
            Limits::default(),
            "cannot be read",
        ),
    ];
    let mut failures = Vec::new();
    for (case, bytes, limits, expected) in cases {
        let (dir, archive) = work(case, &bytes);
        let dest = dir.join("out");
        match extract(&archive, &dest, &limits) {
            Ok(files) => failures.push(format!("{case}: accepted, unpacked {files:?}")),
            Err(error) => {
                let message = error.to_string();
                if !message.contains(expected) {
                    failures.push(format!("{case}: reason {message:?} lacks {expected:?}"));
                }
                if matches!(error, ArchiveError::Io(_)) {
                    failures.push(format!("{case}: refused as an I/O error: {message}"));
                }
            }
        }
        // Nothing left in the destination, and nothing written beside or above it.
        let left = listing(&dir);
        if left != ["source.archive"] {
            failures.push(format!("{case}: the work directory holds {left:?}"));
        }
        for outside in ["evil.txt", "../evil.txt"] {
            if dir.join(outside).exists() {
                failures.push(format!("{case}: {outside} was written"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if std::path::Path::new("/tmp/evil.txt").exists() {
        failures.push("/tmp/evil.txt was written".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn well_formed_archives_unpack_whole() {
    let tar = tar_gz(&[
        file("./index.js", b"exports.handler = async () => 1;\n"),
        file("lib/util.js", b"module.exports = {};\n"),
        Raw {
            name: "lib/",
            kind: tar::EntryType::Directory,
            link: "",
            data: Vec::new(),
        },
    ]);
    let zip = zip(&[
        ZipEntry::File("app.py", b"def handler(e, c):\n    return e\n".to_vec()),
        ZipEntry::File("pkg/__init__.py", Vec::new()),
    ]);
    for (case, bytes, expected) in [
        ("good-tar", tar, vec!["index.js", "lib/util.js"]),
        ("good-zip", zip, vec!["app.py", "pkg/__init__.py"]),
    ] {
        let (dir, archive) = work(case, &bytes);
        let files = extract(&archive, &dir.join("out"), &Limits::default())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(files, expected, "{case}");
        for file in &files {
            assert!(dir.join("out").join(file).is_file(), "{case}: {file}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
