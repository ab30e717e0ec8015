//! Objects as files under a directory: the embedded store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::{BoxFuture, Chunks, ObjectStore, StorageError, check_key};

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

    /// A fresh temporary path beside `path`, in a directory that exists.
    async fn temp_beside(&self, path: &Path) -> Result<PathBuf, StorageError> {
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        Ok(dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        )))
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
        crate::traced("put", "local", key, async move {
            let path = self.path(key)?;
            let temp = self.temp_beside(&path).await?;
            if let Err(error) = tokio::fs::write(&temp, &bytes).await {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(io(&temp)(error));
            }
            tokio::fs::rename(&temp, &path).await.map_err(io(&path))
        })
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        crate::traced("head", "local", key, async move {
            let path = self.path(key)?;
            match tokio::fs::metadata(&path).await {
                Ok(meta) => Ok(Some(meta.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StorageError>> {
        crate::traced("get", "local", key, async move {
            let path = self.path(key)?;
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            }
        })
    }

    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        mut chunks: Chunks,
    ) -> BoxFuture<'a, Result<u64, StorageError>> {
        crate::traced("put_stream", "local", key, async move {
            use tokio::io::AsyncWriteExt as _;
            let path = self.path(key)?;
            let temp = self.temp_beside(&path).await?;
            let written = async {
                let mut file = tokio::fs::File::create(&temp).await?;
                let mut size = 0u64;
                while let Some(chunk) = crate::stream::next(&mut chunks).await? {
                    file.write_all(&chunk).await?;
                    size += chunk.len() as u64;
                }
                file.flush().await?;
                Ok::<_, std::io::Error>(size)
            };
            match written.await {
                Ok(size) => {
                    tokio::fs::rename(&temp, &path).await.map_err(io(&path))?;
                    Ok(size)
                }
                Err(error) => {
                    let _ = tokio::fs::remove_file(&temp).await;
                    Err(io(&path)(error))
                }
            }
        })
    }

    fn download<'a>(
        &'a self,
        key: &'a str,
        to: &'a Path,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        crate::traced("download", "local", key, async move {
            let path = self.path(key)?;
            match tokio::fs::copy(&path, to).await {
                Ok(size) => Ok(Some(size)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => Ok(None),
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
    use crate::check_key;

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
