//! Durable file writes, the one way gridpow replaces a file: keys, registries,
//! tokens, the relay's snapshots and outbox, the meters' boot epochs.
//!
//! A file is written to a temporary sibling, fsynced, renamed over its name,
//! and its directory is fsynced, so that after a crash or power cut the name
//! holds either the old or the new content, and a new name survives. Without
//! the directory fsync a freshly written secret may vanish with the power.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Fsyncs directory `dir`, making the entries created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    // `Path::parent` of a bare file name is "": the current directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir).and_then(|d| d.sync_all())
}

/// Creates `dir` and its missing parents, each entry made durable.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another process made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir.parent().unwrap_or(Path::new(".")))
}

/// The temporary sibling `path` is written through: `name.tmp` beside it
/// (not `with_extension`, which would give `relay.key` and `relay.crt` one).
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `data` atomically and durably, creating parent
/// directories; `secret` files get mode 0600 (else 0644) from their creation on.
pub fn write_file(path: &Path, data: &[u8], secret: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new(""));
    create_dir_all(dir)?;
    let tmp = temporary(path);
    // A leftover from a crash may carry other permissions: never reuse it.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Moves `from` to `to` and makes both directories' entries durable.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    let (a, b) = (to.parent(), from.parent());
    for dir in [a, b].into_iter().flatten() {
        sync_dir(dir)?;
        if a == b {
            break;
        }
    }
    Ok(())
}

/// What tells a reader cheaply that a file changed, for services that take
/// up a file again when it does (TLS material, the tokens file): its
/// modification time, length and inode. A file replaced by a rename, as
/// [`write_file`] does it, gets a new inode even within one modification-time
/// tick and with the same length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// How `path` looks now.
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let inode = 0;
        Ok(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode,
        })
    }
}

/// A set of files and how they looked when last seen, for a service that
/// takes them up again when they change (TLS material, a relay's bundle).
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    /// Each file's stamp, `None` while missing or unreadable.
    seen: Vec<Option<FileStamp>>,
}

impl FileWatch {
    /// Watches `paths` from how they look now.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let seen = Self::stamps(&paths);
        FileWatch { paths, seen }
    }

    fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
        paths.iter().map(|p| FileStamp::of(p).ok()).collect()
    }

    /// Whether any file changed (or appeared, or vanished) since the last
    /// call or [`FileWatch::new`]; remembers how they look now, so one
    /// change is reported once.
    pub fn changed(&mut self) -> bool {
        let now = Self::stamps(&self.paths);
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_has_a_new_stamp_even_with_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        write_file(&path, b"same", false).unwrap();
        let first = FileStamp::of(&path).unwrap();
        assert_eq!(FileStamp::of(&path).unwrap(), first);
        write_file(&path, b"same", false).unwrap();
        assert_ne!(FileStamp::of(&path).unwrap(), first);
        std::fs::remove_file(&path).unwrap();
        assert!(FileStamp::of(&path).is_err());
    }

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/relay.key");
        write_file(&path, b"one", true).unwrap();
        write_file(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // A stale temporary with loose permissions is not reused.
        let tmp = temporary(&path);
        std::fs::write(&tmp, b"stale").unwrap();
        write_file(&path, b"three", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert!(!tmp.exists());
        assert_eq!(tmp.file_name().unwrap(), "relay.key.tmp");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            write_file(&dir.path().join("ca.crt"), b"cert", false).unwrap();
            let mode = std::fs::metadata(dir.path().join("ca.crt"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        let moved = dir.path().join("moved.key");
        rename(&path, &moved).unwrap();
        assert!(moved.exists() && !path.exists());
    }
}
