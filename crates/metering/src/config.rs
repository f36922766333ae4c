//! Acquisition settings ([`Config`]) and per-meter calibration ([`Calibration`]).

use crate::MeteringError;

/// Most samples per channel in one block.
///
/// With 16-bit codes and the 8-bit fractional phase delay every per-sample sum
/// stays below 2^64 up to this length, so the sums are exact `u64` integers.
/// At 4 kHz this is over 16 s of signal.
pub const MAX_BLOCK_LEN: usize = 65_536;

/// Largest phase-correction delay, in samples.
///
/// Sensor phase errors are a few degrees, a fraction of a sample at usual
/// sample rates; a larger value is a configuration mistake.
pub const MAX_PHASE_DELAY_SAMPLES: u32 = 64;

/// Largest gain magnitude accepted, in volts or amperes per ADC code.
///
/// Real gains are well below 1; the bound keeps every derived value finite in `f32`.
pub const MAX_GAIN: f32 = 1.0e6;

/// How the ADC is sampled. Fixed per hardware design.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Samples per second per channel (voltage and current are sampled as
    /// simultaneous pairs at this rate).
    pub sample_rate_hz: f32,
    /// ADC resolution in bits, 1..=16 (the ESP32 ADCs give 12).
    pub adc_bits: u8,
    /// Nominal line frequency (50 or 60 Hz). Converts a phase correction
    /// given in degrees to samples, and stands in for the measured frequency
    /// when a block has no usable zero crossing.
    pub nominal_frequency_hz: f32,
    /// Smallest hysteresis of the zero-crossing detector, in ADC codes.
    ///
    /// A rising crossing counts only after the voltage has been below
    /// `-threshold` (relative to the block mean); the threshold is the larger of
    /// this value and one eighth of the block's peak voltage. Keep it above the
    /// ADC noise so a mains-off block reports no frequency rather than noise.
    pub hysteresis_codes: u16,
}

impl Config {
    /// A 12-bit, 50 Hz configuration at the given sample rate, with a
    /// hysteresis of 40 codes (about 1 % of full scale, well above ESP32 ADC noise).
    pub const fn new(sample_rate_hz: f32) -> Config {
        Config {
            sample_rate_hz,
            adc_bits: 12,
            nominal_frequency_hz: 50.0,
            hysteresis_codes: 40,
        }
    }

    /// The largest code the ADC can produce (4095 for 12 bits).
    ///
    /// Out-of-range resolutions are clamped here; [`Config::validate`] reports them.
    pub fn max_code(&self) -> u16 {
        let bits = u32::from(self.adc_bits.clamp(1, 16));
        // 2^bits - 1 fits u16 for bits <= 16; computed in u32 to avoid overflow.
        u16::try_from((1u32 << bits) - 1).unwrap_or(u16::MAX)
    }

    /// Checks that every field is usable.
    pub fn validate(&self) -> Result<(), MeteringError> {
        let fs = self.sample_rate_hz;
        if !(fs.is_finite() && fs > 0.0) {
            return Err(MeteringError::InvalidSampleRate);
        }
        if !(1..=16).contains(&self.adc_bits) {
            return Err(MeteringError::InvalidAdcBits {
                bits: self.adc_bits,
            });
        }
        let f0 = self.nominal_frequency_hz;
        if !(f0.is_finite() && f0 > 0.0 && f0 < fs / 2.0) {
            return Err(MeteringError::InvalidNominalFrequency);
        }
        Ok(())
    }
}

/// Gain and noise offset of one channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelCalibration {
    /// Volts (or amperes) per ADC code. A negative gain inverts the channel,
    /// for a sensor mounted the other way round.
    pub gain: f32,
    /// RMS noise floor in ADC codes, removed in quadrature:
    /// `rms = sqrt(max(rms_measured² - offset², 0))`.
    ///
    /// Noise adds to the RMS as a square, so subtracting it linearly would
    /// under-read large signals; quadrature removes it exactly at every level.
    /// The DC (mid-rail) offset is not configured here: it is removed per
    /// block, see the crate documentation.
    pub offset_codes: f32,
}

impl ChannelCalibration {
    /// Unity gain (results in ADC codes), no offset.
    pub const UNITY: ChannelCalibration = ChannelCalibration {
        gain: 1.0,
        offset_codes: 0.0,
    };

    fn validate(&self, gain: &'static str, offset: &'static str) -> Result<(), MeteringError> {
        if !(self.gain.is_finite() && self.gain.abs() <= MAX_GAIN) {
            return Err(MeteringError::InvalidCalibration { field: gain });
        }
        if !(self.offset_codes.is_finite() && self.offset_codes >= 0.0) {
            return Err(MeteringError::InvalidCalibration { field: offset });
        }
        Ok(())
    }
}

/// Correction of the phase shift between the voltage and current sensors.
///
/// Positive values delay the voltage channel relative to the current channel:
/// use them when the voltage sensor leads (a ZMPT101B transformer usually
/// does), which otherwise shows up as current lagging on a resistive load.
/// Negative values delay the current channel instead. The delay is applied as
/// linear interpolation between neighbouring samples with 1/256-sample
/// resolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PhaseCorrection {
    /// Delay in samples (fractional).
    Samples(f32),
    /// Delay in degrees of the nominal line frequency.
    Degrees(f32),
}

impl PhaseCorrection {
    /// The delay in samples under `config`.
    pub fn to_samples(self, config: &Config) -> f32 {
        match self {
            PhaseCorrection::Samples(s) => s,
            PhaseCorrection::Degrees(d) => {
                let samples_per_cycle =
                    f64::from(config.sample_rate_hz) / f64::from(config.nominal_frequency_hz);
                (f64::from(d) / 360.0 * samples_per_cycle) as f32
            }
        }
    }
}

impl Default for PhaseCorrection {
    fn default() -> Self {
        PhaseCorrection::Samples(0.0)
    }
}

/// Per-meter calibration, found with the helpers on [`crate::Meter`] and
/// the procedure in `docs/metering.md`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Voltage channel (gain in volts per code).
    pub voltage: ChannelCalibration,
    /// Current channel (gain in amperes per code).
    pub current: ChannelCalibration,
    /// Phase correction between the two sensors.
    pub phase: PhaseCorrection,
    /// Active power seen with no load, in raw units (code² after DC removal),
    /// subtracted before the gains apply. It is voltage crosstalk into the
    /// current sensor; kept in raw units so offsets can be found before gains.
    pub power_offset_codes: f32,
}

impl Calibration {
    /// Unity gains, no offsets, no phase correction: results come out in ADC
    /// codes. The starting point for calibration.
    pub const UNITY: Calibration = Calibration {
        voltage: ChannelCalibration::UNITY,
        current: ChannelCalibration::UNITY,
        phase: PhaseCorrection::Samples(0.0),
        power_offset_codes: 0.0,
    };

    /// Checks every value is finite and in range (the phase delay is checked
    /// against the sample rate by [`crate::Meter::new`]).
    pub fn validate(&self) -> Result<(), MeteringError> {
        self.voltage.validate("voltage gain", "voltage offset")?;
        self.current.validate("current gain", "current offset")?;
        let phase = match self.phase {
            PhaseCorrection::Samples(v) | PhaseCorrection::Degrees(v) => v,
        };
        if !phase.is_finite() {
            return Err(MeteringError::InvalidCalibration { field: "phase" });
        }
        if !self.power_offset_codes.is_finite() {
            return Err(MeteringError::InvalidCalibration {
                field: "power offset",
            });
        }
        Ok(())
    }
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration::UNITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_code_of_twelve_bits_is_4095() {
        assert_eq!(Config::new(4000.0).max_code(), 4095);
        let c16 = Config {
            adc_bits: 16,
            ..Config::new(4000.0)
        };
        assert_eq!(c16.max_code(), u16::MAX);
    }

    #[test]
    fn nominal_frequency_at_or_above_nyquist_is_rejected() {
        let c = Config {
            nominal_frequency_hz: 2000.0,
            ..Config::new(4000.0)
        };
        assert_eq!(c.validate(), Err(MeteringError::InvalidNominalFrequency));
    }

    #[test]
    fn nan_sample_rate_and_zero_adc_bits_are_rejected() {
        assert_eq!(
            Config::new(f32::NAN).validate(),
            Err(MeteringError::InvalidSampleRate)
        );
        let c = Config {
            adc_bits: 0,
            ..Config::new(4000.0)
        };
        assert_eq!(c.validate(), Err(MeteringError::InvalidAdcBits { bits: 0 }));
    }

    #[test]
    fn degrees_convert_to_samples_at_nominal_frequency() {
        // 4000 Hz / 50 Hz = 80 samples per cycle, so 4.5° = 1 sample.
        let s = PhaseCorrection::Degrees(4.5).to_samples(&Config::new(4000.0));
        assert!((s - 1.0).abs() < 1e-6);
    }

    #[test]
    fn negative_offset_and_infinite_gain_are_rejected() {
        let mut c = Calibration::UNITY;
        c.current.offset_codes = -1.0;
        assert_eq!(
            c.validate(),
            Err(MeteringError::InvalidCalibration {
                field: "current offset"
            })
        );
        let mut c = Calibration::UNITY;
        c.voltage.gain = f32::INFINITY;
        assert_eq!(
            c.validate(),
            Err(MeteringError::InvalidCalibration {
                field: "voltage gain"
            })
        );
    }
}
