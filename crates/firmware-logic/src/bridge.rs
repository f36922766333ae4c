//! Bridge mode of the relay firmware: ESP-NOW ⇄ USB-serial (spec §12).
//!
//! Every uplink frame heard on the air goes to the Linux relay as an `AirRx`
//! message (source MAC, RSSI, the frame bytes exactly as heard); every
//! `AirTx` message from the host (an ACK the Linux relay made after its
//! journal commit) is transmitted to its destination MAC. The bridge judges
//! nothing: authentication, replay and ACK decisions stay on the host.
//!
//! Only frames that start with version 1 and the uplink type are forwarded;
//! anything else on the air (other ESP-NOW users on the channel) is counted
//! and dropped, so strangers cannot fill the serial link.

use gridpow_proto::wire::serial::{SerialDecoder, SerialKind, SerialRepr, MAX_DATA};
use gridpow_proto::wire::TYPE_UPLINK;
use gridpow_proto::{Error as ProtoError, MacAddr, PROTOCOL_VERSION};

/// Counters for rates; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Uplink frames forwarded to the host.
    pub forwarded: u64,
    /// Frames heard that are not gridpow uplinks (dropped).
    pub foreign: u64,
    /// Transmit requests from the host.
    pub transmit_requests: u64,
    /// Hello messages from the host.
    pub host_hellos: u64,
    /// Serial messages from the host dropped (bad CRC, COBS, kind, length).
    pub bad_host_messages: u64,
    /// Frames the serial writer could not take (host away or too slow).
    pub serial_overruns: u64,
    /// Transmissions the radio refused.
    pub radio_errors: u64,
}

/// What the host asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCommand<'a> {
    /// Transmit `data` to `dst` on the air.
    Transmit {
        /// Destination MAC.
        dst: MacAddr,
        /// ESP-NOW payload.
        data: &'a [u8],
    },
    /// The host greeted the bridge (text); answer with a hello.
    Hello(&'a [u8]),
}

/// The bridge's protocol state: the host-side decoder and counters.
pub struct Bridge {
    own_mac: MacAddr,
    decoder: SerialDecoder,
    stats: BridgeStats,
}

impl Bridge {
    /// A bridge whose radio has MAC `own_mac`.
    pub fn new(own_mac: MacAddr) -> Self {
        Bridge {
            own_mac,
            decoder: SerialDecoder::new(),
            stats: BridgeStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    /// Counts a frame the serial writer had to drop.
    pub fn count_overrun(&mut self) {
        self.stats.serial_overruns += 1;
    }

    /// Counts a transmission the radio refused.
    pub fn count_radio_error(&mut self) {
        self.stats.radio_errors += 1;
    }

    /// Encodes a frame heard on the air for the host into `out`; `Ok(None)`
    /// when it is not a gridpow uplink and was dropped.
    pub fn heard(
        &mut self,
        src: &MacAddr,
        rssi: i8,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<Option<usize>, ProtoError> {
        if data.len() > MAX_DATA || data.get(..2) != Some(&[PROTOCOL_VERSION, TYPE_UPLINK][..]) {
            self.stats.foreign += 1;
            return Ok(None);
        }
        let n = SerialRepr {
            kind: SerialKind::AirRx,
            mac: *src,
            rssi,
            data,
        }
        .emit(out)?;
        self.stats.forwarded += 1;
        Ok(Some(n))
    }

    /// Encodes a hello/status message (`text`) with the bridge's MAC.
    pub fn hello(&self, text: &[u8], out: &mut [u8]) -> Result<usize, ProtoError> {
        let text = &text[..text.len().min(MAX_DATA)];
        SerialRepr {
            kind: SerialKind::Hello,
            mac: self.own_mac,
            rssi: 0,
            data: text,
        }
        .emit(out)
    }

    /// Feeds one byte from the host; returns a command when a message completes.
    pub fn push_host_byte(&mut self, byte: u8) -> Option<HostCommand<'_>> {
        let res = self.decoder.push(byte)?;
        match res {
            Ok(m) => match m.kind {
                SerialKind::AirTx => {
                    self.stats.transmit_requests += 1;
                    Some(HostCommand::Transmit {
                        dst: m.mac,
                        data: m.data,
                    })
                }
                SerialKind::Hello => {
                    self.stats.host_hellos += 1;
                    Some(HostCommand::Hello(m.data))
                }
                SerialKind::AirRx => {
                    // Only the bridge reports heard frames.
                    self.stats.bad_host_messages += 1;
                    None
                }
            },
            Err(_) => {
                self.stats.bad_host_messages += 1;
                None
            }
        }
    }
}

/// Formats into a fixed buffer (status lines without allocation).
pub struct FixedWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> FixedWriter<'a> {
    /// A writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        FixedWriter { buf, len: 0 }
    }
    /// What was written (truncated at the buffer's end).
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl core::fmt::Write for FixedWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(core::fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_proto::wire::serial::MAX_ENCODED;

    #[test]
    fn heard_uplink_reaches_the_host_decoder_intact() {
        let mut b = Bridge::new([9; 6]);
        let frame = [2u8, 1, 1, 0, 5, 6, 7, 8, 0, 0, 0];
        let mut out = [0u8; MAX_ENCODED];
        let n = b
            .heard(&[1, 2, 3, 4, 5, 6], -70, &frame, &mut out)
            .unwrap()
            .unwrap();
        let mut host = SerialDecoder::new();
        let mut got = None;
        for &x in &out[..n] {
            if let Some(Ok(m)) = host.push(x) {
                got = Some((m.kind, m.mac, m.rssi, m.data == frame));
            }
        }
        assert_eq!(
            got,
            Some((SerialKind::AirRx, [1, 2, 3, 4, 5, 6], -70, true))
        );
    }

    #[test]
    fn foreign_frames_are_dropped_and_counted() {
        let mut b = Bridge::new([9; 6]);
        let mut out = [0u8; MAX_ENCODED];
        assert_eq!(b.heard(&[1; 6], 0, b"hello", &mut out), Ok(None));
        assert_eq!(b.heard(&[1; 6], 0, &[1, 2, 0], &mut out), Ok(None));
        assert_eq!(b.stats().foreign, 2);
    }

    #[test]
    fn host_transmit_requests_decode_and_garbage_is_counted() {
        let mut b = Bridge::new([9; 6]);
        let ack = [1u8, 2, 0, 0, 42];
        let mut out = [0u8; MAX_ENCODED];
        let n = SerialRepr {
            kind: SerialKind::AirTx,
            mac: [4; 6],
            rssi: 0,
            data: &ack,
        }
        .emit(&mut out)
        .unwrap();
        // Boot noise before the first delimiter, then the real message.
        for &x in b"rst:0x1 boot\0" {
            assert!(b.push_host_byte(x).is_none());
        }
        let mut seen = false;
        for &x in &out[..n] {
            if let Some(HostCommand::Transmit { dst, data }) = b.push_host_byte(x) {
                seen = dst == [4; 6] && data == ack;
            }
        }
        assert!(seen);
        assert_eq!(b.stats().bad_host_messages, 1);
        assert_eq!(b.stats().transmit_requests, 1);
    }
}
