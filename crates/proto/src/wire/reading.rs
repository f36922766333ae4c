//! One metering reading: 32 bytes of fixed-point integers, no floats on the wire.

use super::{get_u16, get_u32, get_u64, Field};

mod field {
    use super::Field;
    pub const TIMESTAMP_MS: Field = 0..8;
    pub const VOLTAGE_CV: Field = 8..10;
    pub const CURRENT_MA: Field = 10..14;
    pub const ACTIVE_POWER_DW: Field = 14..18;
    pub const POWER_FACTOR_E4: Field = 18..20;
    pub const FREQUENCY_MHZ: Field = 20..22;
    pub const ENERGY_MWH: Field = 22..30;
    pub const FLAGS: Field = 30..32;
}

/// A reading as it travels inside a sealed uplink body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Reading {
    /// When the measurement interval ended: Unix time in milliseconds (meter clock,
    /// synchronised from ACKs; see [`Reading::FLAG_CLOCK_UNSYNCED`]).
    pub timestamp_ms: u64,
    /// RMS voltage in units of 0.01 V (23000 = 230.00 V).
    pub voltage_cv: u16,
    /// RMS current in mA.
    pub current_ma: u32,
    /// Active power in units of 0.1 W; negative when exporting.
    pub active_power_dw: i32,
    /// Power factor P/S in units of 1/10000, −10000..=10000.
    pub power_factor_e4: i16,
    /// Line frequency in mHz (50000 = 50.000 Hz).
    pub frequency_mhz: u16,
    /// Monotonic imported-energy register in mWh.
    pub energy_mwh: u64,
    /// Status bits (`FLAG_*`); unknown bits are carried, not interpreted.
    pub flags: u16,
}

impl Reading {
    /// Encoded size in bytes.
    pub const LEN: usize = 32;
    /// The meter's clock had not been synchronised by an ACK yet.
    pub const FLAG_CLOCK_UNSYNCED: u16 = 1 << 0;
    /// A sensor reported a fault or saturated during the interval.
    pub const FLAG_SENSOR_FAULT: u16 = 1 << 1;
    /// The meter restarted during or just before this interval.
    pub const FLAG_RESTARTED: u16 = 1 << 2;

    /// Parses a reading from exactly [`Reading::LEN`] bytes (`None` otherwise).
    pub fn parse(b: &[u8]) -> Option<Reading> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(Reading {
            timestamp_ms: get_u64(b, field::TIMESTAMP_MS),
            voltage_cv: get_u16(b, field::VOLTAGE_CV),
            current_ma: get_u32(b, field::CURRENT_MA),
            active_power_dw: get_u32(b, field::ACTIVE_POWER_DW) as i32,
            power_factor_e4: get_u16(b, field::POWER_FACTOR_E4) as i16,
            frequency_mhz: get_u16(b, field::FREQUENCY_MHZ),
            energy_mwh: get_u64(b, field::ENERGY_MWH),
            flags: get_u16(b, field::FLAGS),
        })
    }

    /// Writes the reading into `out`, which must be exactly [`Reading::LEN`] bytes.
    pub fn emit(&self, out: &mut [u8; Self::LEN]) {
        out[field::TIMESTAMP_MS].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        out[field::VOLTAGE_CV].copy_from_slice(&self.voltage_cv.to_le_bytes());
        out[field::CURRENT_MA].copy_from_slice(&self.current_ma.to_le_bytes());
        out[field::ACTIVE_POWER_DW].copy_from_slice(&self.active_power_dw.to_le_bytes());
        out[field::POWER_FACTOR_E4].copy_from_slice(&self.power_factor_e4.to_le_bytes());
        out[field::FREQUENCY_MHZ].copy_from_slice(&self.frequency_mhz.to_le_bytes());
        out[field::ENERGY_MWH].copy_from_slice(&self.energy_mwh.to_le_bytes());
        out[field::FLAGS].copy_from_slice(&self.flags.to_le_bytes());
    }

    /// The encoded bytes.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        self.emit(&mut b);
        b
    }

    /// RMS voltage in volts (for display; the wire value is exact).
    pub fn voltage_v(&self) -> f64 {
        f64::from(self.voltage_cv) / 100.0
    }
    /// RMS current in amperes.
    pub fn current_a(&self) -> f64 {
        f64::from(self.current_ma) / 1000.0
    }
    /// Active power in watts.
    pub fn active_power_w(&self) -> f64 {
        f64::from(self.active_power_dw) / 10.0
    }
    /// Power factor as a ratio.
    pub fn power_factor(&self) -> f64 {
        f64::from(self.power_factor_e4) / 10000.0
    }
    /// Frequency in hertz.
    pub fn frequency_hz(&self) -> f64 {
        f64::from(self.frequency_mhz) / 1000.0
    }
    /// Energy register in kilowatt-hours.
    pub fn energy_kwh(&self) -> f64 {
        self.energy_mwh as f64 / 1_000_000.0
    }
    /// Apparent power in volt-amperes, derived as V·I (its definition).
    pub fn apparent_power_va(&self) -> f64 {
        self.voltage_v() * self.current_a()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_reading_round_trips() {
        let r = Reading {
            timestamp_ms: 0x0102_0304_0506_0708,
            voltage_cv: 23012,
            current_ma: 4321,
            active_power_dw: -9876,
            power_factor_e4: -9500,
            frequency_mhz: 49_987,
            energy_mwh: 123_456_789,
            flags: Reading::FLAG_CLOCK_UNSYNCED,
        };
        let golden: [u8; 32] = [
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // timestamp
            0xe4, 0x59, // 23012
            0xe1, 0x10, 0x00, 0x00, // 4321
            0x6c, 0xd9, 0xff, 0xff, // -9876
            0xe4, 0xda, // -9500
            0x43, 0xc3, // 49987
            0x15, 0xcd, 0x5b, 0x07, 0x00, 0x00, 0x00, 0x00, // 123456789
            0x01, 0x00,
        ];
        assert_eq!(r.to_bytes(), golden);
        assert_eq!(Reading::parse(&golden), Some(r));
        assert_eq!(Reading::parse(&golden[..31]), None);
    }
}
