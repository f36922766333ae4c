//! One process per data directory or database file, and preflight checks.
//!
//! Two processes sharing a relay's journal, a fleet's counters or a SQLite
//! database corrupt each other's state without any error (a second demo's
//! blocks were refused as forks, and the first run's journal was left with
//! files missing). Every process that owns such a path therefore takes an
//! exclusive `flock` on a lock file next to it with [`DataLock`] and holds it
//! for its lifetime: the kernel releases it when the process exits or
//! crashes, so there is no stale lock to clean up by hand. The holder writes
//! its pid into the file so that a refused process can say who holds it.
//!
//! The same calls double as the preflight check of writability: taking the
//! lock creates and writes a file in the directory, so a read-only or
//! misnamed directory fails here, at start, with one line naming the path.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What a lock protects, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarded {
    /// A data directory (relay journal, fleet state, demo data).
    DataDir,
    /// A SQLite database file.
    Database,
}

impl std::fmt::Display for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Guarded::DataDir => "data directory",
            Guarded::Database => "database",
        })
    }
}

/// Why a data directory or database could not be claimed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Another live process holds the lock.
    #[error(
        "{what} {} is in use by {} (lock file {}); stop it first, or give this process another {what}",
        path.display(),
        holder(*pid),
        lock_file.display()
    )]
    InUse {
        /// Data directory or database.
        what: Guarded,
        /// The directory or database file.
        path: PathBuf,
        /// The lock file.
        lock_file: PathBuf,
        /// The holder's pid, when it could be read.
        pid: Option<u32>,
    },
    /// The path exists but is not a directory (or its parent is not one).
    #[error("{what} {}: {} is a file, not a directory; point it at a directory, or move that file away", path.display(), file.display())]
    NotADirectory {
        /// Data directory or database.
        what: Guarded,
        /// The path.
        path: PathBuf,
        /// The file in the way (the path itself or one of its parents).
        file: PathBuf,
    },
    /// The path cannot be created or written.
    #[error("{what} {} is not writable ({source}); fix its permissions or ownership, or give this process another {what}", path.display())]
    NotWritable {
        /// Data directory or database.
        what: Guarded,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("process {p}"),
        None => "another process".into(),
    }
}

/// An exclusive lock on a data directory or database file, held until drop
/// (or until the process ends, whichever is first).
#[derive(Debug)]
pub struct DataLock {
    // Holding the open file holds the flock; it is never read after locking.
    _file: File,
    lock_file: PathBuf,
}

impl DataLock {
    /// Creates `dir` if needed, checks it is a writable directory, and locks
    /// `dir/LOCK`.
    pub fn dir(dir: &Path) -> Result<DataLock, DataDirError> {
        let what = Guarded::DataDir;
        ensure_dir(what, dir)?;
        lock(what, dir, dir.join("LOCK"))
    }

    /// The lock file.
    pub fn lock_file(&self) -> &Path {
        &self.lock_file
    }
}

/// Checks, before any work, that the SQLite database `db` can be written: its
/// directory is writable (SQLite writes its journal there) and an existing
/// file opens for writing, so a read-only database is refused at start
/// instead of failing every commit. It takes no lock: several grid servers
/// may share one database (SQLite serialises their transactions, and the
/// store re-reads what another writer changed), as they share a PostgreSQL
/// one.
pub fn check_sqlite_writable(db: &Path) -> Result<(), DataDirError> {
    let what = Guarded::Database;
    let parent = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_dir(what, &parent)?;
    match std::fs::metadata(db) {
        Ok(m) if m.is_dir() => Err(DataDirError::NotWritable {
            what,
            path: db.to_path_buf(),
            source: std::io::Error::other("it is a directory, not a database file"),
        }),
        Ok(m) => {
            // A read-only file is refused even when running as root, where
            // opening it would succeed: its mode says someone meant it.
            let denied = if m.permissions().readonly() {
                Some(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            } else {
                OpenOptions::new().write(true).open(db).err()
            };
            match denied {
                Some(source) => Err(DataDirError::NotWritable {
                    what,
                    path: db.to_path_buf(),
                    source,
                }),
                None => Ok(()),
            }
        }
        // Not created yet: the directory check above covers it.
        Err(_) => Ok(()),
    }
}

fn ensure_dir(what: Guarded, dir: &Path) -> Result<(), DataDirError> {
    if let Err(source) = std::fs::create_dir_all(dir) {
        // A file where the directory (or one of its parents) should be is the
        // common mistake; say so rather than "File exists".
        return Err(if let Some(file) = dir.ancestors().find(|a| a.is_file()) {
            DataDirError::NotADirectory {
                what,
                path: dir.to_path_buf(),
                file: file.to_path_buf(),
            }
        } else {
            DataDirError::NotWritable {
                what,
                path: dir.to_path_buf(),
                source,
            }
        });
    }
    if !dir.is_dir() {
        return Err(DataDirError::NotADirectory {
            what,
            path: dir.to_path_buf(),
            file: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn lock(what: Guarded, path: &Path, lock_file: PathBuf) -> Result<DataLock, DataDirError> {
    let not_writable = |source| DataDirError::NotWritable {
        what,
        path: path.to_path_buf(),
        source,
    };
    // Not truncated on open: the holder's pid must survive a refused attempt.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(not_writable)?;
    if let Err(e) = try_lock_exclusive(&file) {
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(not_writable(e));
        }
        let mut s = String::new();
        let pid = file
            .read_to_string(&mut s)
            .ok()
            .and_then(|_| s.trim().parse().ok());
        return Err(DataDirError::InUse {
            what,
            path: path.to_path_buf(),
            lock_file,
            pid,
        });
    }
    let write_pid = |f: &mut File| -> std::io::Result<()> {
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()
    };
    // A full disk shows here, at start, too.
    write_pid(&mut file).map_err(not_writable)?;
    Ok(DataLock {
        _file: file,
        lock_file,
    })
}

#[cfg(unix)]
fn try_lock_exclusive(f: &File) -> std::io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(f, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        let e = std::io::Error::from(e);
        // EWOULDBLOCK and EAGAIN are one code on Linux, but not everywhere.
        if e.raw_os_error() == Some(rustix::io::Errno::WOULDBLOCK.raw_os_error()) {
            std::io::Error::from(std::io::ErrorKind::WouldBlock)
        } else {
            e
        }
    })
}

#[cfg(not(unix))]
fn try_lock_exclusive(f: &File) -> std::io::Result<()> {
    // std's advisory file lock (LockFileEx on Windows).
    f.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => std::io::Error::from(std::io::ErrorKind::WouldBlock),
        std::fs::TryLockError::Error(e) => e,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_pid_and_granted_after_drop() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("relay");
        let first = DataLock::dir(&dir).unwrap();
        let err = DataLock::dir(&dir).unwrap_err();
        match &err {
            DataDirError::InUse { pid, lock_file, .. } => {
                assert_eq!(*pid, Some(std::process::id()));
                assert_eq!(lock_file, &dir.join("LOCK"));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("in use by process {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        drop(first);
        let again = DataLock::dir(&dir).unwrap();
        assert_eq!(again.lock_file(), dir.join("LOCK"));
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        // A regular file in the way fails even as root, where permission
        // bits would not stop a write.
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let err = DataLock::dir(&file).unwrap_err();
        assert!(matches!(err, DataDirError::NotADirectory { .. }), "{err:?}");
        let err = DataLock::dir(&file.join("relay")).unwrap_err();
        assert!(matches!(err, DataDirError::NotADirectory { .. }), "{err:?}");
        let err = check_sqlite_writable(&file.join("gridpow.db")).unwrap_err();
        assert!(matches!(err, DataDirError::NotADirectory { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("{} is a file, not a directory", file.display())),
            "{err}"
        );
    }

    #[test]
    fn a_read_only_database_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("gridpow.db");
        std::fs::write(&db, b"").unwrap();
        let mut p = std::fs::metadata(&db).unwrap().permissions();
        p.set_readonly(true);
        std::fs::set_permissions(&db, p).unwrap();
        let err = check_sqlite_writable(&db).unwrap_err();
        assert!(matches!(err, DataDirError::NotWritable { .. }), "{err:?}");
        assert!(err.to_string().contains("not writable"), "{err}");
    }
}
