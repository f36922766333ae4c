//! Errors of the relay service.

use std::path::PathBuf;

use gridpow_common::config::ConfigError;
use gridpow_common::datadir::DataDirError;
use gridpow_common::tls::TlsError;
use gridpow_keys::KeyError;
use gridpow_radio::RadioError;

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Keys, registries or certificates could not be read.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The radio could not be opened.
    #[error(transparent)]
    Radio(#[from] RadioError),
    /// The data directory is in use by another process, or not a writable directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The data directory holds data that fails its checks (not a torn tail,
    /// which is repaired, but damage in the middle of fsynced data).
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// A worker thread could not be started.
    #[error("spawning thread {name}: {source}")]
    Spawn {
        /// Thread name.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The serial bridge could not be opened.
    #[error("serial port {device}: {message}")]
    Serial {
        /// Device path.
        device: String,
        /// What went wrong.
        message: String,
    },
}

impl RelayError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RelayError {
        let path = path.into();
        move |source| RelayError::Io { path, source }
    }
}
