//! The gridpow test harness, a dev-dependency of every crate whose tests
//! need more than the crate itself: private [`Mosquitto`] and
//! [`PgServer`] instances in temporary directories on free ports, the
//! guard of a long-running child process with its log in a file
//! ([`Daemon`]), and the small helpers the test crates shared by copy
//! ([`free_port`], [`KillOnDrop`]). Nothing here ships: the embedded
//! broker of the demo lives in `gridpow-broker`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod daemon;
pub mod mosquitto;
pub mod pg_harness;

pub use daemon::Daemon;
pub use mosquitto::{Mosquitto, MosquittoError, MosquittoOptions};
pub use pg_harness::{PgHarnessError, PgOptions, PgServer};

use std::net::{TcpListener, UdpSocket};
use std::process::Child;

pub use gridpow_common::net::wait_listening;

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted in tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free UDP port on 127.0.0.1 (bound and released, like [`free_port`]).
pub fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failed
/// assertion leaves nothing running: the bare guard, for a child whose
/// output the test reads itself (a pipe) or discards. A child that logs
/// to a file and is stopped, killed or restarted by the test is a
/// [`Daemon`].
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
