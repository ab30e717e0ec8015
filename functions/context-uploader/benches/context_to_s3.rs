//! Storage benchmark (issue 5): a source tree of 100 MiB and of 1 GiB rendered into a build
//! context and streamed to S3-compatible storage (a local `s3s-fs`) by the uploader's own code
//! path, against `tar -cf - DIR | gzip -1 > /dev/null` on the same tree in the same run. Prints
//! a table with throughput, the ratio, and this process's peak RSS.
//!
//! Run: `cargo bench -p context-uploader --bench context_to_s3` (`-- --sizes 100,1024` in MiB).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use context_uploader::ContextUploader;
use klambda_events::Runtime;
use klambda_runtimes::Template;
use klambda_runtimes::context::{Content, SourceFile};
use klambda_storage::{S3Settings, S3Store};
use klambda_test_support::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Writes a tree of `mib` MiB of source-like text (files of 1 MiB, words from a small
/// vocabulary in a pseudo-random order: it compresses about as well as code does).
fn tree(mib: usize) -> Result<PathBuf> {
    let dir = PathBuf::from(format!("/var/tmp/knative-lambda/bench-tree-{mib}"));
    if dir.join("done").is_file() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let words = [
        "const",
        "function",
        "return",
        "await",
        "async",
        "handler",
        "event",
        "context",
        "if",
        "else",
        "for",
        "let",
        "import",
        "from",
        "export",
        "class",
        "this",
        "new",
        "true",
        "false",
        "null",
        "data",
        "name",
        "value",
        "result",
        "error",
        "request",
        "response",
        "=",
        "(",
        ")",
        "{",
        "}",
        ";",
        "\n",
        "  ",
        ".",
        ",",
        "=>",
        "'use strict'",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for n in 0..mib {
        let sub = dir.join(format!("src/module{:03}", n / 50));
        std::fs::create_dir_all(&sub)?;
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(sub.join(format!("file{n:05}.js")))?);
        let mut written = 0;
        while written < 1024 * 1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let word = words[(state % words.len() as u64) as usize];
            file.write_all(word.as_bytes())?;
            file.write_all(b" ")?;
            written += word.len() + 1;
        }
    }
    std::fs::write(dir.join("done"), b"")?;
    Ok(dir)
}

fn files(root: &Path) -> Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root)?.display().to_string();
                out.push(SourceFile {
                    path: relative,
                    content: Content::File(path),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1024]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = S3Server::start("bench").await?;
        server.bucket("contexts")?;
        let settings = S3Settings {
            endpoint: Some(server.endpoint.clone()),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            ..S3Settings::new("contexts")
        };
        let store = S3Store::connect(&settings).await;
        let uploader = ContextUploader::new(Arc::new(store));
        let runtime = Runtime::find("nodejs22").ok_or("nodejs22 is a runtime")?;
        let template = Template::of(runtime)?;
        println!("| source tree | `tar -cf - \\| gzip -1 > /dev/null` | context → S3 (multipart) | ratio | context size |");
        println!("| --- | --- | --- | --- | --- |");
        for mib in sizes {
            let root = tree(mib)?;
            let started = Instant::now();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "tar -cf - -C {} src | gzip -1 > /dev/null",
                    root.display()
                ))
                .status()?;
            if !status.success() {
                return Err("tar | gzip failed".into());
            }
            let baseline = started.elapsed().as_secs_f64();
            let files = files(&root)?;
            let started = Instant::now();
            let size = uploader
                .upload(
                    &format!("contexts/bench-{mib}.tar.gz"),
                    template.clone(),
                    template
                        .runtime_files("index.handler", None)
                        .map_err(|e| e.to_string())?,
                    files,
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
            let ours = started.elapsed().as_secs_f64();
            let rate = |s: f64| mib as f64 / s;
            println!(
                "| {mib} MiB | {:.1} s ({:.0} MiB/s) | {:.1} s ({:.0} MiB/s) | {:.2}× | {:.1} MiB |",
                baseline,
                rate(baseline),
                ours,
                rate(ours),
                baseline / ours,
                size as f64 / (1024.0 * 1024.0)
            );
        }
        println!();
        println!("peak RSS of this process (uploader, S3 client, buffers): {:.1} MiB", peak_rss_mib());
        Ok(())
    })
}
