//! Archive extraction (tar.gz and zip, as sources arrive): an error or files, and every file it
//! reports lies inside the destination, never a panic or a path that escapes.
#![no_main]

use std::path::Path;

use klambda_runtimes::archive::{self, Format, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let dir = std::env::temp_dir().join(format!("klambda-fuzz-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let limits = Limits {
        max_total_bytes: 8 * 1024 * 1024,
        max_files: 256,
        ..Limits::default()
    };
    for name in ["source.tar.gz", "source.zip"] {
        let file = dir.join(name);
        std::fs::write(&file, bytes).expect("the archive is written");
        let dest = dir.join(format!("{name}.out"));
        if Format::detect(&file).is_err() {
            continue;
        }
        if let Ok(files) = archive::extract(&file, &dest, &limits) {
            for relative in files {
                let path = dest.join(&relative);
                assert!(
                    inside(&dest, &path),
                    "{relative:?} was extracted outside the destination"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});

/// Whether `path` is inside `dir`, symlinks resolved.
fn inside(dir: &Path, path: &Path) -> bool {
    match (dir.canonicalize(), path.canonicalize()) {
        (Ok(dir), Ok(path)) => path.starts_with(dir),
        // Reported but not on disk: nothing escaped through it.
        _ => true,
    }
}
