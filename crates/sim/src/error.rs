//! Errors of the simulator library.

/// Why a simulation could not be set up or its output written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {field} {reason}")]
    Config {
        /// The offending setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The protocol core refused to set up a meter or relay.
    #[error("protocol core refused the setup: {0}")]
    Proto(gridpow_proto::Error),
    /// A figure could not be drawn or written.
    #[error("could not draw {path}: {reason}")]
    Plot {
        /// The figure's file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl SimError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        SimError::Config {
            field,
            reason: reason.into(),
        }
    }
}

impl From<gridpow_proto::Error> for SimError {
    fn from(e: gridpow_proto::Error) -> Self {
        SimError::Proto(e)
    }
}
