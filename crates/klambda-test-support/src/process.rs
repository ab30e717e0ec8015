//! Real processes in tests: a free port to start them on, waiting until they answer, stopping
//! them the way Knative does (SIGTERM).

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A port nothing listens on now (the OS's next ephemeral port).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `GET url` answers 200 (an HTTP answer, not a TCP connect: on loopback a connect
/// to a free ephemeral port can connect to itself), failing if `child` exits or `within` passes.
pub async fn wait_healthy(url: &str, child: &mut Child, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if crate::http::get(url).await.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the process exited ({status}) before {url} answered");
        }
        if started.elapsed() > within {
            let _ = child.kill();
            bail!("{url} did not answer within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; kills it after that and
/// fails. Blocks the calling thread: from async code that serves something the child still
/// talks to, call it through `spawn_blocking`.
pub fn terminate(child: &mut Child, within: Duration) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()?;
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the process did not stop within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
