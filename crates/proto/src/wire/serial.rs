//! Serial framing between an ESP32 bridge (firmware relay in bridge mode) and
//! the Linux relay over USB-serial.
//!
//! Each message is COBS-encoded and terminated by one `0x00` byte, so a reader
//! that starts mid-stream resynchronises at the next zero. Decoded, a message is
//!
//! ```text
//! 0      kind   u8   (1 = heard on air, bridge → host; 2 = transmit, host → bridge;
//!                     3 = hello/status, both ways)
//! 1..7   MAC    6 B  (source when heard, destination when transmitting, bridge's own in hello)
//! 7      RSSI   i8   (dBm when heard, 0 otherwise)
//! 8..n   data   0 to 250 bytes (the ESP-NOW payload)
//! n..n+4 CRC-32 (IEEE 802.3, reflected, as zlib's crc32) of bytes 0..n, u32 LE
//! ```

use crate::{Error, MacAddr, Malformed, Misuse};

/// Largest ESP-NOW payload carried.
pub const MAX_DATA: usize = super::ESPNOW_MAX_PAYLOAD;
/// Decoded header length (kind, MAC, RSSI).
pub const HEADER_LEN: usize = 8;
/// Largest decoded message.
pub const MAX_DECODED: usize = HEADER_LEN + MAX_DATA + 4;
/// Largest encoded message including the trailing zero (COBS adds at most one byte per 254).
pub const MAX_ENCODED: usize = MAX_DECODED + MAX_DECODED / 254 + 2;

/// What a serial message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SerialKind {
    /// A frame the bridge heard on the air.
    AirRx = 1,
    /// A frame the host asks the bridge to transmit.
    AirTx = 2,
    /// Hello/status: `data` is UTF-8 text (firmware version, channel).
    Hello = 3,
}

/// A decoded serial message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialRepr<'a> {
    /// Kind.
    pub kind: SerialKind,
    /// Source or destination MAC.
    pub mac: MacAddr,
    /// Received signal strength in dBm (`AirRx`), else 0.
    pub rssi: i8,
    /// The payload.
    pub data: &'a [u8],
}

const fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC32: [u32; 256] = crc32_table();

/// CRC-32 (IEEE, reflected; `crc32(b"123456789") == 0xCBF43926`).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

impl<'a> SerialRepr<'a> {
    /// COBS-encodes the message with its CRC and the trailing zero into `out`;
    /// returns the encoded length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, Error> {
        if self.data.len() > MAX_DATA {
            return Err(Misuse::InvalidArgument.into());
        }
        let mut raw = [0u8; MAX_DECODED];
        raw[0] = self.kind as u8;
        raw[1..7].copy_from_slice(&self.mac);
        raw[7] = self.rssi as u8;
        let n = HEADER_LEN + self.data.len();
        raw[HEADER_LEN..n].copy_from_slice(self.data);
        let crc = crc32(&raw[..n]);
        raw[n..n + 4].copy_from_slice(&crc.to_le_bytes());
        let len = cobs_encode(&raw[..n + 4], out).ok_or(Misuse::BufferTooSmall)?;
        let end = out.get_mut(len).ok_or(Misuse::BufferTooSmall)?;
        *end = 0;
        Ok(len + 1)
    }

    /// Parses a decoded (COBS-removed) message and checks its CRC.
    pub fn parse(decoded: &'a [u8]) -> Result<SerialRepr<'a>, Malformed> {
        if decoded.len() < HEADER_LEN + 4 {
            return Err(Malformed::TooShort);
        }
        if decoded.len() > MAX_DECODED {
            return Err(Malformed::TooLong);
        }
        let (body, crc) = decoded.split_at(decoded.len() - 4);
        if crc32(body).to_le_bytes() != crc {
            return Err(Malformed::BadChecksum);
        }
        let kind = match body[0] {
            1 => SerialKind::AirRx,
            2 => SerialKind::AirTx,
            3 => SerialKind::Hello,
            _ => return Err(Malformed::UnknownValue),
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&body[1..7]);
        Ok(SerialRepr {
            kind,
            mac,
            rssi: body[7] as i8,
            data: &body[HEADER_LEN..],
        })
    }
}

/// COBS encoding without the trailing delimiter; `None` if `out` is too small.
pub fn cobs_encode(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut code_at = 0;
    let mut w = 1;
    let mut code = 1u8;
    *out.get_mut(code_at)? = 0;
    for &b in input {
        if b == 0 {
            *out.get_mut(code_at)? = code;
            code_at = w;
            *out.get_mut(code_at)? = 0;
            w += 1;
            code = 1;
        } else {
            *out.get_mut(w)? = b;
            w += 1;
            code += 1;
            if code == 0xff {
                *out.get_mut(code_at)? = code;
                code_at = w;
                *out.get_mut(code_at)? = 0;
                w += 1;
                code = 1;
            }
        }
    }
    *out.get_mut(code_at)? = code;
    Some(w)
}

/// COBS decoding of one message (without its delimiter) in place; returns the
/// decoded length.
pub fn cobs_decode_in_place(buf: &mut [u8]) -> Result<usize, Malformed> {
    let (mut r, mut w) = (0usize, 0usize);
    while r < buf.len() {
        let code = buf[r];
        if code == 0 {
            return Err(Malformed::BadCobs);
        }
        r += 1;
        let run = usize::from(code) - 1;
        if r + run > buf.len() {
            return Err(Malformed::TooShort);
        }
        for i in 0..run {
            buf[w + i] = buf[r + i];
        }
        w += run;
        r += run;
        if code != 0xff && r < buf.len() {
            buf[w] = 0;
            w += 1;
        }
    }
    Ok(w)
}

/// Reassembles messages from a byte stream.
pub struct SerialDecoder {
    buf: [u8; MAX_ENCODED],
    len: usize,
    overflow: bool,
}

impl Default for SerialDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SerialDecoder {
    /// An empty decoder.
    pub const fn new() -> Self {
        SerialDecoder {
            buf: [0; MAX_ENCODED],
            len: 0,
            overflow: false,
        }
    }

    /// Feeds one byte. At a delimiter returns the decoded message (or why it was
    /// bad); the message borrows the decoder until the next call.
    pub fn push(&mut self, byte: u8) -> Option<Result<SerialRepr<'_>, Malformed>> {
        if byte != 0 {
            if self.len < self.buf.len() {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow = true;
            }
            return None;
        }
        let (len, overflow) = (self.len, self.overflow);
        self.len = 0;
        self.overflow = false;
        if len == 0 {
            return None;
        }
        if overflow {
            return Some(Err(Malformed::TooLong));
        }
        Some(
            cobs_decode_in_place(&mut self.buf[..len])
                .and_then(|n| SerialRepr::parse(&self.buf[..n])),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn encoded_message_decodes_byte_by_byte_after_garbage() {
        let data = [0u8, 1, 0, 0, 255, 7];
        let m = SerialRepr {
            kind: SerialKind::AirRx,
            mac: [1, 0, 3, 4, 5, 0],
            rssi: -60,
            data: &data,
        };
        let mut out = [0u8; MAX_ENCODED];
        let n = m.emit(&mut out).unwrap();
        assert!(!out[..n - 1].contains(&0));
        let mut d = SerialDecoder::new();
        for &b in &[9u8, 9, 0] {
            // Garbage before a delimiter is reported as malformed, then skipped.
            let _ = d.push(b);
        }
        let mut got = None;
        for &b in &out[..n] {
            if let Some(r) = d.push(b) {
                got = Some(r.map(|r| (r.kind, r.mac, r.rssi, r.data.to_vec_fixed())));
            }
        }
        assert_eq!(
            got,
            Some(Ok((
                SerialKind::AirRx,
                [1, 0, 3, 4, 5, 0],
                -60,
                data.to_vec_fixed()
            )))
        );
    }

    #[test]
    fn long_runs_without_zero_round_trip() {
        let data = [0xabu8; 250];
        let m = SerialRepr {
            kind: SerialKind::AirTx,
            mac: [0xff; 6],
            rssi: 0,
            data: &data,
        };
        let mut out = [0u8; MAX_ENCODED];
        let n = m.emit(&mut out).unwrap();
        let mut d = SerialDecoder::new();
        let mut ok = false;
        for &b in &out[..n] {
            if let Some(r) = d.push(b) {
                ok = r.map(|r| r.data == &data[..]).unwrap_or(false);
            }
        }
        assert!(ok);
    }

    #[test]
    fn a_flipped_byte_fails_the_crc() {
        let m = SerialRepr {
            kind: SerialKind::Hello,
            mac: [1; 6],
            rssi: 0,
            data: b"gridpow bridge",
        };
        let mut out = [0u8; MAX_ENCODED];
        let n = m.emit(&mut out).unwrap();
        out[5] ^= 0x40;
        let mut d = SerialDecoder::new();
        let mut res = None;
        for &b in &out[..n] {
            if let Some(r) = d.push(b) {
                res = Some(r.map(|_| ()));
            }
        }
        assert!(matches!(res, Some(Err(_))));
    }

    trait ToVecFixed {
        fn to_vec_fixed(&self) -> ([u8; 16], usize);
    }
    impl ToVecFixed for [u8] {
        fn to_vec_fixed(&self) -> ([u8; 16], usize) {
            let mut a = [0u8; 16];
            a[..self.len()].copy_from_slice(self);
            (a, self.len())
        }
    }
}
