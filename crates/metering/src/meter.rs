//! The meter: configuration plus calibration, turning sample blocks into
//! [`Measurement`]s, and the calibration helpers.

use crate::analysis::{analyse, Delay, RawReadings};
use crate::config::{Calibration, ChannelCalibration, Config, PhaseCorrection};
use crate::{Channel, Measurement, MeteringError};

/// The true values of a reference load, read from a reference meter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReferenceLoad {
    /// True RMS voltage in volts.
    pub voltage_v: f32,
    /// True RMS current in amperes.
    pub current_a: f32,
    /// How far the load's current lags its voltage, in degrees: 0 for a
    /// resistive load (kettle, heater, incandescent lamp).
    pub phase_deg: f32,
}

impl ReferenceLoad {
    /// A resistive load (current in phase with voltage).
    pub const fn resistive(voltage_v: f32, current_a: f32) -> ReferenceLoad {
        ReferenceLoad {
            voltage_v,
            current_a,
            phase_deg: 0.0,
        }
    }
}

/// Turns blocks of simultaneous voltage and current ADC samples into
/// [`Measurement`]s.
///
/// Holds no state between blocks, so one meter can serve any number of
/// blocks in any order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Meter {
    config: Config,
    calibration: Calibration,
    delay: Delay,
}

impl Meter {
    /// A meter with the given acquisition settings and calibration, both
    /// checked here so that measuring never meets an invalid setting.
    pub fn new(config: Config, calibration: Calibration) -> Result<Meter, MeteringError> {
        config.validate()?;
        calibration.validate()?;
        let delay = Delay::from_samples(calibration.phase.to_samples(&config))?;
        Ok(Meter {
            config,
            calibration,
            delay,
        })
    }

    /// The acquisition settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The calibration in use.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Replaces the calibration (for example with one a helper returned).
    /// On error the meter keeps its previous calibration.
    pub fn set_calibration(&mut self, calibration: Calibration) -> Result<(), MeteringError> {
        *self = Meter::new(self.config, calibration)?;
        Ok(())
    }

    /// The phase-correction delay applied, in samples after rounding to
    /// 1/256 sample; positive when the voltage channel is delayed.
    pub fn phase_delay_samples(&self) -> f32 {
        self.delay.samples()
    }

    /// Measures one block of simultaneous samples (`voltage[n]` and
    /// `current[n]` taken at the same instant).
    ///
    /// A block should span several line cycles (0.2 s to 1 s is typical):
    /// RMS, power and frequency are taken over the whole cycles between the
    /// first and last rising zero crossing of the voltage.
    pub fn measure(&self, voltage: &[u16], current: &[u16]) -> Result<Measurement, MeteringError> {
        Ok(self.apply(&self.raw_readings(voltage, current)?))
    }

    /// Analyses one block without applying gains or offsets (the configured
    /// phase correction is applied). The input of the calibration helpers.
    pub fn raw_readings(
        &self,
        voltage: &[u16],
        current: &[u16],
    ) -> Result<RawReadings, MeteringError> {
        analyse(&self.config, &self.delay, voltage, current)
    }

    /// Applies the calibration's gains and offsets to raw readings.
    ///
    /// Non-finite raw values (possible only in hand-made [`RawReadings`])
    /// give zeros rather than NaN.
    pub fn apply(&self, raw: &RawReadings) -> Measurement {
        let cal = &self.calibration;
        let voltage =
            net_rms(raw.voltage_rms_codes, &cal.voltage) * f64::from(cal.voltage.gain.abs());
        let current =
            net_rms(raw.current_rms_codes, &cal.current) * f64::from(cal.current.gain.abs());
        let power = finite_or_zero(
            f64::from(cal.voltage.gain)
                * f64::from(cal.current.gain)
                * (f64::from(raw.active_power_codes) - f64::from(cal.power_offset_codes)),
        );
        let apparent = voltage * current;
        let power_factor = if apparent > 0.0 {
            // Offsets and noise can push |P| slightly past S at tiny loads.
            (power / apparent).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        Measurement {
            voltage_v: to_f32(voltage),
            current_a: to_f32(current),
            active_power_w: to_f32(power),
            apparent_power_va: to_f32(apparent),
            power_factor: to_f32(power_factor),
            frequency_hz: to_f32(f64::from(raw.frequency_hz).max(0.0)),
            saturated: raw.saturated,
        }
    }

    /// Calibration step 1: offsets from a block measured with the mains
    /// connected but no load (nothing plugged into the meter).
    ///
    /// Returns the current calibration with the current channel's noise
    /// offset and the active-power offset (voltage crosstalk into the current
    /// sensor) set from `no_load`. Gains and phase are unchanged.
    pub fn calibrate_no_load(&self, no_load: &RawReadings) -> Result<Calibration, MeteringError> {
        let mut cal = self.calibration;
        cal.current.offset_codes = no_load.current_rms_codes;
        cal.power_offset_codes = no_load.active_power_codes;
        cal.validate()?;
        Ok(cal)
    }

    /// Optional: the voltage channel's noise offset from a block measured
    /// with the voltage sensor's input disconnected (or shorted).
    ///
    /// Rarely worth it: noise of a few codes under a signal of ~1000 codes
    /// changes the RMS by parts per million once removed in quadrature.
    pub fn calibrate_no_voltage(
        &self,
        no_voltage: &RawReadings,
    ) -> Result<Calibration, MeteringError> {
        let mut cal = self.calibration;
        cal.voltage.offset_codes = no_voltage.voltage_rms_codes;
        cal.validate()?;
        Ok(cal)
    }

    /// Calibration step 2: gains and phase correction from a block measured
    /// on a reference load whose true values are known.
    ///
    /// The gains make the offset-corrected RMS values equal the reference.
    /// The phase difference between what was measured and the reference's
    /// `phase_deg` is added to the present phase delay. If the measured phase
    /// is more than 90° off, the current sensor is mounted backwards: the
    /// current gain is made negative and the phase taken modulo 180°.
    ///
    /// Run it with this meter's offsets already calibrated (step 1), since
    /// the gains are derived from offset-corrected RMS values.
    pub fn calibrate_reference(
        &self,
        raw: &RawReadings,
        reference: &ReferenceLoad,
    ) -> Result<Calibration, MeteringError> {
        let ReferenceLoad {
            voltage_v,
            current_a,
            phase_deg,
        } = *reference;
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(voltage_v) || !positive(current_a) || !phase_deg.is_finite() {
            return Err(MeteringError::InvalidReference);
        }
        let mut cal = self.calibration;
        // net_rms is never NaN, so `<=` catches every unusable value.
        let v_net = net_rms(raw.voltage_rms_codes, &cal.voltage);
        if v_net <= 0.0 {
            return Err(MeteringError::SignalTooSmall {
                channel: Channel::Voltage,
            });
        }
        let i_net = net_rms(raw.current_rms_codes, &cal.current);
        if i_net <= 0.0 {
            return Err(MeteringError::SignalTooSmall {
                channel: Channel::Current,
            });
        }
        if !raw.phase_deg.is_finite() {
            return Err(MeteringError::InvalidCalibration { field: "phase" });
        }

        let mut error_deg = wrap_degrees(f64::from(raw.phase_deg) - f64::from(phase_deg));
        let mut current_sign = 1.0;
        if error_deg.abs() > 90.0 {
            current_sign = -1.0;
            error_deg = wrap_degrees(error_deg - 180.0);
        }
        // The residual error is converted at the measured frequency, where
        // it was observed, and added to the delay already applied.
        let frequency = if raw.frequency_hz.is_finite() && raw.frequency_hz > 0.0 {
            f64::from(raw.frequency_hz)
        } else {
            f64::from(self.config.nominal_frequency_hz)
        };
        let samples_per_cycle = f64::from(self.config.sample_rate_hz) / frequency;
        let delay = f64::from(self.delay.samples()) + error_deg / 360.0 * samples_per_cycle;

        cal.voltage.gain = (f64::from(voltage_v) / v_net) as f32;
        cal.current.gain = (current_sign * f64::from(current_a) / i_net) as f32;
        cal.phase = PhaseCorrection::Samples(delay as f32);
        // Validate as a meter would, so the delay range is checked too.
        Meter::new(self.config, cal)?;
        Ok(cal)
    }
}

/// RMS in codes with the noise offset removed in quadrature.
fn net_rms(rms_codes: f32, cal: &ChannelCalibration) -> f64 {
    let r = f64::from(rms_codes);
    let o = f64::from(cal.offset_codes);
    let net2 = r * r - o * o;
    // NaN compares false, so it lands on 0 too.
    if net2 > 0.0 && net2.is_finite() {
        libm::sqrt(net2)
    } else {
        0.0
    }
}

/// Narrows to `f32`, saturating at its range so the result stays finite.
fn to_f32(x: f64) -> f32 {
    finite_or_zero(x).clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Wraps an angle into (−180, 180] degrees.
fn wrap_degrees(x: f64) -> f64 {
    let mut x = x % 360.0;
    if x > 180.0 {
        x -= 360.0;
    } else if x <= -180.0 {
        x += 360.0;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> Result<Meter, MeteringError> {
        Meter::new(Config::new(4000.0), Calibration::UNITY)
    }

    fn raw(v: f32, i: f32, p: f32, phase: f32) -> RawReadings {
        RawReadings {
            voltage_rms_codes: v,
            current_rms_codes: i,
            active_power_codes: p,
            phase_deg: phase,
            frequency_hz: 50.0,
            samples: 4000,
            cycles: 50,
            saturated: false,
        }
    }

    #[test]
    fn empty_block_is_a_typed_error() -> Result<(), MeteringError> {
        assert_eq!(meter()?.measure(&[], &[]), Err(MeteringError::EmptyBlock));
        Ok(())
    }

    #[test]
    fn blocks_of_different_lengths_are_rejected() -> Result<(), MeteringError> {
        assert_eq!(
            meter()?.measure(&[2048; 10], &[2048; 9]),
            Err(MeteringError::LengthMismatch {
                voltage: 10,
                current: 9
            })
        );
        Ok(())
    }

    #[test]
    fn code_above_the_adc_range_is_rejected() -> Result<(), MeteringError> {
        let mut i = [2048u16; 20];
        i[7] = 4096;
        assert_eq!(
            meter()?.measure(&[2048; 20], &i),
            Err(MeteringError::SampleOutOfRange {
                channel: Channel::Current,
                index: 7,
                code: 4096,
                max: 4095
            })
        );
        Ok(())
    }

    #[test]
    fn offsets_are_removed_in_quadrature() -> Result<(), MeteringError> {
        let mut cal = Calibration::UNITY;
        cal.current.offset_codes = 3.0;
        let m = Meter::new(Config::new(4000.0), cal)?.apply(&raw(1000.0, 5.0, 0.0, 0.0));
        assert!((m.current_a - 4.0).abs() < 1e-6);
        // Below the offset the current is zero, not NaN.
        let m = Meter::new(Config::new(4000.0), cal)?.apply(&raw(1000.0, 2.0, 0.0, 0.0));
        assert_eq!(m.current_a, 0.0);
        assert_eq!(m.power_factor, 0.0);
        Ok(())
    }

    #[test]
    fn reference_load_sets_gains_and_phase() -> Result<(), MeteringError> {
        let m = meter()?;
        // 2° of residual lag at 80 samples per cycle is 0.444 samples.
        let cal = m.calibrate_reference(
            &raw(1000.0, 500.0, 0.0, 2.0),
            &ReferenceLoad::resistive(230.0, 4.0),
        )?;
        assert!((cal.voltage.gain - 0.23).abs() < 1e-6);
        assert!((cal.current.gain - 0.008).abs() < 1e-7);
        let PhaseCorrection::Samples(d) = cal.phase else {
            return Err(MeteringError::InvalidCalibration { field: "phase" });
        };
        assert!((d - 2.0 / 360.0 * 80.0).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn reversed_current_sensor_gets_a_negative_gain() -> Result<(), MeteringError> {
        let cal = meter()?.calibrate_reference(
            &raw(1000.0, 500.0, -250_000.0, -179.0),
            &ReferenceLoad::resistive(230.0, 4.0),
        )?;
        assert!(cal.current.gain < 0.0);
        let PhaseCorrection::Samples(d) = cal.phase else {
            return Err(MeteringError::InvalidCalibration { field: "phase" });
        };
        assert!((d - 1.0 / 360.0 * 80.0).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn silent_channel_cannot_be_calibrated() -> Result<(), MeteringError> {
        assert_eq!(
            meter()?.calibrate_reference(
                &raw(1000.0, 0.0, 0.0, 0.0),
                &ReferenceLoad::resistive(230.0, 4.0)
            ),
            Err(MeteringError::SignalTooSmall {
                channel: Channel::Current
            })
        );
        assert_eq!(
            meter()?.calibrate_reference(
                &raw(1000.0, 10.0, 0.0, 0.0),
                &ReferenceLoad::resistive(230.0, f32::NAN)
            ),
            Err(MeteringError::InvalidReference)
        );
        Ok(())
    }

    #[test]
    fn hand_made_nan_raw_readings_give_zeros() -> Result<(), MeteringError> {
        let m = meter()?.apply(&raw(f32::NAN, f32::NAN, f32::NAN, 0.0));
        assert_eq!(m.voltage_v, 0.0);
        assert_eq!(m.active_power_w, 0.0);
        Ok(())
    }

    #[test]
    fn huge_hand_made_raw_readings_stay_finite() -> Result<(), MeteringError> {
        let mut cal = Calibration::UNITY;
        cal.voltage.gain = crate::MAX_GAIN;
        cal.current.gain = -crate::MAX_GAIN;
        let meter = Meter::new(Config::new(4000.0), cal)?;
        let m = meter.apply(&raw(f32::MAX, f32::MAX, f32::MAX, 0.0));
        assert!(m.voltage_v.is_finite() && m.apparent_power_va.is_finite());
        assert_eq!(m.active_power_w, f32::MIN);
        Ok(())
    }

    #[test]
    fn wrap_degrees_lands_in_half_open_range() {
        assert_eq!(wrap_degrees(190.0), -170.0);
        assert_eq!(wrap_degrees(-180.0), 180.0);
        assert_eq!(wrap_degrees(720.0 + 45.0), 45.0);
    }
}
