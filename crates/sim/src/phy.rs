//! Airtime on ESP-NOW's default PHY: 802.11b DSSS at 1 Mbit/s with the long
//! preamble, and the 802.11 DCF timing constants of that PHY.
//!
//! An ESP-NOW frame is a vendor-specific action frame:
//!
//! ```text
//! airtime = 192 µs PLCP preamble and header
//!         + (24 MAC header + 15 vendor fields + payload + 4 FCS) bytes × 8 µs
//! vendor fields = category 1 + OUI 3 + random 4 + element id 1 + length 1 + OUI 3 + type 1 + version 1
//! ```

/// PLCP preamble (144 µs) and header (48 µs) with the long preamble, both at 1 Mbit/s.
pub const PLCP_US: u64 = 192;
/// One byte at 1 Mbit/s.
pub const US_PER_BYTE: u64 = 8;
/// 802.11 management frame header.
pub const MAC_HEADER_LEN: usize = 24;
/// Action frame and vendor element fields ESP-NOW puts before its payload.
pub const VENDOR_FIELDS_LEN: usize = 15;
/// Frame check sequence.
pub const FCS_LEN: usize = 4;
/// 802.11 ACK control frame (frame control, duration, receiver address, FCS).
pub const MAC_ACK_LEN: usize = 14;
/// Short interframe space of the DSSS PHY.
pub const SIFS_US: u64 = 10;
/// Slot time of the DSSS PHY.
pub const SLOT_US: u64 = 20;
/// DCF interframe space: SIFS plus two slots.
pub const DIFS_US: u64 = SIFS_US + 2 * SLOT_US;
/// Smallest contention window (backoff drawn from 0..=CW).
pub const CW_MIN: u16 = 31;
/// Largest contention window.
pub const CW_MAX: u16 = 1023;

/// Airtime of an ESP-NOW frame carrying `payload_len` bytes.
pub const fn espnow_airtime_us(payload_len: usize) -> u64 {
    PLCP_US + ((MAC_HEADER_LEN + VENDOR_FIELDS_LEN + payload_len + FCS_LEN) as u64) * US_PER_BYTE
}

/// Airtime of the 802.11 ACK a receiver sends SIFS after a unicast frame.
pub const MAC_ACK_AIRTIME_US: u64 = PLCP_US + (MAC_ACK_LEN as u64) * US_PER_BYTE;

/// How long a sender waits for the MAC ACK after the end of its frame.
pub const MAC_ACK_TIMEOUT_US: u64 = SIFS_US + MAC_ACK_AIRTIME_US;

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_proto::wire::{ack::ACK_LEN, uplink::frame_len};

    #[test]
    fn airtime_matches_the_documented_formula() {
        // One reading: 84-byte payload, 127-byte MPDU.
        assert_eq!(frame_len(1), 84);
        assert_eq!(espnow_airtime_us(frame_len(1)), 192 + 127 * 8);
        assert_eq!(espnow_airtime_us(frame_len(6)), 192 + 287 * 8);
        assert_eq!(espnow_airtime_us(ACK_LEN), 192 + 91 * 8);
        assert_eq!(MAC_ACK_AIRTIME_US, 304);
        assert_eq!(DIFS_US, 50);
    }
}
