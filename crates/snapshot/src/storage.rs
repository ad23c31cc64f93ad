//! Where snapshot blobs live. Local files now; an object store later implements the same trait.
//! A blob becomes visible only when complete (written to a `.partial` file, synced, renamed), so
//! a crash mid-capture leaves nothing that looks like a snapshot.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::PathBuf;

pub trait Storage: Send + Sync + 'static {
    /// Starts writing blob `id`; it exists only once [`PendingBlob::commit`] returns.
    fn create(&self, id: &str) -> io::Result<PendingBlob>;
    fn open(&self, id: &str) -> io::Result<Box<dyn Read + Send>>;
    fn delete(&self, id: &str) -> io::Result<()>;
    /// Removes blobs left half-written by a crash.
    fn remove_partials(&self) -> io::Result<usize>;
    /// Ids of every complete blob.
    fn list(&self) -> io::Result<Vec<String>>;
}

pub struct PendingBlob {
    file: File,
    partial: PathBuf,
    target: PathBuf,
    written: u64,
}

impl Write for PendingBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.written += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl PendingBlob {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.written
    }

    /// Makes the blob durable and visible; returns its size in bytes.
    pub fn commit(self) -> io::Result<u64> {
        self.file.sync_all()?;
        fs::rename(&self.partial, &self.target)?;
        Ok(self.written)
    }

    /// Throws the half-written blob away.
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.partial);
    }
}

/// Blobs as files in one folder of the data directory.
pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    /// The folder is the operator's only (0700), and so is every blob in it (0600): a
    /// snapshot holds whatever the sandbox held.
    pub fn new(dir: PathBuf) -> io::Result<LocalStorage> {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        Ok(LocalStorage { dir })
    }

    fn path(&self, id: &str) -> io::Result<PathBuf> {
        // Ids are ours, but a path is built from them: keep them to a safe alphabet.
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad snapshot id {id:?}"),
            ));
        }
        Ok(self.dir.join(format!("{id}.tar.zst")))
    }
}

impl Storage for LocalStorage {
    fn create(&self, id: &str) -> io::Result<PendingBlob> {
        let target = self.path(id)?;
        let partial = target.with_extension("zst.partial");
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?
        };
        Ok(PendingBlob {
            file,
            partial,
            target,
            written: 0,
        })
    }

    fn open(&self, id: &str) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::BufReader::new(File::open(self.path(id)?)?)))
    }

    fn delete(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.path(id)?) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|name| name.strip_suffix(".tar.zst")) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    fn remove_partials(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "partial") {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
