//! The uplink frame (meter → relay): a 16-byte clear header that is also the
//! AEAD's associated data, a sealed body of consecutive readings, and a tag.
//!
//! ```text
//!  0       1      2       3      4          8            12         16
//! +-------+------+-------+------+----------+------------+----------+------------------+-----+
//! |version| type |key id |flags | meter id | boot epoch | counter  | sealed body      | tag |
//! |  =1   | 0x01 |       | =0   |  u32 LE  |   u32 LE   |  u32 LE  | 4 + 32·n bytes   | 16  |
//! +-------+------+-------+------+----------+------------+----------+------------------+-----+
//! body plaintext = first reading seq (u32 LE) ‖ n readings of 32 bytes, 1 ≤ n ≤ 6
//! ```

use super::{check_version_type, get_u32, Field, Reading, TYPE_UPLINK};
use crate::crypto::{CryptoProvider, MeterKeys, NONCE_LEN, TAG_LEN};
use crate::{Error, Malformed, Misuse, Rejected};

mod field {
    use super::Field;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const KEY_ID: usize = 2;
    pub const FLAGS: usize = 3;
    pub const METER_ID: Field = 4..8;
    pub const BOOT_EPOCH: Field = 8..12;
    pub const COUNTER: Field = 12..16;
    /// The nonce takes these header bytes after its type byte.
    pub const NONCE_SOURCE: Field = 4..16;
    pub const HEADER: Field = 0..16;
    pub const BODY: usize = 16;
    /// Offset of the first reading inside the body plaintext.
    pub const BODY_FIRST_SEQ: Field = 0..4;
    pub const BODY_READINGS: usize = 4;
}

/// Length of the clear header (also the associated data).
pub const HEADER_LEN: usize = 16;
/// Maximum readings in one frame (keeps the frame within 250 bytes).
pub const MAX_READINGS: usize = 6;
/// Bytes a frame adds around its readings: header, first seq, tag.
pub const OVERHEAD: usize = HEADER_LEN + 4 + TAG_LEN;
/// Smallest valid frame (one reading).
pub const MIN_LEN: usize = OVERHEAD + Reading::LEN;
/// Largest valid frame (six readings).
pub const MAX_LEN: usize = OVERHEAD + MAX_READINGS * Reading::LEN;
/// Largest body plaintext.
pub const MAX_BODY_LEN: usize = 4 + MAX_READINGS * Reading::LEN;

// Six readings is the most that fits one ESP-NOW payload.
const _: () = assert!(
    MAX_LEN <= super::ESPNOW_MAX_PAYLOAD && frame_len(MAX_READINGS + 1) > super::ESPNOW_MAX_PAYLOAD
);

/// Length of a frame carrying `n` readings.
pub const fn frame_len(n: usize) -> usize {
    OVERHEAD + n * Reading::LEN
}

/// The clear header of an uplink frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UplinkHeader {
    /// Which site key the meter key derives from.
    pub key_id: u8,
    /// The meter's id.
    pub meter_id: u32,
    /// Incremented (and persisted) by the meter at every boot.
    pub boot_epoch: u32,
    /// Frame counter within the boot epoch; never repeats.
    pub counter: u32,
}

impl UplinkHeader {
    /// Writes the 16 header bytes.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::VERSION] = crate::PROTOCOL_VERSION;
        out[field::TYPE] = TYPE_UPLINK;
        out[field::KEY_ID] = self.key_id;
        out[field::FLAGS] = 0;
        out[field::METER_ID].copy_from_slice(&self.meter_id.to_le_bytes());
        out[field::BOOT_EPOCH].copy_from_slice(&self.boot_epoch.to_le_bytes());
        out[field::COUNTER].copy_from_slice(&self.counter.to_le_bytes());
    }

    /// The AES-CCM nonce of this frame: `0x01 ‖ header bytes 4..16`.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut h = [0u8; HEADER_LEN];
        self.emit(&mut h);
        nonce_from_header(&h)
    }
}

fn nonce_from_header(header: &[u8]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[0] = TYPE_UPLINK;
    n[1..].copy_from_slice(&header[field::NONCE_SOURCE]);
    n
}

/// A checked view over an uplink frame. After [`UplinkPacket::new_checked`]
/// succeeds no accessor can panic.
#[derive(Clone, Copy, Debug)]
pub struct UplinkPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UplinkPacket<T> {
    /// Checks lengths, version, type and reserved bits.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let b = buffer.as_ref();
        check_version_type(b, TYPE_UPLINK)?;
        if b.len() < MIN_LEN {
            return Err(Malformed::TooShort);
        }
        if b.len() > MAX_LEN {
            return Err(Malformed::TooLong);
        }
        if (b.len() - OVERHEAD) % Reading::LEN != 0 {
            return Err(Malformed::BadReadingCount);
        }
        if b[field::FLAGS] != 0 {
            return Err(Malformed::NonZeroReserved);
        }
        Ok(UplinkPacket { buffer })
    }

    /// The whole frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// The key id.
    pub fn key_id(&self) -> u8 {
        self.buffer.as_ref()[field::KEY_ID]
    }
    /// The meter id.
    pub fn meter_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::METER_ID)
    }
    /// The boot epoch.
    pub fn boot_epoch(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::BOOT_EPOCH)
    }
    /// The frame counter.
    pub fn counter(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::COUNTER)
    }
    /// Number of readings in the sealed body.
    pub fn reading_count(&self) -> usize {
        (self.buffer.as_ref().len() - OVERHEAD) / Reading::LEN
    }
    /// The clear header as a struct.
    pub fn header(&self) -> UplinkHeader {
        UplinkHeader {
            key_id: self.key_id(),
            meter_id: self.meter_id(),
            boot_epoch: self.boot_epoch(),
            counter: self.counter(),
        }
    }
    /// The header bytes (the associated data).
    pub fn header_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER]
    }
    /// The sealed body (ciphertext without tag).
    pub fn ciphertext(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[field::BODY..b.len() - TAG_LEN]
    }
    /// The authentication tag.
    pub fn tag(&self) -> [u8; TAG_LEN] {
        let b = self.buffer.as_ref();
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&b[b.len() - TAG_LEN..]);
        t
    }

    /// Verifies the tag and decrypts the body into `scratch`.
    pub fn open<'s, C: CryptoProvider>(
        &self,
        provider: &C,
        keys: &MeterKeys<C>,
        scratch: &'s mut [u8; MAX_BODY_LEN],
    ) -> Result<OpenedBody<'s>, Rejected> {
        if keys.key_id != self.key_id() {
            return Err(Rejected::UnknownKeyId);
        }
        let ct = self.ciphertext();
        let body = &mut scratch[..ct.len()];
        body.copy_from_slice(ct);
        let nonce = nonce_from_header(self.header_bytes());
        if !provider.aead_open(&keys.aead, &nonce, self.header_bytes(), body, &self.tag()) {
            return Err(Rejected::BadTag);
        }
        Ok(OpenedBody { body })
    }
}

/// The decrypted body of an uplink frame.
#[derive(Clone, Copy, Debug)]
pub struct OpenedBody<'a> {
    body: &'a [u8],
}

impl<'a> OpenedBody<'a> {
    /// Views an already decrypted body (first seq ‖ readings); `None` unless it
    /// holds 1 to 6 whole readings.
    pub fn from_plaintext(body: &'a [u8]) -> Option<Self> {
        let readings = body.len().checked_sub(field::BODY_READINGS)?;
        let n = readings / Reading::LEN;
        (readings % Reading::LEN == 0 && (1..=MAX_READINGS).contains(&n))
            .then_some(OpenedBody { body })
    }

    /// Sequence number of the first reading; the others follow consecutively.
    pub fn first_seq(&self) -> u32 {
        get_u32(self.body, field::BODY_FIRST_SEQ)
    }
    /// Number of readings.
    pub fn len(&self) -> usize {
        (self.body.len() - field::BODY_READINGS) / Reading::LEN
    }
    /// Whether there are no readings (never true for a checked frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th reading, if any.
    pub fn reading(&self, i: usize) -> Option<Reading> {
        let start = field::BODY_READINGS + i.checked_mul(Reading::LEN)?;
        Reading::parse(self.body.get(start..start + Reading::LEN)?)
    }
    /// `(seq, reading)` pairs in order.
    pub fn readings(&self) -> impl Iterator<Item = (u32, Reading)> + 'a {
        let first = self.first_seq();
        self.body[field::BODY_READINGS..]
            .chunks_exact(Reading::LEN)
            .enumerate()
            .filter_map(move |(i, c)| Some((first.wrapping_add(i as u32), Reading::parse(c)?)))
    }
}

/// Seals `readings` (1 to 6, consecutive from `first_seq`) into `out` and returns
/// the frame length.
pub fn seal<C: CryptoProvider>(
    provider: &C,
    keys: &MeterKeys<C>,
    header: &UplinkHeader,
    first_seq: u32,
    readings: &[Reading],
    out: &mut [u8],
) -> Result<usize, Error> {
    if readings.is_empty() || readings.len() > MAX_READINGS || header.key_id != keys.key_id {
        return Err(Misuse::InvalidArgument.into());
    }
    let len = frame_len(readings.len());
    let out = out.get_mut(..len).ok_or(Misuse::BufferTooSmall)?;
    let mut h = [0u8; HEADER_LEN];
    header.emit(&mut h);
    out[field::HEADER].copy_from_slice(&h);
    let body_end = len - TAG_LEN;
    {
        let body = &mut out[field::BODY..body_end];
        body[field::BODY_FIRST_SEQ].copy_from_slice(&first_seq.to_le_bytes());
        for (chunk, r) in body[field::BODY_READINGS..]
            .chunks_exact_mut(Reading::LEN)
            .zip(readings)
        {
            let mut rb = [0u8; Reading::LEN];
            r.emit(&mut rb);
            chunk.copy_from_slice(&rb);
        }
    }
    let (head, rest) = out.split_at_mut(field::BODY);
    let (body, tag_out) = rest.split_at_mut(body_end - field::BODY);
    let tag = provider.aead_seal(&keys.aead, &nonce_from_header(head), head, body);
    tag_out.copy_from_slice(&tag);
    Ok(len)
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::{MeterSecret, RustCrypto};

    fn keys() -> MeterKeys<RustCrypto> {
        MeterKeys::new(&RustCrypto, 1, &MeterSecret([0x42; 32]))
    }

    fn reading(i: u64) -> Reading {
        Reading {
            timestamp_ms: 1_700_000_000_000 + i * 1000,
            voltage_cv: 23000,
            current_ma: 1000 + i as u32,
            active_power_dw: 2300,
            power_factor_e4: 10000,
            frequency_mhz: 50000,
            energy_mwh: 1000 * i,
            flags: 0,
        }
    }

    #[test]
    fn sealed_frame_opens_to_the_same_readings() {
        let h = UplinkHeader {
            key_id: 1,
            meter_id: 7,
            boot_epoch: 3,
            counter: 9,
        };
        let rs = [reading(0), reading(1), reading(2)];
        let mut buf = [0u8; 250];
        let n = seal(&RustCrypto, &keys(), &h, 100, &rs, &mut buf).unwrap();
        assert_eq!(n, frame_len(3));
        let p = UplinkPacket::new_checked(&buf[..n]).unwrap();
        assert_eq!(p.header(), h);
        assert_eq!(p.reading_count(), 3);
        let mut scratch = [0u8; MAX_BODY_LEN];
        let body = p.open(&RustCrypto, &keys(), &mut scratch).unwrap();
        assert_eq!(body.first_seq(), 100);
        let got: [(u32, Reading); 3] = {
            let mut it = body.readings();
            [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(got, [(100, rs[0]), (101, rs[1]), (102, rs[2])]);
    }

    #[test]
    fn frames_of_wrong_length_version_or_type_are_malformed() {
        let h = UplinkHeader {
            key_id: 1,
            meter_id: 7,
            boot_epoch: 3,
            counter: 9,
        };
        let mut buf = [0u8; 250];
        let n = seal(&RustCrypto, &keys(), &h, 0, &[reading(0)], &mut buf).unwrap();
        assert_eq!(
            UplinkPacket::new_checked(&buf[..n - 1]).unwrap_err(),
            Malformed::TooShort
        );
        assert_eq!(
            UplinkPacket::new_checked(&buf[..n + 1]).unwrap_err(),
            Malformed::BadReadingCount
        );
        let mut v = buf;
        v[0] = 2;
        assert_eq!(
            UplinkPacket::new_checked(&v[..n]).unwrap_err(),
            Malformed::UnsupportedVersion(2)
        );
        let mut t = buf;
        t[1] = 9;
        assert_eq!(
            UplinkPacket::new_checked(&t[..n]).unwrap_err(),
            Malformed::WrongType(9)
        );
        let mut f = buf;
        f[3] = 1;
        assert_eq!(
            UplinkPacket::new_checked(&f[..n]).unwrap_err(),
            Malformed::NonZeroReserved
        );
        assert_eq!(
            UplinkPacket::new_checked(&buf[..0]).unwrap_err(),
            Malformed::TooShort
        );
    }

    #[test]
    fn sealing_refuses_zero_or_seven_readings_and_small_buffers() {
        let h = UplinkHeader {
            key_id: 1,
            meter_id: 7,
            boot_epoch: 3,
            counter: 9,
        };
        let mut buf = [0u8; 250];
        assert!(seal(&RustCrypto, &keys(), &h, 0, &[], &mut buf).is_err());
        assert!(seal(&RustCrypto, &keys(), &h, 0, &[reading(0); 7], &mut buf).is_err());
        let mut small = [0u8; 60];
        assert_eq!(
            seal(&RustCrypto, &keys(), &h, 0, &[reading(0)], &mut small),
            Err(Error::Misuse(Misuse::BufferTooSmall))
        );
    }
}
