//! Object storage for build contexts and build records, behind [`ObjectStore`].
//!
//! The embedded implementation is [`LocalDir`]; the S3-compatible one comes with the storage
//! issue. Keys are content-addressed by the stages (`contexts/<digest>.tar.gz`,
//! `images/<digest>.json`), so a write of the same key always carries the same bytes.
//!
//! **Invariant:** a reader never sees half an object: writes go to a temporary file in the same
//! directory and are renamed into place.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A boxed future, so stages hold `Arc<dyn ObjectStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key is not one the platform writes (refused before touching the store).
    #[error("invalid object key {0:?}: keys are lowercase segments of a-z, 0-9, '.', '_' and '-'")]
    InvalidKey(String),
    /// A stored object is not what the platform wrote there.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed; retrying may help.
    #[error("object store {location}: {source}")]
    Io {
        /// Where.
        location: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The key of a content digest's build context (`hex` = the digest's hex part).
pub fn context_key(hex: &str) -> String {
    format!("contexts/{hex}.tar.gz")
}

/// The key of a content digest's build record, written by the builder once an image exists;
/// its presence is the cache hit that skips upload and build.
pub fn image_record_key(hex: &str) -> String {
    format!("images/{hex}.json")
}

/// What the builder records for a built digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image pinned by digest, or the local artifact (`local:/path`).
    pub image: String,
}

impl ImageRecord {
    /// The build record of the digest whose hex part is `hex`, if that digest was built.
    pub async fn load(store: &dyn ObjectStore, hex: &str) -> Result<Option<Self>, StorageError> {
        let key = image_record_key(hex);
        match store.get(&key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StorageError::Corrupt {
                        key,
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// Records that the digest whose hex part is `hex` is built.
    pub async fn save(&self, store: &dyn ObjectStore, hex: &str) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        store.put(&image_record_key(hex), Bytes::from(bytes)).await
    }
}

/// Object storage.
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` under `key`, replacing any previous object atomically.
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<(), StorageError>>;
    /// The object's size, if it exists.
    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;
    /// The object, if it exists.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>>;
    /// How events refer to the object (`file:///…`, `s3://bucket/key`).
    fn uri(&self, key: &str) -> String;
}

/// Validates a key: `/`-separated segments of `[a-z0-9._-]`, none empty, `.` or `..`.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let valid = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if valid {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_owned()))
    }
}

/// Objects as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

static TEMP: AtomicU64 = AtomicU64::new(0);

impl LocalDir {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        location: path.display().to_string(),
        source,
    }
}

impl ObjectStore for LocalDir {
    fn put<'a>(&'a self, key: &'a str, bytes: Bytes) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
            let temp = dir.join(format!(
                ".tmp-{}-{}",
                std::process::id(),
                TEMP.fetch_add(1, Ordering::Relaxed)
            ));
            if let Err(error) = tokio::fs::write(&temp, &bytes).await {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(io(&temp)(error));
            }
            tokio::fs::rename(&temp, &path).await.map_err(io(&path))
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::metadata(&path).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            }
        })
    }

    fn uri(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for ok in ["contexts/ab.tar.gz", "images/0f.json", "a"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/abs", "a//b", "../x", "a/../b", "./a", "A", "a b", "a\\b",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn put_head_get_round_trip_and_replace() -> anyhow::Result<()> {
        let root = std::env::temp_dir().join(format!("klambda-storage-{}", std::process::id()));
        let store = LocalDir::new(&root);
        assert_eq!(store.head("contexts/x.tar.gz").await?, None);
        assert_eq!(store.get("contexts/x.tar.gz").await?, None);
        store
            .put("contexts/x.tar.gz", Bytes::from_static(b"abc"))
            .await?;
        assert_eq!(store.head("contexts/x.tar.gz").await?, Some(3));
        store
            .put("contexts/x.tar.gz", Bytes::from_static(b"abcd"))
            .await?;
        assert_eq!(
            store.get("contexts/x.tar.gz").await?.as_deref(),
            Some(&b"abcd"[..])
        );
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(root.join("contexts"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        assert!(store.put("../escape", Bytes::new()).await.is_err());
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
