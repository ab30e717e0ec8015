//! A function's `resources` enforced on one machine: a cgroup per revision with the memory limit
//! (`memoryMib`: over it the kernel kills the process, and the runner says so in the function's
//! output) and the CPU quota (`cpuMillis`: 1000 is one core), as a container runtime does on a
//! cluster.
//!
//! cgroup v2 (a `memory` controller at `/sys/fs/cgroup`) where the runner can write, else the v1
//! `memory` and `cpu` hierarchies. Where neither is writable (the runner is not root, or the
//! machine delegates no cgroup), nothing is enforced and the function's output says so at start:
//! rlimits are no substitute (an address-space limit breaks V8, which reserves far more than it
//! uses). The process joins its cgroup before it executes the function's program (a `sh` wrapper
//! writes its own pid, then `exec`s), so no allocation escapes the limit; or it waited in a group
//! of its own ([`SpareCgroup`], the warm pool's) that takes the revision's name and limits.

use std::path::{Path, PathBuf};

use klambda_events::spec::Resources;
use serde::{Deserialize, Serialize};

/// The cgroup root the runner creates its groups under.
const ROOT: &str = "/sys/fs/cgroup";
/// The runner's own subtree in each hierarchy.
const SUBTREE: &str = "klambda";
/// The CPU period the quota is a share of (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The cgroup directories of one revision, and how to read its OOM kills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionCgroup {
    /// The revision.
    pub revision: String,
    /// Its limits.
    pub resources: Resources,
    /// Every directory the process joins (one for v2; memory and cpu for v1).
    pub dirs: Vec<PathBuf>,
    /// The file counting OOM kills (`memory.events` on v2, `memory.oom_control` on v1).
    pub oom_counter: PathBuf,
}

/// Where one group's directories are, in whichever hierarchy the machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// cgroup v2: one directory, both controllers.
    V2(PathBuf),
    /// cgroup v1: a memory directory, and a cpu one where the runner can make it.
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
    },
}

impl Layout {
    /// Makes (or finds again) the directories of the group `name`, with no limits written.
    fn make(root: &Path, name: &str) -> Option<Self> {
        let v2 = root.join("cgroup.controllers");
        if std::fs::read_to_string(&v2).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            let parent = root.join(SUBTREE);
            std::fs::create_dir_all(&parent).ok()?;
            // Hand the memory and cpu controllers down to the groups below.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu");
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir).ok()?;
            return Some(Self::V2(dir));
        }
        let memory = root.join("memory").join(SUBTREE).join(name);
        std::fs::create_dir_all(&memory).ok()?;
        let cpu = root.join("cpu").join(SUBTREE).join(name);
        let cpu = std::fs::create_dir_all(&cpu).is_ok().then_some(cpu);
        Some(Self::V1 { memory, cpu })
    }

    /// Writes the limits of `resources`; `None` when the memory limit cannot be set (the CPU
    /// quota is best effort, as the swap limit is where the kernel accounts no swap).
    fn limit(&self, resources: &Resources) -> Option<()> {
        let memory = (u64::from(resources.memory_mib) * 1024 * 1024).to_string();
        let quota = u64::from(resources.cpu_millis) * CPU_PERIOD_US / 1000;
        match self {
            Self::V2(dir) => {
                std::fs::write(dir.join("memory.max"), &memory).ok()?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                let _ = std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"));
            }
            Self::V1 { memory: dir, cpu } => {
                std::fs::write(dir.join("memory.limit_in_bytes"), &memory).ok()?;
                // Swap counts against the limit too, where the kernel accounts it.
                let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &memory);
                if let Some(cpu) = cpu {
                    let _ =
                        std::fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())
                            .and_then(|()| {
                                std::fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string())
                            });
                }
            }
        }
        Some(())
    }

    /// The same group under the name `name` (its processes stay in it; renaming takes
    /// microseconds). A directory that cannot be renamed keeps its name.
    fn renamed(&self, name: &str) -> Self {
        let rename = |dir: &PathBuf| {
            let to = dir.with_file_name(name);
            match std::fs::rename(dir, &to) {
                Ok(()) => to,
                Err(_) => dir.clone(),
            }
        };
        match self {
            Self::V2(dir) => Self::V2(rename(dir)),
            Self::V1 { memory, cpu } => Self::V1 {
                memory: rename(memory),
                cpu: cpu.as_ref().map(rename),
            },
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Self::V2(dir) => vec![dir.clone()],
            Self::V1 { memory, cpu } => std::iter::once(memory).chain(cpu).cloned().collect(),
        }
    }

    fn oom_counter(&self) -> PathBuf {
        match self {
            Self::V2(dir) => dir.join("memory.events"),
            Self::V1 { memory, .. } => memory.join("memory.oom_control"),
        }
    }

    /// The group, limited for `revision`.
    fn revision(&self, revision: &str, resources: &Resources) -> RevisionCgroup {
        RevisionCgroup {
            revision: revision.to_owned(),
            resources: *resources,
            dirs: self.dirs(),
            oom_counter: self.oom_counter(),
        }
    }
}

/// Moves the process `pid` into every one of `dirs`.
fn join(dirs: &[PathBuf], pid: u32) -> std::io::Result<()> {
    for dir in dirs {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
    }
    Ok(())
}

/// Removes `dirs` (the kernel refuses while a process is in one).
fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

impl RevisionCgroup {
    /// Creates (or finds again) the cgroup of `revision` with the limits of `resources`; `None`
    /// when this machine lets the runner create none.
    pub fn create(revision: &str, resources: &Resources) -> Option<Self> {
        Self::create_under(Path::new(ROOT), revision, resources)
    }

    fn create_under(root: &Path, revision: &str, resources: &Resources) -> Option<Self> {
        let layout = Layout::make(root, revision)?;
        layout.limit(resources)?;
        Some(layout.revision(revision, resources))
    }

    /// A group of its own for one process of this revision (`<revision>.<n>`), with the same
    /// limits: a process started again never shares a group with one still leaving, nor loses
    /// its group to that one's cleanup. `None` when it cannot be created.
    pub fn fresh(&self) -> Option<Self> {
        Self::create(&self.fresh_name(), &self.resources)
    }

    /// The name of a new group for one process of this revision.
    fn fresh_name(&self) -> String {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}.{n}", self.revision)
    }

    /// How many times the kernel killed a process of this group for its memory.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(&self.oom_counter)
            .ok()
            .and_then(|text| {
                text.lines()
                    .filter_map(|line| line.split_once(' '))
                    .find(|(key, _)| *key == "oom_kill")
                    .and_then(|(_, n)| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The wrapper that puts a process in the group before it runs `program`: `sh -c` writing
    /// its own pid to each `cgroup.procs`, then `exec`ing the rest of its arguments.
    pub fn wrap(&self) -> Vec<String> {
        let mut argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            // The shell exports PWD; the function's environment is the runner's to decide.
            r#"while [ "$1" != -- ]; do echo $$ > "$1" || exit 70; shift; done; shift; unset PWD OLDPWD; exec "$@""#
                .to_owned(),
            "sh".to_owned(),
        ];
        argv.extend(
            self.dirs
                .iter()
                .map(|dir| dir.join("cgroup.procs").display().to_string()),
        );
        argv.push("--".to_owned());
        argv
    }

    /// Moves the running process `pid` into the group (a warm process claimed for the revision,
    /// before it runs any of the function's code). What it allocated before stays counted where
    /// it was: cgroup v2 does not move memory charges.
    pub fn adopt(&self, pid: u32) -> std::io::Result<()> {
        join(&self.dirs, pid)
    }

    /// Removes the group's directories (once its processes are gone).
    pub fn remove(&self) {
        remove(&self.dirs);
    }
}

/// A group made ahead of need, with no limits yet, that a spare process (a warm one of the
/// pool) waits in until a revision claims it and the group gets that revision's limits.
///
/// Why: on cgroup v1 the first move of a process into a group after a quiet moment waits for
/// the kernel (an RCU grace period before the cgroup write lock is taken): about 10 ms, up to
/// 19 ms, measured here (docs/BENCHMARKS.md). A process that is already in its group when it
/// is claimed starts without that wait; writing limits into a group costs microseconds.
#[derive(Debug)]
pub struct SpareCgroup {
    layout: Layout,
}

impl SpareCgroup {
    /// A new group for one spare process; `None` when this machine lets the runner create none.
    pub fn new() -> Option<Self> {
        Self::new_under(Path::new(ROOT))
    }

    fn new_under(root: &Path) -> Option<Self> {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Named for this runner too: two platforms on one machine never share a group.
        let name = format!("spare.{}.{n}", std::process::id());
        Some(Self {
            layout: Layout::make(root, &name)?,
        })
    }

    /// Moves the process `pid` into the group (blocking: this is the wait it takes ahead).
    pub fn adopt(&self, pid: u32) -> std::io::Result<()> {
        join(&self.layout.dirs(), pid)
    }

    /// The group made one process's group of `revision` (as [`RevisionCgroup::fresh`] names
    /// one, so a serving process's group says whose it is), with the revision's limits; `None`
    /// when the memory limit cannot be set (for one thing, the process already uses more).
    pub fn claim(self, revision: &RevisionCgroup) -> Option<RevisionCgroup> {
        let name = revision.fresh_name();
        let layout = self.layout.renamed(&name);
        if layout.limit(&revision.resources).is_none() {
            remove(&layout.dirs());
            return None;
        }
        Some(layout.revision(&name, &revision.resources))
    }

    /// Removes the group's directories (once its process is gone).
    pub fn remove(&self) {
        remove(&self.layout.dirs());
    }
}

/// How old an empty group must be to be swept.
const SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Removes the runner's groups that hold no process any more (left by runners that were killed
/// or whose tasks ended without stopping their revisions). The kernel refuses to remove a group
/// with processes in it, so the groups of other running platforms stay.
pub fn sweep() {
    let root = Path::new(ROOT);
    for hierarchy in [
        root.join(SUBTREE),
        root.join("memory").join(SUBTREE),
        root.join("cpu").join(SUBTREE),
    ] {
        let Ok(entries) = std::fs::read_dir(&hierarchy) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let empty = std::fs::read_to_string(path.join("cgroup.procs"))
                .is_ok_and(|procs| procs.trim().is_empty());
            // A group made a moment ago is empty until its process writes itself into it:
            // another runner's, starting now, is not left over.
            let fresh = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_none_or(|age| age < SWEEP_AFTER);
            if path.is_dir() && empty && !fresh {
                let _ = std::fs::remove_dir(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources() -> Resources {
        Resources {
            memory_mib: 128,
            cpu_millis: 500,
            timeout_seconds: 30,
        }
    }

    #[test]
    fn a_v1_hierarchy_gets_the_memory_limit_and_the_cpu_quota() {
        let root = std::env::temp_dir().join(format!("klambda-cg1-{}", std::process::id()));
        std::fs::create_dir_all(root.join("memory")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(root.join("cpu")).unwrap_or_else(|e| panic!("{e}"));
        let group = RevisionCgroup::create_under(&root, "f-00001", &resources())
            .unwrap_or_else(|| panic!("no group"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        assert_eq!(
            read("memory/klambda/f-00001/memory.limit_in_bytes"),
            "134217728"
        );
        assert_eq!(read("cpu/klambda/f-00001/cpu.cfs_quota_us"), "50000");
        assert_eq!(group.dirs.len(), 2);
        std::fs::write(
            &group.oom_counter,
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(group.oom_kills(), 2);
        let wrapper = group.wrap();
        assert_eq!(wrapper.last().map(String::as_str), Some("--"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_v2_hierarchy_gets_memory_max_and_cpu_max() {
        let root = std::env::temp_dir().join(format!("klambda-cg2-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids")
            .unwrap_or_else(|e| panic!("{e}"));
        let group = RevisionCgroup::create_under(&root, "f-00001", &resources())
            .unwrap_or_else(|| panic!("no group"));
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        assert_eq!(read("klambda/f-00001/memory.max"), "134217728");
        assert_eq!(read("klambda/f-00001/cpu.max"), "50000 100000");
        std::fs::write(
            &group.oom_counter,
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(group.oom_kills(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_spare_group_has_no_limits_until_a_revision_claims_it() {
        let root = std::env::temp_dir().join(format!("klambda-cg-spare-{}", std::process::id()));
        std::fs::create_dir_all(root.join("memory")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(root.join("cpu")).unwrap_or_else(|e| panic!("{e}"));
        let spare = SpareCgroup::new_under(&root).unwrap_or_else(|| panic!("no group"));
        let dirs = spare.layout.dirs();
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        assert!(dirs.iter().all(|dir| dir.is_dir()));
        let limit = dirs[0].join("memory.limit_in_bytes");
        assert!(!limit.exists(), "no limit before the claim");
        let revision = RevisionCgroup::create_under(&root, "f-00001", &resources())
            .unwrap_or_else(|| panic!("no group"));
        let group = spare
            .claim(&revision)
            .unwrap_or_else(|| panic!("not limited"));
        assert!(group.revision.starts_with("f-00001."), "{group:?}");
        // Renamed for the revision: the spare's name is gone, the limits are in.
        assert!(dirs.iter().all(|dir| !dir.exists()), "{dirs:?}");
        let read =
            |dir: &PathBuf, file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert_eq!(read(&group.dirs[0], "memory.limit_in_bytes"), "134217728");
        assert_eq!(read(&group.dirs[1], "cpu.cfs_quota_us"), "50000");
        assert!(group.dirs.iter().all(|dir| dir.ends_with(&group.revision)));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn no_writable_hierarchy_is_none() {
        let root = Path::new("/proc/klambda-no-cgroups-here");
        assert!(RevisionCgroup::create_under(root, "f-00001", &resources()).is_none());
        assert!(SpareCgroup::new_under(root).is_none());
    }
}
