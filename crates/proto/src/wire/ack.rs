//! The authenticated ACK (relay → meter), 48 bytes.
//!
//! ```text
//!  0       1      2       3      4          8            12         16              24         28      29        32          48
//! +-------+------+-------+------+----------+------------+----------+---------------+----------+-------+---------+-----------+
//! |version| type |key id |flags | meter id | boot epoch | counter  | relay time ms | relay id |channel|reserved | tag       |
//! |  =1   | 0x02 |       |      |  u32 LE  |   u32 LE   |  u32 LE  |    u64 LE     |  u32 LE  |  u8   | 3 × 0   | 16 bytes  |
//! +-------+------+-------+------+----------+------------+----------+---------------+----------+-------+---------+-----------+
//! tag = first 16 bytes of HMAC-SHA256(meter ACK key, bytes 0..32)
//! ```
//!
//! An ACK confirms exactly one frame, named by (meter id, boot epoch, counter).
//! Counters never repeat, so an old ACK can never confirm a new frame.

use super::{check_version_type, get_u32, get_u64, Field, TYPE_ACK};
use crate::crypto::{ct_eq, CryptoProvider, ACK_TAG_LEN};
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
    pub const RELAY_TIME_MS: Field = 16..24;
    pub const RELAY_ID: Field = 24..28;
    pub const CHANNEL: usize = 28;
    pub const RESERVED: Field = 29..32;
    pub const AUTHENTICATED: Field = 0..32;
    pub const TAG: Field = 32..48;
}

/// Length of an ACK.
pub const ACK_LEN: usize = 48;

/// The frame was accepted before: this ACK repeats an earlier one (its first ACK was lost).
pub const FLAG_DUPLICATE: u8 = 1 << 0;
const KNOWN_FLAGS: u8 = FLAG_DUPLICATE;

/// An ACK's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AckRepr {
    /// Key id of the meter key that authenticates this ACK.
    pub key_id: u8,
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// The meter whose frame is confirmed.
    pub meter_id: u32,
    /// Boot epoch of the confirmed frame.
    pub boot_epoch: u32,
    /// Counter of the confirmed frame.
    pub counter: u32,
    /// The relay's wall clock when it sent the ACK, Unix milliseconds.
    pub relay_time_ms: u64,
    /// Which relay confirms.
    pub relay_id: u32,
    /// The relay's radio channel (1–14), or 0 when not stated.
    pub channel: u8,
}

/// A checked view over ACK bytes.
#[derive(Clone, Copy, Debug)]
pub struct AckPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AckPacket<T> {
    /// Checks length, version, type and reserved fields.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let b = buffer.as_ref();
        check_version_type(b, TYPE_ACK)?;
        if b.len() < ACK_LEN {
            return Err(Malformed::TooShort);
        }
        if b.len() > ACK_LEN {
            return Err(Malformed::TooLong);
        }
        if b[field::FLAGS] & !KNOWN_FLAGS != 0 || b[field::RESERVED].iter().any(|&x| x != 0) {
            return Err(Malformed::NonZeroReserved);
        }
        Ok(AckPacket { buffer })
    }

    /// The meter id, readable before authentication to find the key.
    pub fn meter_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::METER_ID)
    }

    /// Verifies the tag with the meter's ACK key and returns the contents.
    pub fn verify<C: CryptoProvider>(
        &self,
        provider: &C,
        ack_key: &[u8; 16],
    ) -> Result<AckRepr, Rejected> {
        let b = self.buffer.as_ref();
        let mac = provider.hmac_sha256(ack_key, &[&b[field::AUTHENTICATED]]);
        if !ct_eq(&mac[..ACK_TAG_LEN], &b[field::TAG]) {
            return Err(Rejected::BadTag);
        }
        Ok(self.repr_unverified())
    }

    /// The contents without checking the tag (for logging and tests only).
    pub fn repr_unverified(&self) -> AckRepr {
        let b = self.buffer.as_ref();
        AckRepr {
            key_id: b[field::KEY_ID],
            flags: b[field::FLAGS],
            meter_id: get_u32(b, field::METER_ID),
            boot_epoch: get_u32(b, field::BOOT_EPOCH),
            counter: get_u32(b, field::COUNTER),
            relay_time_ms: get_u64(b, field::RELAY_TIME_MS),
            relay_id: get_u32(b, field::RELAY_ID),
            channel: b[field::CHANNEL],
        }
    }
}

impl AckRepr {
    /// Encoded length.
    pub const fn buffer_len(&self) -> usize {
        ACK_LEN
    }

    /// Writes the ACK, tagged with `ack_key`, and returns its length.
    pub fn emit<C: CryptoProvider>(
        &self,
        provider: &C,
        ack_key: &[u8; 16],
        out: &mut [u8],
    ) -> Result<usize, Error> {
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(Misuse::InvalidArgument.into());
        }
        let out = out.get_mut(..ACK_LEN).ok_or(Misuse::BufferTooSmall)?;
        out[field::VERSION] = crate::PROTOCOL_VERSION;
        out[field::TYPE] = TYPE_ACK;
        out[field::KEY_ID] = self.key_id;
        out[field::FLAGS] = self.flags;
        out[field::METER_ID].copy_from_slice(&self.meter_id.to_le_bytes());
        out[field::BOOT_EPOCH].copy_from_slice(&self.boot_epoch.to_le_bytes());
        out[field::COUNTER].copy_from_slice(&self.counter.to_le_bytes());
        out[field::RELAY_TIME_MS].copy_from_slice(&self.relay_time_ms.to_le_bytes());
        out[field::RELAY_ID].copy_from_slice(&self.relay_id.to_le_bytes());
        out[field::CHANNEL] = self.channel;
        out[field::RESERVED].fill(0);
        let mac = provider.hmac_sha256(ack_key, &[&out[field::AUTHENTICATED]]);
        out[field::TAG].copy_from_slice(&mac[..ACK_TAG_LEN]);
        Ok(ACK_LEN)
    }
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::RustCrypto;

    fn repr() -> AckRepr {
        AckRepr {
            key_id: 1,
            flags: FLAG_DUPLICATE,
            meter_id: 7,
            boot_epoch: 2,
            counter: 99,
            relay_time_ms: 1_700_000_000_123,
            relay_id: 5,
            channel: 6,
        }
    }

    #[test]
    fn ack_round_trips_and_verifies_only_under_its_key() {
        let mut buf = [0u8; 64];
        let n = repr().emit(&RustCrypto, &[3; 16], &mut buf).unwrap();
        assert_eq!(n, ACK_LEN);
        let p = AckPacket::new_checked(&buf[..n]).unwrap();
        assert_eq!(p.verify(&RustCrypto, &[3; 16]), Ok(repr()));
        assert_eq!(p.verify(&RustCrypto, &[4; 16]), Err(Rejected::BadTag));
    }

    #[test]
    fn every_flipped_byte_of_an_ack_is_refused() {
        let mut buf = [0u8; ACK_LEN];
        repr().emit(&RustCrypto, &[3; 16], &mut buf).unwrap();
        for i in 0..ACK_LEN {
            for bit in 0..8 {
                let mut b = buf;
                b[i] ^= 1 << bit;
                let res = AckPacket::new_checked(&b[..])
                    .map_err(Error::from)
                    .and_then(|p| p.verify(&RustCrypto, &[3; 16]).map_err(Error::from));
                assert!(res.is_err(), "byte {i} bit {bit} accepted");
            }
        }
    }
}
