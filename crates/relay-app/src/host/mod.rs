//! Host adapters (std, tokio): what stands in for the ESP32's drivers when
//! the application runs on Linux, for tests and for a relay without a board.
//!
//! - [`UdpRadio`]: the project's UDP air (`gridpow_radio::UdpAir`,
//!   the same one `gridpow relay` and `gridpow meters` use);
//! - [`FileFlash`]: a file with NOR-flash semantics for the state log;
//! - [`StdClock`]: monotonic and system time, tokio timers;
//! - [`TcpConnector`]: tokio TCP through `embedded-io-adapters`;
//! - [`TracingLog`]: log lines to `tracing`;
//! - [`provision`]: the relay's settings and keys from a relay key bundle
//!   (`gridpow keys export relay`) or a relay provisioning blob.

mod clock;
mod flash;
pub mod provision;
mod radio;

pub use clock::StdClock;
pub use flash::{FileFlash, FileFlashError};
pub use radio::{UdpRadio, UdpRadioError};

use std::net::SocketAddr;

use embedded_io_adapters::tokio_1::FromTokio;
use tokio::net::TcpStream;

use crate::traits::{Connector, Level, Log};

/// Connects to the broker over TCP (tokio).
#[derive(Clone, Debug)]
pub struct TcpConnector {
    /// Host name or address and port.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Connector for TcpConnector {
    type Socket = FromTokio<TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Socket, Self::Error> {
        let s = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // Small MQTT packets (PUBACK, PINGREQ) must not wait for Nagle.
        s.set_nodelay(true)?;
        Ok(FromTokio::new(s))
    }
}

impl TcpConnector {
    /// A connector to `addr`.
    pub fn to(addr: SocketAddr) -> Self {
        TcpConnector {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

/// Log lines to `tracing` (target `gridpow_relay_app`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLog;

impl Log for TracingLog {
    fn log(&self, level: Level, line: core::fmt::Arguments<'_>) {
        match level {
            Level::Warn => tracing::warn!("{line}"),
            Level::Info => tracing::info!("{line}"),
            Level::Debug => tracing::debug!("{line}"),
        }
    }
}
