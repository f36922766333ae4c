//! Calibrated readings ([`Measurement`]) and their integer wire units ([`WireUnits`]).

/// The electrical readings of one block.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Measurement {
    /// RMS voltage in volts.
    pub voltage_v: f32,
    /// RMS current in amperes.
    pub current_a: f32,
    /// Active power (mean of v·i) in watts; negative when exporting.
    pub active_power_w: f32,
    /// Apparent power Vrms·Irms in volt-amperes.
    pub apparent_power_va: f32,
    /// Power factor P/S, signed like the active power, within −1..=1;
    /// 0 when there is no apparent power (no load or no voltage).
    pub power_factor: f32,
    /// Line frequency in Hz; 0 when the block held no usable zero crossings.
    pub frequency_hz: f32,
    /// A sample clipped at the ADC's lowest or highest code: the readings of
    /// this block under-read. Maps to the wire's sensor-fault flag.
    pub saturated: bool,
}

/// A [`Measurement`] in the protocol's integer units.
///
/// Mirrors the reading fields of `gridpow-proto` without depending on it, so
/// the firmware can use this crate alone. Every conversion rounds to the
/// nearest unit and saturates at the type's range (NaN becomes 0). The energy
/// field comes from [`crate::EnergyRegister::total_mwh`], already in mWh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct WireUnits {
    /// RMS voltage in 0.01 V (23000 = 230.00 V).
    pub voltage_cv: u16,
    /// RMS current in mA.
    pub current_ma: u32,
    /// Active power in 0.1 W; negative when exporting.
    pub active_power_dw: i32,
    /// Power factor in 1/10000, −10000..=10000.
    pub power_factor_e4: i16,
    /// Line frequency in mHz (50000 = 50.000 Hz).
    pub frequency_mhz: u16,
}

impl Measurement {
    /// The measurement in wire units.
    pub fn to_wire(&self) -> WireUnits {
        WireUnits::from(self)
    }
}

impl From<&Measurement> for WireUnits {
    fn from(m: &Measurement) -> WireUnits {
        // Float-to-int `as` casts saturate and map NaN to 0, so none of these
        // can wrap or panic; adding ±0.5 first makes them round to nearest.
        let pf = round(f64::from(m.power_factor) * 10_000.0).clamp(-10_000.0, 10_000.0);
        WireUnits {
            voltage_cv: round(f64::from(m.voltage_v) * 100.0) as u16,
            current_ma: round(f64::from(m.current_a) * 1000.0) as u32,
            active_power_dw: round(f64::from(m.active_power_w) * 10.0) as i32,
            power_factor_e4: pf as i16,
            frequency_mhz: round(f64::from(m.frequency_hz) * 1000.0) as u16,
        }
    }
}

impl From<Measurement> for WireUnits {
    fn from(m: Measurement) -> WireUnits {
        WireUnits::from(&m)
    }
}

/// Rounds half away from zero (core has no `f64::round` without std).
fn round(x: f64) -> f64 {
    if x >= 0.0 {
        libm::floor(x + 0.5)
    } else {
        libm::ceil(x - 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_reading_converts_to_wire_units() {
        let m = Measurement {
            voltage_v: 230.004,
            current_a: 4.3456,
            active_power_w: -998.96,
            apparent_power_va: 999.5,
            power_factor: -0.99946,
            frequency_hz: 49.9876,
            saturated: false,
        };
        assert_eq!(
            m.to_wire(),
            WireUnits {
                voltage_cv: 23000,
                current_ma: 4346,
                active_power_dw: -9990,
                power_factor_e4: -9995,
                frequency_mhz: 49988,
            }
        );
    }

    #[test]
    fn out_of_range_values_saturate_instead_of_wrapping() {
        let m = Measurement {
            voltage_v: 1000.0,
            current_a: -1.0,
            active_power_w: f32::INFINITY,
            apparent_power_va: 0.0,
            power_factor: 1.5,
            frequency_hz: f32::NAN,
            saturated: true,
        };
        assert_eq!(
            WireUnits::from(m),
            WireUnits {
                voltage_cv: u16::MAX,
                current_ma: 0,
                active_power_dw: i32::MAX,
                power_factor_e4: 10_000,
                frequency_mhz: 0,
            }
        );
    }
}
