//! Content-addressed storage of firmware images on disk.
//!
//! Layout under the data directory: `blobs/sha256/<2 hex>/<64 hex>` for stored images and
//! `blobs/tmp/` for uploads in flight. An upload streams into a temporary file; only a complete,
//! validated upload is fsynced and renamed into place, so a failed or interrupted upload leaves
//! nothing behind: a [`BlobWriter`] that is dropped before [`BlobStore::commit`] (a refused
//! upload, a stream error, a client that cancelled, an idle timeout) removes its temporary file,
//! and whatever a crash left in `tmp/` is removed at startup. The event log, not this directory,
//! says which firmware exists: blobs that no firmware references are garbage-collected at startup.
//!
//! Durability: [`BlobStore::commit`] returns only once the image survives a power cut: the file
//! is fsynced, a new prefix directory's entry in `sha256/` is fsynced, and after the rename the
//! prefix directory is fsynced. The caller records the firmware in the event log only after
//! that, so a durable event never names a blob that a power cut can take away. Directories
//! created at open are made durable the same way. Removal (garbage collection, `tmp/` at start)
//! is not synced: a removal undone by a power cut is redone at the next start.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::store::{create_dir_all_durable, sync_dir};

/// The blob directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// An upload being written. Dropping it before [`BlobStore::commit`] removes its temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
    /// `commit` took over the temporary file.
    committed: bool,
}

impl BlobStore {
    /// Opens (creating) `<data_dir>/blobs` and empties its `tmp/`. New directories, and the
    /// data directory's own entry in its parent, are fsynced.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("blobs");
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        create_dir_all_durable(&tmp)?;
        create_dir_all_durable(&root.join("sha256"))?;
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(Self { root })
    }

    /// Where the blob with this sha256 lives.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("xx");
        self.root.join("sha256").join(prefix).join(sha256)
    }

    /// Whether the blob exists.
    pub fn contains(&self, sha256: &str) -> bool {
        self.path_of(sha256).is_file()
    }

    /// Starts an upload into a fresh temporary file.
    pub async fn begin(&self) -> io::Result<BlobWriter> {
        let name = format!("upload-{:016x}", rand::random::<u64>());
        let path = self.root.join("tmp").join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(BlobWriter {
            file,
            path,
            written: 0,
            committed: false,
        })
    }

    /// Makes a finished upload durable under its sha256 (see the module documentation). If
    /// the blob already exists the temporary file is dropped and the existing one is synced
    /// (an earlier process may have stopped between its rename and the directory's fsync).
    pub async fn commit(&self, mut writer: BlobWriter, sha256: &str) -> io::Result<PathBuf> {
        writer.file.flush().await?;
        writer.file.sync_all().await?;
        let target = self.path_of(sha256);
        let upload = writer.path.clone();
        writer.committed = true;
        drop(writer);
        tokio::task::spawn_blocking(move || {
            let moved = (|| {
                let dir = target
                    .parent()
                    .ok_or_else(|| io::Error::other("blob path has no parent"))?;
                create_dir_all_durable(dir)?;
                if target.is_file() {
                    std::fs::remove_file(&upload)?;
                    std::fs::File::open(&target)?.sync_all()?;
                } else {
                    std::fs::rename(&upload, &target)?;
                }
                sync_dir(dir)?;
                Ok(target)
            })();
            if moved.is_err() {
                let _ = std::fs::remove_file(&upload);
            }
            moved
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Reads a whole blob.
    pub async fn read(&self, sha256: &str) -> io::Result<Vec<u8>> {
        tokio::fs::read(self.path_of(sha256)).await
    }

    /// Removes blobs whose sha256 is not in `referenced`. Returns how many were removed.
    pub fn remove_unreferenced(&self, referenced: &HashSet<String>) -> io::Result<usize> {
        let mut removed = 0;
        let base = self.root.join("sha256");
        for prefix in std::fs::read_dir(&base)? {
            let prefix = prefix?;
            if !prefix.file_type()?.is_dir() {
                continue;
            }
            for blob in std::fs::read_dir(prefix.path())? {
                let blob = blob?;
                let name = blob.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&name) {
                    std::fs::remove_file(blob.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Total bytes of stored blobs.
    pub fn size_bytes(&self) -> u64 {
        let mut total = 0;
        let Ok(prefixes) = std::fs::read_dir(self.root.join("sha256")) else {
            return 0;
        };
        for prefix in prefixes.flatten() {
            if let Ok(blobs) = std::fs::read_dir(prefix.path()) {
                total += blobs
                    .flatten()
                    .filter_map(|b| b.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>();
            }
        }
        total
    }
}

impl BlobWriter {
    /// Appends bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Reads back what was written (for validation of the whole file).
    pub async fn read_back(&mut self) -> io::Result<Vec<u8>> {
        self.file.flush().await?;
        tokio::fs::read(&self.path).await
    }

    /// Abandons the upload, removing the temporary file (as dropping it does).
    pub async fn abort(self) {
        drop(self);
    }

    /// The temporary file (tests).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // An unlink is one short system call; it also works while tokio still closes the file.
        if !self.committed
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove an abandoned upload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_is_content_addressed_and_tmp_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let mut w = blobs.begin().await.unwrap();
        w.write(b"hello").await.unwrap();
        assert_eq!(w.written(), 5);
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let path = blobs.commit(w, sha).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert!(blobs.contains(sha));
        assert_eq!(blobs.read(sha).await.unwrap(), b"hello");

        // An abandoned upload leaves nothing, dropped or aborted...
        let mut w = blobs.begin().await.unwrap();
        w.write(b"partial").await.unwrap();
        let tmp = w.path().to_path_buf();
        assert!(tmp.is_file());
        drop(w);
        assert!(!tmp.exists(), "a dropped upload removes its file");
        let mut w = blobs.begin().await.unwrap();
        w.write(b"partial").await.unwrap();
        let tmp = w.path().to_path_buf();
        w.abort().await;
        assert!(!tmp.exists(), "an aborted upload removes its file");
        // ...and a restart empties tmp/ of what a crash left.
        std::fs::write(dir.path().join("blobs/tmp/upload-0000000000000001"), b"x").unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );

        let removed = blobs.remove_unreferenced(&HashSet::new()).unwrap();
        assert_eq!(removed, 1);
        assert!(!blobs.contains(sha));
    }
}
