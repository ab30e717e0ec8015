//! The warm pool: interpreters started ahead of need, with the runtime's shim loaded, each
//! waiting to be handed one function. A cold start (or a fresh deploy) then skips the
//! interpreter's start and the shim's imports, which is most of its time.
//!
//! - **One function per process, once.** A warm process is claimed by one revision's process
//!   start and is that process from then on: it serves that function until it is stopped, and
//!   is never returned to the pool. A claim is one JSON line on the process's stdin (the shims'
//!   `KLAMBDA_POOL=1` mode; runtimes/README.md): the function's whole environment, its directory
//!   and its user. Before the line is written the runner moves the process into the revision's
//!   cgroup, so none of the function's code runs outside its limits.
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
//!   unclaimed, stdin's end or the signal set again once claimed) and with the pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use klambda_events::Language;
use klambda_events::runtime::{RUNTIMES, Runtime};
use klambda_runtimes::Template;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, ChildStdin, Command};

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
    warm: Mutex<HashMap<Key, VecDeque<Warm>>>,
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
    /// under `dir`. Nothing starts before [`WarmPool::fill`].
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
            dir,
            shims,
            size: size.min(MAX_SIZE),
            warm: Mutex::new(HashMap::new()),
        })
    }

    /// Processes kept per interpreter.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Learns the interpreter of every runtime in the catalogue found on this machine (where a
    /// function's own user finds it, when the runner is root), then fills the pool. Blocking:
    /// each candidate interpreter is asked its version.
    pub fn learn_interpreters(&self) {
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
                warm.entry(Key {
                    language: runtime.language(),
                    program: interpreter.program,
                })
                .or_default();
            }
        }
    }

    /// Starts processes until every interpreter known has [`WarmPool::size`] waiting.
    pub fn fill(&self) {
        let mut warm = self.lock();
        for (key, waiting) in warm.iter_mut() {
            waiting.retain_mut(|w| matches!(w.child.try_wait(), Ok(None)));
            while waiting.len() < self.size {
                match self.start(key) {
                    Ok(process) => waiting.push_back(process),
                    Err(error) => {
                        tracing::warn!(program = %key.program.display(), %error, "a warm process could not start");
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
        let mut warm = self.lock();
        let waiting = warm.entry(key).or_default();
        while let Some(mut process) = waiting.pop_front() {
            match process.child.try_wait() {
                Ok(None) => return Some(process),
                status => {
                    tracing::warn!(?status, "a warm process ended while waiting; not claimed")
                }
            }
        }
        None
    }

    fn start(&self, key: &Key) -> std::io::Result<Warm> {
        let shim = self
            .shims
            .get(&key.language)
            .ok_or_else(|| std::io::Error::other("no shim to keep warm"))?;
        let inherited = INHERITED_ENV
            .iter()
            .filter_map(|name| Some((*name, std::env::var_os(name)?)));
        let mut command = Command::new("setpriv");
        if sandbox::running_as_root() {
            command.arg("--clear-groups");
        }
        command
            .args(["--no-new-privs", "--pdeathsig", "KILL", "--"])
            .arg(&key.program);
        if key.language == Language::Python {
            // Not root's own site-packages: the function's user would not have them.
            command.arg("-s");
        }
        let mut child = command
            .arg(shim)
            .env_clear()
            .envs(inherited)
            .env("KLAMBDA_POOL", "1")
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        Ok(Warm { child, stdin })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Warm>>> {
        self.warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
        let pool = WarmPool::new(&dir, 0).unwrap_or_else(|e| panic!("{e}"));
        pool.learn_interpreters();
        pool.fill();
        assert!(pool.lock().values().all(VecDeque::is_empty));
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
