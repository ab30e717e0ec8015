//! A real S3-compatible server for tests: `s3s-fs` (installed by `scripts/services.sh`), one
//! per test on a free port over a temporary directory, with SigV4 credentials. It can be stopped
//! and started again on the same port and data, to test what happens when storage goes away.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::process::free_port;

/// The access key id the test server accepts.
pub const ACCESS_KEY: &str = "klambda-test";
/// The secret key the test server accepts.
pub const SECRET_KEY: &str = "klambda-test-secret";

/// A running `s3s-fs`.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Where its buckets are (one directory each).
    pub root: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// The `s3s-fs` binary: `$KLAMBDA_S3S_FS`, the one `scripts/services.sh` installs, or `PATH`'s.
fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KLAMBDA_S3S_FS") {
        return Ok(PathBuf::from(path));
    }
    let installed = PathBuf::from("/var/tmp/knative-lambda/tools/bin/s3s-fs");
    if installed.is_file() {
        return Ok(installed);
    }
    let on_path = Command::new("s3s-fs")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if on_path.is_ok_and(|s| s.success()) {
        return Ok(PathBuf::from("s3s-fs"));
    }
    bail!(
        "the S3-compatible test server s3s-fs is not installed: run scripts/services.sh (it runs `cargo install s3s-fs@0.14.1 --features binary`)"
    )
}

impl S3Server {
    /// Starts a server with an empty data directory named after `test`.
    pub async fn start(test: &str) -> Result<Self> {
        let root = std::env::temp_dir().join(format!("klambda-s3-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root)?;
        let port = free_port()?;
        let mut server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
            port,
            child: None,
        };
        server.resume().await?;
        Ok(server)
    }

    /// Creates a bucket (a directory of the server's root).
    pub fn bucket(&self, name: &str) -> Result<()> {
        std::fs::create_dir_all(self.root.join(name))
            .with_context(|| format!("creating bucket {name}"))
    }

    /// Multipart uploads started and neither completed nor aborted. s3s-fs does not implement
    /// `ListMultipartUploads`; it keeps each open upload as `.upload-<id>.json` (and its parts
    /// as `.upload_id-<id>.part-<n>`) in its root, so they are counted there.
    pub fn unfinished_uploads(&self) -> Result<usize> {
        let mut open = 0;
        for entry in std::fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".upload-") || name.starts_with(".upload_id-") {
                open += 1;
            }
        }
        Ok(open)
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub async fn resume(&mut self) -> Result<()> {
        self.stop();
        let child = Command::new(binary()?)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs")?;
        self.child = Some(child);
        // Any HTTP answer (an unsigned request gets 403) means it is serving.
        let started = Instant::now();
        while crate::http::get(&format!("{}/", self.endpoint))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("s3s-fs did not answer on {} within 10 s", self.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
