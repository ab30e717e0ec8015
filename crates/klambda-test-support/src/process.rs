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

/// Every process on this machine serving a function, with the function's name, read from
/// `/proc` (not taken from the platform's word): a process started for its function carries
/// `KLAMBDA_FUNCTION_NAME` in its environment; a warm-pool process claimed for one does not
/// (`/proc` shows the environment it started with) and is known by the cgroup it was moved into,
/// `/klambda/<function>-<NNNNN>.<runner>.<n>`. Processes that end while this looks, or that
/// this user cannot read, are not counted.
pub fn function_processes() -> Vec<(u32, String)> {
    processes()
        .filter_map(|(pid, dir)| {
            let named = std::fs::read(dir.join("environ")).ok().and_then(|environ| {
                environ
                    .split(|b| *b == 0)
                    .filter_map(|var| std::str::from_utf8(var).ok())
                    .find_map(|var| var.strip_prefix("KLAMBDA_FUNCTION_NAME="))
                    .map(str::to_owned)
            });
            let function = named.or_else(|| {
                let groups = std::fs::read_to_string(dir.join("cgroup")).ok()?;
                groups.lines().find_map(|line| {
                    let group = line.splitn(3, ':').nth(2)?.strip_prefix("/klambda/")?;
                    let (revision, _) = group.split_once('.')?;
                    let (function, number) = revision.rsplit_once('-')?;
                    (number.len() == 5 && number.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| function.to_owned())
                })
            })?;
            Some((pid, function))
        })
        .collect()
}

/// The processes whose parent is `parent` now, each with its command line (arguments joined by
/// spaces), read from `/proc`.
pub fn children(parent: u32) -> Vec<(u32, String)> {
    processes()
        .filter_map(|(pid, dir)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces, so read after its ')'.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            if ppid != parent.to_string() {
                return None;
            }
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            let words: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|word| !word.is_empty())
                .map(|word| String::from_utf8_lossy(word).into_owned())
                .collect();
            Some((pid, words.join(" ")))
        })
        .collect()
}

/// Every process on this machine now: its pid and its `/proc` directory.
fn processes() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            Some((
                entry.file_name().to_str()?.parse::<u32>().ok()?,
                entry.path(),
            ))
        })
}
