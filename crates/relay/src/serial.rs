//! The serial bridge: an ESP32 in bridge mode forwards every ESP-NOW frame it
//! hears to the host over USB-serial, and transmits what the host asks for
//! (spec §12: COBS, one zero byte per message, CRC-32).
//!
//! [`SerialRadio`] implements [`RadioPort`] over any byte stream: a reader
//! thread decodes the incoming bytes (resynchronising at the next zero after
//! garbage and counting bad messages), and `send` encodes `AirTx` messages.
//! [`SerialRadio::open`] opens a real serial device; tests use a
//! pseudo-terminal pair or an in-memory pipe through [`SerialRadio::from_stream`].

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gridpow_proto::wire::serial::{SerialDecoder, SerialKind, SerialRepr, MAX_ENCODED};
use gridpow_proto::MacAddr;
use gridpow_radio::{Confirmation, RadioError, RadioFrame, RadioPort};

use crate::RelayError;

/// Counters of the serial link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SerialStats {
    /// Frames heard on the air and delivered to the relay.
    pub frames_in: u64,
    /// Frames handed to the bridge for transmission.
    pub frames_out: u64,
    /// Messages dropped: bad CRC, unknown kind, wrong length, COBS errors.
    pub bad_messages: u64,
    /// Hello/status messages from the bridge.
    pub hellos: u64,
}

#[derive(Default)]
struct Counters {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bad: AtomicU64,
    hellos: AtomicU64,
}

struct Link {
    counters: Counters,
    bridge_mac: Mutex<Option<MacAddr>>,
    last_hello: Mutex<String>,
    stop: AtomicBool,
}

/// A [`RadioPort`] over the serial bridge protocol.
pub struct SerialRadio {
    rx: Receiver<RadioFrame>,
    writer: Box<dyn Write + Send>,
    link: Arc<Link>,
    reader: Option<JoinHandle<()>>,
    buf: Vec<u8>,
}

impl SerialRadio {
    /// Opens `device` at `baud` (8N1) and greets the bridge.
    pub fn open(device: &str, baud: u32) -> Result<SerialRadio, RelayError> {
        let err = |e: serialport::Error| RelayError::Serial {
            device: device.to_string(),
            message: e.to_string(),
        };
        let port = serialport::new(device, baud)
            .timeout(Duration::from_millis(100))
            .open_native()
            .map_err(err)?;
        let reader = port.try_clone_native().map_err(err)?;
        let mut radio = SerialRadio::from_stream(reader, port);
        radio
            .hello("gridpow relay")
            .map_err(|e| RelayError::Serial {
                device: device.to_string(),
                message: e.to_string(),
            })?;
        Ok(radio)
    }

    /// A radio over a byte stream split into its reading and writing halves.
    /// The reader may block (a pipe) or time out (a serial port); either works.
    pub fn from_stream(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
    ) -> SerialRadio {
        let (tx, rx) = crossbeam_channel::unbounded();
        let link = Arc::new(Link {
            counters: Counters::default(),
            bridge_mac: Mutex::new(None),
            last_hello: Mutex::new(String::new()),
            stop: AtomicBool::new(false),
        });
        let l = link.clone();
        let reader = std::thread::Builder::new()
            .name("gridpow-serial-rx".into())
            .spawn(move || read_loop(reader, &tx, &l))
            .ok();
        SerialRadio {
            rx,
            writer: Box::new(writer),
            link,
            reader,
            buf: vec![0; MAX_ENCODED],
        }
    }

    /// Sends a hello/status message (text) to the bridge.
    pub fn hello(&mut self, text: &str) -> Result<(), RadioError> {
        let data = text.as_bytes();
        let data = &data[..data.len().min(gridpow_proto::wire::ESPNOW_MAX_PAYLOAD)];
        self.write(SerialKind::Hello, [0; 6], data)
    }

    /// The bridge's MAC, once its hello arrived.
    pub fn bridge_mac(&self) -> Option<MacAddr> {
        *self
            .link
            .bridge_mac
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The text of the bridge's last hello.
    pub fn bridge_hello(&self) -> String {
        self.link
            .last_hello
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counters.
    pub fn stats(&self) -> SerialStats {
        let c = &self.link.counters;
        SerialStats {
            frames_in: c.frames_in.load(Ordering::Relaxed),
            frames_out: c.frames_out.load(Ordering::Relaxed),
            bad_messages: c.bad.load(Ordering::Relaxed),
            hellos: c.hellos.load(Ordering::Relaxed),
        }
    }

    fn write(&mut self, kind: SerialKind, mac: MacAddr, data: &[u8]) -> Result<(), RadioError> {
        let msg = SerialRepr {
            kind,
            mac,
            rssi: 0,
            data,
        };
        let n = msg
            .emit(&mut self.buf)
            .map_err(|_| RadioError::TooLong(data.len()))?;
        self.writer.write_all(&self.buf[..n])?;
        self.writer.flush()?;
        Ok(())
    }
}

impl RadioPort for SerialRadio {
    fn send(&mut self, _src: MacAddr, dst: MacAddr, data: &[u8]) -> Result<(), RadioError> {
        if data.len() > gridpow_proto::wire::ESPNOW_MAX_PAYLOAD {
            return Err(RadioError::TooLong(data.len()));
        }
        // The bridge transmits from its own MAC; `src` is implied.
        self.write(SerialKind::AirTx, dst, data)?;
        self.link
            .counters
            .frames_out
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Result<Option<RadioFrame>, RadioError> {
        match self.rx.recv_timeout(timeout) {
            Ok(f) => Ok(Some(f)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(RadioError::Closed),
        }
    }

    /// The bridge's radio addresses by MAC: nothing to learn.
    fn confirm_peer(&mut self, _mac: MacAddr, _how: Confirmation) {}
}

impl Drop for SerialRadio {
    fn drop(&mut self) {
        self.link.stop.store(true, Ordering::Relaxed);
        // A reader blocked on a pipe ends when its writer closes; a serial
        // port reader wakes at its timeout. Either way, do not wait for it.
        drop(self.reader.take());
    }
}

fn read_loop(mut reader: impl Read, tx: &Sender<RadioFrame>, link: &Link) {
    let mut decoder = SerialDecoder::new();
    let mut buf = [0u8; 1024];
    while !link.stop.load(Ordering::Relaxed) {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "serial bridge read failed; radio closed");
                return;
            }
        };
        for &b in &buf[..n] {
            let Some(res) = decoder.push(b) else { continue };
            match res {
                Ok(m) => match m.kind {
                    SerialKind::AirRx => {
                        let dst = (*link.bridge_mac.lock().unwrap_or_else(|p| p.into_inner()))
                            .unwrap_or([0xff; 6]);
                        let frame = RadioFrame {
                            src: m.mac,
                            dst,
                            data: m.data.to_vec(),
                        };
                        link.counters.frames_in.fetch_add(1, Ordering::Relaxed);
                        if tx.send(frame).is_err() {
                            return;
                        }
                    }
                    SerialKind::Hello => {
                        link.counters.hellos.fetch_add(1, Ordering::Relaxed);
                        *link.bridge_mac.lock().unwrap_or_else(|p| p.into_inner()) = Some(m.mac);
                        let text = String::from_utf8_lossy(m.data).into_owned();
                        tracing::info!(bridge = %gridpow_common::format_mac(&m.mac), hello = %text, "serial bridge says hello");
                        *link.last_hello.lock().unwrap_or_else(|p| p.into_inner()) = text;
                    }
                    SerialKind::AirTx => {
                        // Only the host asks for transmissions.
                        link.counters.bad.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(e) => {
                    link.counters.bad.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "bad serial message dropped");
                }
            }
        }
    }
}
