//! The uplink frame (meter → relay), protocol version 2: a 20-byte clear,
//! authenticated header, the readings sealed with the meter's **end-to-end key**
//! (only the grid server can open them), and a **hop tag** over everything
//! before it under the meter's hop key (the relay checks it).
//!
//! ```text
//!  0       1      2      3      4          8            12         16          20
//! +-------+------+------+------+----------+------------+----------+-----------+------------+---------+---------+
//! |version| type |key id|flags | meter id | boot epoch | counter  | first seq | ciphertext | e2e tag | hop tag |
//! |  =2   | 0x01 |      | =0   |  u32 LE  |   u32 LE   |  u32 LE  |  u32 LE   |   32·n     |   16    |   16    |
//! +-------+------+------+------+----------+------------+----------+-----------+------------+---------+---------+
//! ciphertext = AES-128-CCM(e2e key, nonce = 0x01 ‖ bytes 4..16, aad = bytes 0..20) of n readings, 1 ≤ n ≤ 6
//! hop tag    = HMAC-SHA256(hop frame key, bytes 0..20+32·n+16)[..16]
//! ```

use super::{check_version_type, get_u32, Field, Reading, TYPE_UPLINK};
use crate::crypto::{ct_eq, CryptoProvider, HopKeys, MeterKeys, HOP_TAG_LEN, NONCE_LEN, TAG_LEN};
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
    pub const FIRST_SEQ: Field = 16..20;
    /// The nonce takes these header bytes after its type byte.
    pub const NONCE_SOURCE: Field = 4..16;
    pub const HEADER: Field = 0..20;
    pub const CIPHERTEXT: usize = 20;
}

/// Length of the clear header (also the end-to-end AEAD's associated data).
pub const HEADER_LEN: usize = 20;
/// Maximum readings in one frame (keeps the frame within 250 bytes).
pub const MAX_READINGS: usize = 6;
/// Bytes a frame adds around its readings: header, end-to-end tag, hop tag.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN + HOP_TAG_LEN;
/// Smallest valid frame (one reading).
pub const MIN_LEN: usize = OVERHEAD + Reading::LEN;
/// Largest valid frame (six readings).
pub const MAX_LEN: usize = OVERHEAD + MAX_READINGS * Reading::LEN;
/// Largest plaintext (the readings of a full frame).
pub const MAX_BODY_LEN: usize = MAX_READINGS * Reading::LEN;

// Six readings is the most that fits one ESP-NOW payload.
const _: () = assert!(
    MAX_LEN <= super::ESPNOW_MAX_PAYLOAD && frame_len(MAX_READINGS + 1) > super::ESPNOW_MAX_PAYLOAD
);

/// Length of a frame carrying `n` readings.
pub const fn frame_len(n: usize) -> usize {
    OVERHEAD + n * Reading::LEN
}

/// The identity fields of an uplink frame's clear header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UplinkHeader {
    /// Which site key the meter's keys derive from.
    pub key_id: u8,
    /// The meter's id.
    pub meter_id: u32,
    /// Incremented (and persisted) by the meter at every boot.
    pub boot_epoch: u32,
    /// Frame counter within the boot epoch; never repeats.
    pub counter: u32,
}

impl UplinkHeader {
    /// Writes the 20 header bytes of a frame whose first reading is `first_seq`.
    pub fn emit(&self, first_seq: u32, out: &mut [u8; HEADER_LEN]) {
        out[field::VERSION] = crate::PROTOCOL_VERSION;
        out[field::TYPE] = TYPE_UPLINK;
        out[field::KEY_ID] = self.key_id;
        out[field::FLAGS] = 0;
        out[field::METER_ID].copy_from_slice(&self.meter_id.to_le_bytes());
        out[field::BOOT_EPOCH].copy_from_slice(&self.boot_epoch.to_le_bytes());
        out[field::COUNTER].copy_from_slice(&self.counter.to_le_bytes());
        out[field::FIRST_SEQ].copy_from_slice(&first_seq.to_le_bytes());
    }

    /// The AES-CCM nonce of this frame: `0x01 ‖ header bytes 4..16`.
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut h = [0u8; HEADER_LEN];
        self.emit(0, &mut h);
        nonce_from_header(&h)
    }
}

fn nonce_from_header(header: &[u8]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[0] = TYPE_UPLINK;
    n[1..].copy_from_slice(&header[field::NONCE_SOURCE]);
    n
}

fn hop_tag<C: CryptoProvider>(provider: &C, key: &[u8; 16], covered: &[u8]) -> [u8; HOP_TAG_LEN] {
    let mac = provider.hmac_sha256(key, &[covered]);
    let mut t = [0u8; HOP_TAG_LEN];
    t.copy_from_slice(&mac[..HOP_TAG_LEN]);
    t
}

/// A checked view over an uplink frame. After [`UplinkPacket::new_checked`]
/// succeeds no accessor can panic.
#[derive(Clone, Copy, Debug)]
pub struct UplinkPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UplinkPacket<T> {
    /// Checks lengths, version, type, reserved bits and that the sequence
    /// numbers do not run past 2^32−1.
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
        let count = ((b.len() - OVERHEAD) / Reading::LEN) as u32;
        if get_u32(b, field::FIRST_SEQ)
            .checked_add(count - 1)
            .is_none()
        {
            return Err(Malformed::SeqOverflow);
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
    /// Sequence number of the first reading (clear, authenticated by both tags).
    pub fn first_seq(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::FIRST_SEQ)
    }
    /// Number of readings in the sealed body.
    pub fn reading_count(&self) -> usize {
        (self.buffer.as_ref().len() - OVERHEAD) / Reading::LEN
    }
    /// The identity fields of the clear header.
    pub fn header(&self) -> UplinkHeader {
        UplinkHeader {
            key_id: self.key_id(),
            meter_id: self.meter_id(),
            boot_epoch: self.boot_epoch(),
            counter: self.counter(),
        }
    }
    /// The header bytes (the end-to-end AEAD's associated data).
    pub fn header_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[field::HEADER]
    }
    fn hop_tag_at(&self) -> usize {
        self.buffer.as_ref().len() - HOP_TAG_LEN
    }
    fn e2e_tag_at(&self) -> usize {
        self.hop_tag_at() - TAG_LEN
    }
    /// The sealed readings (ciphertext without tags).
    pub fn ciphertext(&self) -> &[u8] {
        &self.buffer.as_ref()[field::CIPHERTEXT..self.e2e_tag_at()]
    }
    /// The end-to-end authentication tag.
    pub fn e2e_tag(&self) -> [u8; TAG_LEN] {
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(&self.buffer.as_ref()[self.e2e_tag_at()..self.hop_tag_at()]);
        t
    }
    /// The hop tag.
    pub fn hop_tag(&self) -> [u8; HOP_TAG_LEN] {
        let mut t = [0u8; HOP_TAG_LEN];
        t.copy_from_slice(&self.buffer.as_ref()[self.hop_tag_at()..]);
        t
    }

    /// Checks the key id and the hop tag: all a relay can check.
    pub fn verify_hop<C: CryptoProvider>(
        &self,
        provider: &C,
        keys: &HopKeys,
    ) -> Result<(), Rejected> {
        if keys.key_id != self.key_id() {
            return Err(Rejected::UnknownKeyId);
        }
        let expected = hop_tag(
            provider,
            &keys.frame,
            &self.buffer.as_ref()[..self.hop_tag_at()],
        );
        if !ct_eq(&expected, &self.hop_tag()) {
            return Err(Rejected::BadTag);
        }
        Ok(())
    }

    /// Checks the hop tag, then the end-to-end tag, and decrypts the readings
    /// into `scratch`: what the grid server does.
    pub fn open<'s, C: CryptoProvider>(
        &self,
        provider: &C,
        keys: &MeterKeys<C>,
        scratch: &'s mut [u8; MAX_BODY_LEN],
    ) -> Result<OpenedBody<'s>, Rejected> {
        self.verify_hop(provider, &keys.hop)?;
        self.open_e2e(provider, &keys.e2e, scratch)
    }

    /// Checks the end-to-end tag only and decrypts the readings into
    /// `scratch`: what a holder of the meter's end-to-end key alone (a
    /// customer checking a proof file) can do; the hop tag is the relay's
    /// business and its key is not theirs.
    pub fn open_e2e<'s, C: CryptoProvider>(
        &self,
        provider: &C,
        e2e: &C::AeadKey,
        scratch: &'s mut [u8; MAX_BODY_LEN],
    ) -> Result<OpenedBody<'s>, Rejected> {
        let ct = self.ciphertext();
        let body = &mut scratch[..ct.len()];
        body.copy_from_slice(ct);
        let nonce = nonce_from_header(self.header_bytes());
        if !provider.aead_open(e2e, &nonce, self.header_bytes(), body, &self.e2e_tag()) {
            return Err(Rejected::BadEndToEndTag);
        }
        Ok(OpenedBody {
            first_seq: self.first_seq(),
            body,
        })
    }
}

/// The decrypted readings of an uplink frame.
#[derive(Clone, Copy, Debug)]
pub struct OpenedBody<'a> {
    first_seq: u32,
    body: &'a [u8],
}

impl<'a> OpenedBody<'a> {
    /// Sequence number of the first reading; the others follow consecutively.
    pub fn first_seq(&self) -> u32 {
        self.first_seq
    }
    /// Number of readings.
    pub fn len(&self) -> usize {
        self.body.len() / Reading::LEN
    }
    /// Whether there are no readings (never true for a checked frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th reading, if any.
    pub fn reading(&self, i: usize) -> Option<Reading> {
        let start = i.checked_mul(Reading::LEN)?;
        Reading::parse(self.body.get(start..start + Reading::LEN)?)
    }
    /// `(seq, reading)` pairs in order.
    pub fn readings(&self) -> impl Iterator<Item = (u32, Reading)> + 'a {
        let first = self.first_seq;
        self.body
            .chunks_exact(Reading::LEN)
            .enumerate()
            .filter_map(move |(i, c)| Some((first.wrapping_add(i as u32), Reading::parse(c)?)))
    }
}

/// Seals `readings` (1 to 6, consecutive from `first_seq`) into `out` with the
/// meter's end-to-end key, adds the hop tag, and returns the frame length.
pub fn seal<C: CryptoProvider>(
    provider: &C,
    keys: &MeterKeys<C>,
    header: &UplinkHeader,
    first_seq: u32,
    readings: &[Reading],
    out: &mut [u8],
) -> Result<usize, Error> {
    if readings.is_empty() || readings.len() > MAX_READINGS || header.key_id != keys.key_id() {
        return Err(Misuse::InvalidArgument.into());
    }
    if first_seq.checked_add(readings.len() as u32 - 1).is_none() {
        return Err(Misuse::SeqExhausted.into());
    }
    let len = frame_len(readings.len());
    let out = out.get_mut(..len).ok_or(Misuse::BufferTooSmall)?;
    let mut h = [0u8; HEADER_LEN];
    header.emit(first_seq, &mut h);
    out[field::HEADER].copy_from_slice(&h);
    let e2e_tag_at = len - HOP_TAG_LEN - TAG_LEN;
    for (chunk, r) in out[field::CIPHERTEXT..e2e_tag_at]
        .chunks_exact_mut(Reading::LEN)
        .zip(readings)
    {
        let mut rb = [0u8; Reading::LEN];
        r.emit(&mut rb);
        chunk.copy_from_slice(&rb);
    }
    let (head, rest) = out.split_at_mut(field::CIPHERTEXT);
    let (body, tags) = rest.split_at_mut(e2e_tag_at - field::CIPHERTEXT);
    let tag = provider.aead_seal(&keys.e2e, &nonce_from_header(head), head, body);
    tags[..TAG_LEN].copy_from_slice(&tag);
    write_hop_tag(provider, &keys.hop, out)?;
    Ok(len)
}

/// Writes the hop tag of `frame` (its last 16 bytes) over everything before it.
/// The meter does this when sealing; anyone holding the hop keys — a relay —
/// can do it too, which is why the grid server also checks the end-to-end tag.
pub fn write_hop_tag<C: CryptoProvider>(
    provider: &C,
    keys: &HopKeys,
    frame: &mut [u8],
) -> Result<(), Error> {
    let covered = frame
        .len()
        .checked_sub(HOP_TAG_LEN)
        .ok_or(Misuse::BufferTooSmall)?;
    let tag = hop_tag(provider, &keys.frame, &frame[..covered]);
    frame[covered..].copy_from_slice(&tag);
    Ok(())
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::{MeterSecret, RustCrypto};

    fn keys() -> MeterKeys<RustCrypto> {
        MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&[0x42; 48]))
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
        v[0] = 1;
        assert_eq!(
            UplinkPacket::new_checked(&v[..n]).unwrap_err(),
            Malformed::UnsupportedVersion(1)
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
    fn sequence_numbers_never_wrap() {
        let h = UplinkHeader {
            key_id: 1,
            meter_id: 7,
            boot_epoch: 3,
            counter: 9,
        };
        let mut buf = [0u8; 250];
        let two = [reading(0), reading(1)];
        assert_eq!(
            seal(&RustCrypto, &keys(), &h, u32::MAX, &two, &mut buf).unwrap_err(),
            Error::Misuse(Misuse::SeqExhausted)
        );
        // The last number may be used; one past it may not.
        let n = seal(&RustCrypto, &keys(), &h, u32::MAX - 1, &two, &mut buf).unwrap();
        assert!(UplinkPacket::new_checked(&buf[..n]).is_ok());
        buf[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            UplinkPacket::new_checked(&buf[..n]).unwrap_err(),
            Malformed::SeqOverflow
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
        let mut small = [0u8; 80];
        assert_eq!(
            seal(&RustCrypto, &keys(), &h, 0, &[reading(0)], &mut small),
            Err(Error::Misuse(Misuse::BufferTooSmall))
        );
    }

    #[test]
    fn a_hop_key_holder_can_check_but_not_forge_or_read_a_frame() {
        let h = UplinkHeader {
            key_id: 1,
            meter_id: 7,
            boot_epoch: 3,
            counter: 9,
        };
        let mut buf = [0u8; 250];
        let n = seal(&RustCrypto, &keys(), &h, 40, &[reading(5)], &mut buf).unwrap();
        let hop = keys().hop;
        let p = UplinkPacket::new_checked(&buf[..n]).unwrap();
        assert_eq!(p.verify_hop(&RustCrypto, &hop), Ok(()));
        assert_eq!(p.first_seq(), 40);
        // The reading is not in the clear.
        let plain = reading(5).to_bytes();
        assert!(!buf[..n].windows(plain.len()).any(|w| w == plain));
        // A relay alters the ciphertext (or the first seq) and re-tags the hop: the
        // server's end-to-end check refuses it.
        for at in [16, 20, n - 40] {
            let mut forged = buf;
            forged[at] ^= 1;
            write_hop_tag(&RustCrypto, &hop, &mut forged[..n]).unwrap();
            let f = UplinkPacket::new_checked(&forged[..n]).unwrap();
            assert_eq!(f.verify_hop(&RustCrypto, &hop), Ok(()));
            let mut scratch = [0u8; MAX_BODY_LEN];
            assert_eq!(
                f.open(&RustCrypto, &keys(), &mut scratch).unwrap_err(),
                Rejected::BadEndToEndTag
            );
        }
        // Any flipped byte without a new hop tag fails the hop check.
        for at in 0..n {
            let mut bad = buf;
            bad[at] ^= 0x80;
            if let Ok(f) = UplinkPacket::new_checked(&bad[..n]) {
                assert!(f.verify_hop(&RustCrypto, &hop).is_err(), "byte {at}");
            }
        }
    }
}
