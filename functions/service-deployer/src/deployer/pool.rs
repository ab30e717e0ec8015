//! The warm pool: interpreters started ahead of need, with the runtime's shim loaded, each
//! waiting to be handed one function. A cold start (or a fresh deploy) then skips the
//! interpreter's start and the shim's imports, which is most of its time.
//!
//! - **One function per process, once.** A warm process is claimed by one revision's process
//!   start and is that process from then on: it serves that function until it is stopped, and
//!   is never returned to the pool. A claim is one JSON line on the process's stdin (the shims'
//!   `KLAMBDA_POOL=1` mode; runtimes/README.md): the function's whole environment, its directory
//!   and its user. Before the line is written the process's group gets the revision's limits,
//!   so none of the function's code runs outside them.
//! - **Already in its cgroup.** Where the runner sandboxes functions and the machine gives it
//!   cgroups, every warm process waits in a group of its own ([`SpareCgroup`]), so a claim
//!   only writes limits: moving a process into a cgroup is the slowest step of a start on
//!   cgroup v1 (about 10 ms after a quiet moment). For compiled runtimes, whose program is the
//!   function itself, the pool keeps spare shells the same way: `sh` reading its script from
//!   stdin, told at the claim to `exec` the function exactly as a direct start runs it.
//! - **The same process a direct start makes.** A warm process starts with the environment a
//!   function process inherits ([`super::local::INHERITED_ENV`]) and nothing else; when claimed
//!   it replaces that with exactly the environment a direct start would give, changes to the
//!   directory, and (when the runner is root) drops to the function's own user and group, as
//!   `setpriv` does for a direct start, under `no_new_privs` from the start. It is only offered
//!   where that equivalence holds: the artifact's shim is byte for byte the pool's, the
//!   interpreter is the one the runtime id resolves to, and the function's env sets nothing an
//!   interpreter reads as it starts (locale, `NODE_*`, `PYTHON*`; see [`takes_env`]).
//! - **Bounded.** `size` processes per interpreter (`KLAMBDA_WARM_POOL`, 0 turns the pool off);
//!   interpreters are those of the runtime catalogue found on this machine, plus any a launch
//!   asks for. A claimed process is replaced once the claiming start is over, so refilling does
//!   not compete with the start it serves.
//! - **Nothing left behind.** Warm processes die with the runner (`--pdeathsig KILL` while
//!   unclaimed, stdin's end or the signal set again once claimed) and with the pool. They are
//!   started by the pool's own thread, which lives as long as the pool: the parent-death signal
//!   follows the thread that started a process, so a runtime's short-lived blocking thread
//!   would take its warm processes with it when it idles out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use klambda_events::Language;
use klambda_events::runtime::{RUNTIMES, Runtime};
use klambda_runtimes::Template;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, ChildStdin, Command};

use super::limits::SpareCgroup;
use super::local::INHERITED_ENV;
use super::sandbox;

/// The most warm processes per interpreter `KLAMBDA_WARM_POOL` may ask for.
pub const MAX_SIZE: usize = 32;
/// Warm processes per interpreter when `KLAMBDA_WARM_POOL` is not set.
pub const DEFAULT_SIZE: usize = 2;

/// The setting naming the pool's size.
pub const SETTING: &str = "KLAMBDA_WARM_POOL";

/// The pool's size from [`SETTING`]'s value (unset: [`DEFAULT_SIZE`]).
pub fn size_of(setting: Option<&str>) -> Result<usize, String> {
    let Some(value) = setting else {
        return Ok(DEFAULT_SIZE);
    };
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|size| *size <= MAX_SIZE)
        .ok_or_else(|| {
            format!("{SETTING}={value:?}: must be a number of processes from 0 (off) to {MAX_SIZE}")
        })
}

/// Interpreters with the shim loaded, waiting for a function (see the module's docs).
#[derive(Debug)]
pub struct WarmPool {
    dir: PathBuf,
    /// The shim each language's warm processes load.
    shims: HashMap<Language, PathBuf>,
    size: usize,
    warm: Mutex<Waiting>,
    /// Nudges the pool's thread to fill it, once it runs ([`WarmPool::begin`]).
    filler: OnceLock<std::sync::mpsc::SyncSender<()>>,
    /// Whether warm processes wait in cgroups of their own (and spare shells are kept).
    placed: OnceLock<bool>,
    /// Where `setpriv` is, which a spare shell's script runs (it has no `PATH` of its own).
    setpriv: Option<PathBuf>,
}

/// The processes waiting to be claimed.
#[derive(Debug, Default)]
struct Waiting {
    /// Interpreters with a shim loaded, by what they can serve.
    shims: HashMap<Key, VecDeque<Warm>>,
    /// Shells in cgroups of their own, for any program (see the module's docs).
    shells: VecDeque<Warm>,
}

/// Which warm processes can serve a launch: the shim's language and the interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    language: Language,
    program: PathBuf,
}

/// A warm process, not yet claimed.
#[derive(Debug)]
pub struct Warm {
    child: Child,
    stdin: ChildStdin,
    /// The group it waits in, where it has one of its own.
    group: Option<SpareCgroup>,
}

/// What a claimed process is told: the line its shim reads.
#[derive(Debug, Serialize)]
pub struct Claim<'a> {
    /// The function process's whole environment.
    pub env: BTreeMap<&'a str, &'a str>,
    /// Its working directory.
    pub cwd: &'a Path,
    /// The user and group it runs as, when the runner switches users.
    pub uid: Option<u32>,
}

/// A claimed process: now the function's.
#[derive(Debug)]
pub struct Claimed {
    /// The process.
    pub child: Child,
    /// Its stdin, kept open while it runs: a Node.js process exits at its end.
    pub stdin: ChildStdin,
}

impl Warm {
    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The group it waits in, to be limited for the claiming revision; `None` when it has none
    /// of its own (then it is moved into one).
    pub fn group(&mut self) -> Option<SpareCgroup> {
        self.group.take()
    }

    /// Hands a shell its script (see the module's docs); its stdin then ends, as a direct
    /// start's does.
    pub async fn run(mut self, script: &str) -> std::io::Result<Child> {
        self.stdin.write_all(script.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(self.child)
    }

    /// Hands the process its function.
    pub async fn hand(mut self, claim: &Claim<'_>) -> std::io::Result<Claimed> {
        let mut line = serde_json::to_vec(claim)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(Claimed {
            child: self.child,
            stdin: self.stdin,
        })
    }
}

/// Whether `variable`, set in a function's env, is read only as an interpreter starts (so a
/// warm process, started before the function was known, would not honour it).
pub fn takes_env(variable: &str) -> bool {
    INHERITED_ENV.contains(&variable)
        || ["NODE_", "PYTHON", "UV_", "LD_", "MALLOC_", "GLIBC_"]
            .iter()
            .any(|prefix| variable.starts_with(prefix))
}

impl WarmPool {
    /// A pool of `size` processes per interpreter (at most [`MAX_SIZE`]), its shims written
    /// under `dir`. Nothing starts before [`WarmPool::begin`].
    pub fn new(dir: impl Into<PathBuf>, size: usize) -> std::io::Result<Self> {
        let dir = dir.into();
        let mut shims = HashMap::new();
        for runtime in RUNTIMES {
            let Ok(template) = Template::of(*runtime) else {
                continue;
            };
            // A compiled runtime's program is the function itself: nothing to keep warm.
            if template.is_compiled() {
                continue;
            }
            let (name, text) = template.shim();
            let language_dir = dir.join(&template.descriptor().language);
            std::fs::create_dir_all(&language_dir)?;
            std::fs::write(language_dir.join(name), text)?;
            // Public text; a claimed process (the function's user) may look at its own script.
            std::fs::set_permissions(&language_dir, std::fs::Permissions::from_mode(0o755))?;
            let shim = language_dir.join(name);
            std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o644))?;
            shims.insert(runtime.language(), shim);
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            // Warm processes run from here: a relative data directory would be relative twice.
            dir: std::fs::canonicalize(&dir)?,
            shims: shims
                .into_iter()
                .map(|(language, shim)| Ok((language, std::fs::canonicalize(shim)?)))
                .collect::<std::io::Result<_>>()?,
            size: size.min(MAX_SIZE),
            warm: Mutex::new(Waiting::default()),
            filler: OnceLock::new(),
            placed: OnceLock::new(),
            setpriv: std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join("setpriv"))
                .find(|candidate| candidate.is_file()),
        })
    }

    /// Starts the pool's thread (see the module's docs), which learns the interpreters, fills
    /// the pool, and fills it again whenever [`WarmPool::fill`] asks. `placed`: warm processes
    /// wait in cgroups of their own, and spare shells are kept, where the machine gives the
    /// runner cgroups (the runner sandboxes functions). Must be called within a Tokio runtime;
    /// later calls do nothing.
    pub fn begin(self: &Arc<Self>, placed: bool) {
        if self.size == 0 || self.filler.get().is_some() {
            return;
        }
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        if self.filler.set(nudge).is_err() {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let runtime = tokio::runtime::Handle::current();
        let started = std::thread::Builder::new()
            .name("klambda-warm-pool".to_owned())
            .spawn(move || {
                let _runtime = runtime.enter();
                // Groups of their own only where the machine gives the runner one.
                let placed = placed && SpareCgroup::new().inspect(SpareCgroup::remove).is_some();
                if let Some(pool) = pool.upgrade() {
                    let _ = pool.placed.set(placed);
                    pool.learn_interpreters();
                    pool.fill_now();
                }
                // Until the pool is dropped (its end of the channel with it).
                while nudged.recv().is_ok() {
                    let Some(pool) = pool.upgrade() else { break };
                    pool.fill_now();
                }
            });
        if let Err(error) = started {
            tracing::warn!(%error, "the warm pool's thread could not start; no warm processes");
        }
    }

    /// Processes kept per interpreter.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The `setpriv` a spare shell's script runs, where this machine has one.
    pub fn setpriv(&self) -> Option<&Path> {
        self.setpriv.as_deref()
    }

    /// Learns the interpreter of every runtime in the catalogue found on this machine (where a
    /// function's own user finds it, when the runner is root). Blocking: each candidate
    /// interpreter is asked its version.
    fn learn_interpreters(&self) {
        let path = std::env::var("PATH").unwrap_or_default();
        let path = if sandbox::running_as_root() {
            sandbox::reachable_path(&path)
        } else {
            path
        };
        let overrides =
            std::env::var(klambda_runtimes::interpreter::INTERPRETERS).unwrap_or_default();
        let mut warm = self.lock();
        for runtime in RUNTIMES {
            // Interpreted runtimes only: a compiled one has no interpreter to keep warm.
            if !Template::of(*runtime).is_ok_and(|t| !t.is_compiled()) {
                continue;
            }
            if let Ok(interpreter) =
                klambda_runtimes::interpreter::find(*runtime, &overrides, &path)
            {
                warm.shims
                    .entry(Key {
                        language: runtime.language(),
                        program: interpreter.program,
                    })
                    .or_default();
            }
        }
    }

    /// Asks the pool's thread to fill the pool (see [`WarmPool::begin`]); returns at once.
    pub fn fill(&self) {
        if let Some(nudge) = self.filler.get() {
            // Full: a fill is asked for already, and it will see this one's need too.
            let _ = nudge.try_send(());
        }
    }

    /// Starts processes until every interpreter known, and the shells where they are kept,
    /// have [`WarmPool::size`] waiting. Blocking: on the pool's thread only.
    fn fill_now(&self) {
        let placed = self.placed.get().copied().unwrap_or(false);
        let keys: Vec<Key> = self.lock().shims.keys().cloned().collect();
        for key in keys.iter().map(Some).chain(placed.then_some(None)) {
            loop {
                let missing = {
                    let mut warm = self.lock();
                    let waiting = match key {
                        Some(key) => warm.shims.entry(key.clone()).or_default(),
                        None => &mut warm.shells,
                    };
                    waiting.retain_mut(|w| matches!(w.child.try_wait(), Ok(None)));
                    waiting.len() < self.size
                };
                if !missing {
                    break;
                }
                // Started (and moved into its group, the slow part) without the lock, so a
                // claim never waits for it.
                let started = self.start(key, placed);
                let mut warm = self.lock();
                match (started, key) {
                    (Ok(process), Some(key)) => warm
                        .shims
                        .entry(key.clone())
                        .or_default()
                        .push_back(process),
                    (Ok(process), None) if process.group.is_some() => {
                        warm.shells.push_back(process)
                    }
                    // No group to wait in: a shell would save nothing.
                    (Ok(_), None) => break,
                    (Err(error), _) => {
                        let program = key
                            .map_or_else(|| "sh".to_owned(), |k| k.program.display().to_string());
                        tracing::warn!(%program, %error, "a warm process could not start");
                        break;
                    }
                }
            }
        }
    }

    /// A warm process for `runtime` run by `program` from the shim at `shim`, if one is
    /// waiting and the artifact's shim is the pool's. An interpreter not known yet is learnt
    /// (the next [`WarmPool::fill`] warms it).
    pub fn take(&self, runtime: Runtime, program: &Path, shim: &Path) -> Option<Warm> {
        if self.size == 0 {
            return None;
        }
        let template = Template::of(runtime).ok().filter(|t| !t.is_compiled())?;
        if std::fs::read(shim).ok()?.as_slice() != template.shim().1.as_bytes() {
            return None;
        }
        let key = Key {
            language: runtime.language(),
            program: program.to_owned(),
        };
        first_alive(self.lock().shims.entry(key).or_default())
    }

    /// A spare shell waiting in a cgroup of its own, if one is (see the module's docs).
    pub fn take_shell(&self) -> Option<Warm> {
        if self.size == 0 {
            return None;
        }
        first_alive(&mut self.lock().shells)
    }

    /// Starts a warm process: the shim of `key`, or a shell; in a cgroup of its own when
    /// `placed` and the machine gives one.
    fn start(&self, key: Option<&Key>, placed: bool) -> std::io::Result<Warm> {
        let mut command = Command::new("setpriv");
        // A shell's script runs `setpriv` again with the function's own user and groups.
        if key.is_some() && sandbox::running_as_root() {
            command.arg("--clear-groups");
        }
        command.args(["--no-new-privs", "--pdeathsig", "KILL", "--"]);
        match key {
            Some(key) => {
                let shim = self
                    .shims
                    .get(&key.language)
                    .ok_or_else(|| std::io::Error::other("no shim to keep warm"))?;
                command.arg(&key.program);
                if key.language == Language::Python {
                    // Not root's own site-packages: the function's user would not have them.
                    command.arg("-s");
                }
                let inherited = INHERITED_ENV
                    .iter()
                    .filter_map(|name| Some((*name, std::env::var_os(name)?)));
                command
                    .arg(shim)
                    .env_clear()
                    .envs(inherited)
                    .env("KLAMBDA_POOL", "1")
                    .current_dir(&self.dir);
            }
            // Its script sets the whole environment and directory (the runner's directory
            // here, so relative paths mean what they mean to a direct start).
            None => {
                command.args(["/bin/sh", "-s"]).env_clear();
            }
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let group = placed.then(SpareCgroup::new).flatten().and_then(|group| {
            match child.id().map(|pid| group.adopt(pid)) {
                Some(Ok(())) => Some(group),
                failed => {
                    tracing::warn!(?failed, "a warm process could not join a cgroup of its own");
                    group.remove();
                    None
                }
            }
        });
        Ok(Warm {
            child,
            stdin,
            group,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The first of `waiting` still running; those that ended are dropped, and said so.
fn first_alive(waiting: &mut VecDeque<Warm>) -> Option<Warm> {
    while let Some(mut process) = waiting.pop_front() {
        match process.child.try_wait() {
            Ok(None) => return Some(process),
            status => {
                tracing::warn!(?status, "a warm process ended while waiting; not claimed");
                if let Some(group) = &process.group {
                    group.remove();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_a_bounded_count_and_defaults_to_two() {
        assert_eq!(size_of(None), Ok(DEFAULT_SIZE));
        assert_eq!(size_of(Some("0")), Ok(0));
        assert_eq!(size_of(Some(" 32 ")), Ok(32));
        for refused in ["33", "-1", "two", ""] {
            let said = size_of(Some(refused)).unwrap_err();
            assert!(said.contains(SETTING) && said.contains("0 (off)"), "{said}");
        }
    }

    #[test]
    fn env_read_as_an_interpreter_starts_keeps_a_function_off_the_pool() {
        for started_with in [
            "LANG",
            "LC_ALL",
            "TZ",
            "NODE_ENV",
            "PYTHONUTF8",
            "LD_LIBRARY_PATH",
        ] {
            assert!(takes_env(started_with), "{started_with}");
        }
        for read_later in ["GREETING", "DB_PASSWORD", "KLAMBDA_HANDLER", "NODEJS"] {
            assert!(!takes_env(read_later), "{read_later}");
        }
    }

    #[tokio::test]
    async fn a_pool_of_none_starts_nothing_and_offers_nothing() {
        let dir = std::env::temp_dir().join(format!("klambda-pool-none-{}", std::process::id()));
        let pool = Arc::new(WarmPool::new(&dir, 0).unwrap_or_else(|e| panic!("{e}")));
        pool.begin(true);
        pool.fill();
        assert!(pool.filler.get().is_none(), "no thread for a pool of none");
        let waiting = pool.lock();
        assert!(waiting.shims.values().all(VecDeque::is_empty) && waiting.shells.is_empty());
        drop(waiting);
        let runtime = Runtime::find("nodejs20").unwrap_or_else(|| panic!("nodejs20"));
        let shim = dir.join("node").join("shim.js");
        assert!(
            shim.is_file(),
            "the shim is written for the pool's processes"
        );
        assert!(
            pool.take(runtime, Path::new("/usr/bin/node"), &shim)
                .is_none()
        );
        assert!(pool.take_shell().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
