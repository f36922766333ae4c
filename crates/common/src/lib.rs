//! Shared plumbing of the gridpow services: configuration loading with
//! environment overrides, data-directory locks, durable file writes, listen
//! addresses, MQTT topic names, TLS client settings, rate-limited logging,
//! clocks and MAC addresses. The key directory and registries are in
//! `gridpow-keys`, the radio adapters in `gridpow-radio`.
#![forbid(unsafe_code)]

pub mod config;
pub mod datadir;
pub mod durable;
pub mod mqtt;
pub mod net;
pub mod throttle;
pub mod tls;
pub mod tls_reload;
pub mod topics;

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock, Unix milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic clock for the sans-IO core: `gridpow_proto::Instant` counted from
/// the moment the clock was made.
#[derive(Clone, Copy, Debug)]
pub struct MonoClock {
    origin: std::time::Instant,
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonoClock {
    /// A clock starting now.
    pub fn new() -> Self {
        MonoClock {
            origin: std::time::Instant::now(),
        }
    }

    /// Now, on this clock.
    pub fn now(&self) -> gridpow_proto::Instant {
        gridpow_proto::Instant::from_micros(self.origin.elapsed().as_micros() as u64)
    }

    /// The `std` instant matching a core instant (for sleeping until it).
    pub fn to_std(&self, t: gridpow_proto::Instant) -> std::time::Instant {
        self.origin + std::time::Duration::from_micros(t.as_micros())
    }
}

/// Formats a MAC address as `AA:BB:CC:DD:EE:FF`.
pub fn format_mac(mac: &gridpow_proto::MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `AA:BB:CC:DD:EE:FF` (or with `-`).
pub fn parse_mac(s: &str) -> Option<gridpow_proto::MacAddr> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// The MAC a virtual meter uses when none is registered: a locally
/// administered unicast address `02:67:70:` followed by the low 24 bits of the id.
pub fn virtual_meter_mac(meter_id: u32) -> gridpow_proto::MacAddr {
    let b = meter_id.to_be_bytes();
    [0x02, 0x67, 0x70, b[1], b[2], b[3]]
}

/// The MAC of a (virtual) relay: `02:67:72:` followed by the low 24 bits of its id.
pub fn virtual_relay_mac(relay_id: u32) -> gridpow_proto::MacAddr {
    let b = relay_id.to_be_bytes();
    [0x02, 0x67, 0x72, b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_round_trip_through_text() {
        let mac = [0xaa, 0xbb, 0x0c, 0x01, 0x02, 0xff];
        assert_eq!(format_mac(&mac), "AA:BB:0C:01:02:FF");
        assert_eq!(parse_mac("AA:BB:0C:01:02:FF"), Some(mac));
        assert_eq!(parse_mac("aa-bb-0c-01-02-ff"), Some(mac));
        assert_eq!(parse_mac("AA:BB:0C:01:02"), None);
        assert_eq!(parse_mac("AA:BB:0C:01:02:FFF"), None);
    }
}
