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
//! writes its own pid, then `exec`s), so no allocation escapes the limit.

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

impl RevisionCgroup {
    /// Creates (or finds again) the cgroup of `revision` with the limits of `resources`; `None`
    /// when this machine lets the runner create none.
    pub fn create(revision: &str, resources: &Resources) -> Option<Self> {
        Self::create_under(Path::new(ROOT), revision, resources)
    }

    fn create_under(root: &Path, revision: &str, resources: &Resources) -> Option<Self> {
        let memory = u64::from(resources.memory_mib) * 1024 * 1024;
        let quota = u64::from(resources.cpu_millis) * CPU_PERIOD_US / 1000;
        let v2 = root.join("cgroup.controllers");
        if std::fs::read_to_string(&v2).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            let parent = root.join(SUBTREE);
            std::fs::create_dir_all(&parent).ok()?;
            // Hand the memory and cpu controllers down to the revisions' groups.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu");
            let dir = parent.join(revision);
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::write(dir.join("memory.max"), memory.to_string()).ok()?;
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            let _ = std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"));
            return Some(Self {
                revision: revision.to_owned(),
                resources: *resources,
                oom_counter: dir.join("memory.events"),
                dirs: vec![dir],
            });
        }
        let memory_dir = root.join("memory").join(SUBTREE).join(revision);
        std::fs::create_dir_all(&memory_dir).ok()?;
        std::fs::write(memory_dir.join("memory.limit_in_bytes"), memory.to_string()).ok()?;
        // Swap counts against the limit too, where the kernel accounts it.
        let _ = std::fs::write(
            memory_dir.join("memory.memsw.limit_in_bytes"),
            memory.to_string(),
        );
        let mut dirs = vec![memory_dir.clone()];
        let cpu_dir = root.join("cpu").join(SUBTREE).join(revision);
        if std::fs::create_dir_all(&cpu_dir).is_ok()
            && std::fs::write(cpu_dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()).is_ok()
            && std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), quota.to_string()).is_ok()
        {
            dirs.push(cpu_dir);
        }
        Some(Self {
            revision: revision.to_owned(),
            resources: *resources,
            oom_counter: memory_dir.join("memory.oom_control"),
            dirs,
        })
    }

    /// A group of its own for one process of this revision (`<revision>.<n>`), with the same
    /// limits: a process started again never shares a group with one still leaving, nor loses
    /// its group to that one's cleanup. `None` when it cannot be created.
    pub fn fresh(&self) -> Option<Self> {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::create(&format!("{}.{n}", self.revision), &self.resources)
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
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the group's directories (once its processes are gone).
    pub fn remove(&self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
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
    fn no_writable_hierarchy_is_none() {
        let root = Path::new("/proc/klambda-no-cgroups-here");
        assert!(RevisionCgroup::create_under(root, "f-00001", &resources()).is_none());
    }
}
