//! Secret values on one machine: a directory (mode 0700) holding one file per secret (mode
//! 0600), named by the secret. `klambda secrets set|list|delete` writes it through `klambda up`;
//! the local runner reads a function's secrets from it each time it starts the function's
//! process, so the values are in that process's environment and nowhere else (not in events,
//! the status store, the runner's state or logs). On a cluster the Secret
//! `klambda-function-secrets` plays this part.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The largest secret value accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A directory of secrets.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: PathBuf,
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

fn checked(name: &str) -> std::io::Result<&str> {
    if klambda_events::spec::is_secret_name(name) {
        Ok(name)
    } else {
        Err(invalid(format!(
            "{name:?} is not a secret name: 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit"
        )))
    }
}

impl SecretStore {
    /// The secrets in `dir` (created on the first `set`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets `name` to `value`, replacing it whole (written aside, then renamed into place).
    pub fn set(&self, name: &str, value: &str) -> std::io::Result<()> {
        let name = checked(name)?;
        if value.len() > MAX_SECRET_BYTES || value.contains('\0') {
            return Err(invalid(format!(
                "a secret value is at most {MAX_SECRET_BYTES} bytes, without NUL bytes"
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let staged = self.dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&staged);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)?;
        file.write_all(value.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&staged, self.dir.join(name))
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> std::io::Result<Option<String>> {
        let name = checked(name)?;
        match std::fs::read_to_string(self.dir.join(name)) {
            Ok(value) => Ok(Some(value)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The names set, sorted.
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| klambda_events::spec::is_secret_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes `name`; whether it was set.
    pub fn delete(&self, name: &str) -> std::io::Result<bool> {
        let name = checked(name)?;
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secrets_are_private_files_named_safely() {
        let dir = std::env::temp_dir().join(format!("klambda-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SecretStore::new(&dir);
        store.set("db-password", "hunter2").unwrap();
        store.set("db-password", "hunter3").unwrap();
        assert_eq!(
            store.get("db-password").unwrap().as_deref(),
            Some("hunter3")
        );
        assert_eq!(store.names().unwrap(), ["db-password"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("db-password")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        for bad in ["../etc/passwd", "Upper", "", "a/b", "-x"] {
            assert!(store.set(bad, "v").is_err(), "{bad:?}");
        }
        assert!(store.delete("db-password").unwrap());
        assert!(!store.delete("db-password").unwrap());
        assert_eq!(store.get("db-password").unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
