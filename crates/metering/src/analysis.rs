//! Block analysis: from raw ADC codes to uncalibrated RMS values, active
//! power, phase and frequency ([`RawReadings`]).
//!
//! Every per-sample operation is integer arithmetic: the sums are exact, so
//! removing the DC mean (`N·Σx² − (Σx)²`) loses nothing to cancellation, and
//! the loop is cheap on FPU-less cores such as the ESP32-C3. Floating point is
//! used only once per block and at zero crossings.

use crate::config::{Config, MAX_BLOCK_LEN, MAX_PHASE_DELAY_SAMPLES};
use crate::{Channel, MeteringError};
use core::f64::consts::{PI, SQRT_2};

/// Fewest samples in the measured window.
const MIN_WINDOW: usize = 4;

/// Fractional bits of the phase-correction delay: 1/256 sample is 0.018° at
/// 4 kHz and 50 Hz, fine enough for 0.1 % power error at PF 0.5.
const FRAC_BITS: u32 = 8;
const FRAC_ONE: u32 = 1 << FRAC_BITS;

/// Uncalibrated results of one block, in ADC codes.
///
/// Produced by [`crate::Meter::raw_readings`]; turned into a
/// [`crate::Measurement`] by [`crate::Meter::apply`], and the input of the
/// calibration helpers.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct RawReadings {
    /// RMS of the voltage channel after DC removal, in codes.
    pub voltage_rms_codes: f32,
    /// RMS of the current channel after DC removal, in codes.
    pub current_rms_codes: f32,
    /// Mean product of the DC-free, phase-corrected channels, in code².
    pub active_power_codes: f32,
    /// How far the current's fundamental lags the voltage's, in degrees
    /// (−180..=180], after the configured phase correction. Positive for an
    /// inductive load; on a resistive load it is the residual sensor phase error.
    pub phase_deg: f32,
    /// Line frequency in Hz, or 0 when the block held fewer than two rising
    /// zero crossings of the voltage (mains off, or shorter than a cycle).
    pub frequency_hz: f32,
    /// Samples in the measured window: whole cycles between the first and
    /// last rising zero crossing, or the whole block when there are none.
    pub samples: u32,
    /// Whole cycles in the window (0 when the whole block was used).
    pub cycles: u32,
    /// A sample sat at the lowest or highest ADC code: the signal clipped
    /// and the readings of this block under-read.
    pub saturated: bool,
}

/// The phase correction as an integer delay of one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delay {
    /// Which channel is delayed.
    channel: Channel,
    /// Whole samples of delay.
    whole: usize,
    /// Fraction of a sample, in 1/256.
    frac: u32,
}

impl Delay {
    /// Quantises `samples` (positive: delay voltage) to 1/256 sample.
    pub(crate) fn from_samples(samples: f32) -> Result<Delay, MeteringError> {
        if !samples.is_finite() {
            return Err(MeteringError::InvalidCalibration { field: "phase" });
        }
        let q = round_i64(f64::from(samples) * f64::from(FRAC_ONE));
        let mag = q.unsigned_abs();
        if mag > u64::from(MAX_PHASE_DELAY_SAMPLES) * u64::from(FRAC_ONE) {
            return Err(MeteringError::PhaseDelayTooLarge {
                max_samples: MAX_PHASE_DELAY_SAMPLES,
            });
        }
        Ok(Delay {
            channel: if q >= 0 {
                Channel::Voltage
            } else {
                Channel::Current
            },
            // Bounded by MAX_PHASE_DELAY_SAMPLES above, so these conversions are lossless.
            whole: usize::try_from(mag >> FRAC_BITS).unwrap_or(usize::MAX),
            frac: u32::try_from(mag & u64::from(FRAC_ONE - 1)).unwrap_or(0),
        })
    }

    /// The delay in samples, positive when the voltage is delayed.
    pub(crate) fn samples(&self) -> f32 {
        let s = self.whole as f64 + f64::from(self.frac) / f64::from(FRAC_ONE);
        match self.channel {
            Channel::Voltage => s as f32,
            Channel::Current => -s as f32,
        }
    }

    /// Samples needed before the first output of the delayed channel.
    fn lead(&self) -> usize {
        self.whole + 1
    }

    /// Magnitude of the interpolator's response at `omega` rad/sample.
    ///
    /// Linear interpolation is a low-pass filter; dividing by this keeps the
    /// power of a phase-corrected block equal to V·I·cos φ.
    fn gain_at(&self, omega: f64) -> f64 {
        let a = f64::from(self.frac) / f64::from(FRAC_ONE);
        let h2 = 1.0 - 2.0 * a * (1.0 - a) * (1.0 - libm::cos(omega));
        if h2 > 0.0 {
            libm::sqrt(h2)
        } else {
            1.0
        }
    }
}

/// Rounds half away from zero; saturates like `as`.
fn round_i64(x: f64) -> i64 {
    if x >= 0.0 {
        (x + 0.5) as i64
    } else {
        (x - 0.5) as i64
    }
}

/// Least-squares fit of rising-crossing times against crossing number: the
/// slope is the period. Using every crossing, not only the first and last,
/// averages out the jitter that noise puts on each one.
#[derive(Default)]
struct CrossingFit {
    count: u32,
    first: f64,
    last: f64,
    sum_k: f64,
    sum_kk: f64,
    sum_t: f64,
    sum_kt: f64,
}

impl CrossingFit {
    fn push(&mut self, t: f64) {
        if self.count == 0 {
            self.first = t;
        }
        // Times relative to the first crossing keep the sums small and precise.
        let k = f64::from(self.count);
        let tau = t - self.first;
        self.sum_k += k;
        self.sum_kk += k * k;
        self.sum_t += tau;
        self.sum_kt += k * tau;
        self.last = t;
        self.count = self.count.saturating_add(1);
    }

    /// Samples per cycle, when at least two crossings were seen.
    fn period(&self) -> Option<f64> {
        if self.count < 2 {
            return None;
        }
        let m = f64::from(self.count);
        let den = m * self.sum_kk - self.sum_k * self.sum_k;
        let num = m * self.sum_kt - self.sum_k * self.sum_t;
        let p = num / den;
        (den > 0.0 && p.is_finite() && p > 0.0).then_some(p)
    }
}

/// Exact integer sums over the measured window.
#[derive(Default)]
struct Sums {
    n: u64,
    v: u64,
    vv: u64,
    i: u64,
    ii: u64,
    /// Delayed channel, in 1/256 code.
    x: u64,
    /// The other channel, in codes.
    r: u64,
    xr: u64,
    /// Σ x[n]·r[n+1] and Σ x[n+1]·r[n]: their difference measures the phase.
    x0r1: u64,
    x1r0: u64,
    x_first: u64,
    x_last: u64,
    r_first: u64,
    r_last: u64,
}

/// `N·Σa·b − Σa·Σb`, that is N² times the covariance, exactly.
fn centred(n: u64, sum_ab: u64, sum_a: u64, sum_b: u64) -> i128 {
    i128::from(n) * i128::from(sum_ab) - i128::from(sum_a) * i128::from(sum_b)
}

/// Analyses one block. See [`crate::Meter::raw_readings`].
pub(crate) fn analyse(
    config: &Config,
    delay: &Delay,
    voltage: &[u16],
    current: &[u16],
) -> Result<RawReadings, MeteringError> {
    let len = voltage.len();
    if len != current.len() {
        return Err(MeteringError::LengthMismatch {
            voltage: len,
            current: current.len(),
        });
    }
    if len == 0 {
        return Err(MeteringError::EmptyBlock);
    }
    if len > MAX_BLOCK_LEN {
        return Err(MeteringError::BlockTooLong {
            len,
            max: MAX_BLOCK_LEN,
        });
    }
    let lead = delay.lead();
    let min = lead + MIN_WINDOW + 1;
    if len < min {
        return Err(MeteringError::BlockTooShort { len, min });
    }

    // Pass 1: validate, detect clipping, and size the crossing hysteresis.
    let max = config.max_code();
    let mut saturated = false;
    let (mut sv, mut svv) = (0u64, 0u64);
    for (index, (&v, &c)) in voltage.iter().zip(current).enumerate() {
        for (channel, code) in [(Channel::Voltage, v), (Channel::Current, c)] {
            if code > max {
                return Err(MeteringError::SampleOutOfRange {
                    channel,
                    index,
                    code,
                    max,
                });
            }
            saturated |= code == 0 || code == max;
        }
        sv += u64::from(v);
        svv += u64::from(v) * u64::from(v);
    }
    let n = len as u64;
    let var_n2 = centred(n, svv, sv, sv).max(0);
    let rms_v = libm::sqrt(var_n2 as f64) / n as f64;
    let threshold = f64::max(f64::from(config.hysteresis_codes), rms_v * SQRT_2 / 8.0);

    // Pass 2: rising zero crossings of the voltage, in units of N·code so the
    // block mean (Σv/N) needs no division.
    let n_i = len as i64;
    let sum_v = sv as i64;
    let thr = (threshold * n as f64) as i64;
    let mut fit = CrossingFit::default();
    let mut armed = false;
    for (k, pair) in voltage[lead - 1..].windows(2).enumerate() {
        let &[a, b] = pair else { continue };
        let prev = i64::from(a) * n_i - sum_v;
        let cur = i64::from(b) * n_i - sum_v;
        if cur < -thr {
            // Hysteresis: only after a clear negative half-cycle can a crossing
            // count, so noise around zero gives one crossing, not many.
            armed = true;
        } else if armed && cur >= 0 && cur > prev {
            // Armed means every sample since the arming one was negative, so
            // prev < 0 <= cur: interpolate linearly between them.
            let t = (lead - 1 + k) as f64 + (-prev) as f64 / (cur - prev) as f64;
            fit.push(t);
            armed = false;
        }
    }

    // The window spans whole cycles, first to last crossing, so the block mean
    // is the true DC offset and the RMS has no partial-cycle error.
    let (start, end, cycles, period) = match fit.period() {
        Some(p) => {
            let s = round_i64(fit.first).max(0) as usize;
            let e = round_i64(fit.last).max(0) as usize;
            if s >= lead && e <= len && e >= s + MIN_WINDOW {
                (s, e, fit.count - 1, Some(p))
            } else {
                (lead, len, 0, None)
            }
        }
        None => (lead, len, 0, None),
    };
    let omega = match period {
        Some(p) => 2.0 * PI / p,
        None => {
            2.0 * PI * f64::from(config.nominal_frequency_hz) / f64::from(config.sample_rate_hz)
        }
    };
    let frequency_hz = match period {
        Some(p) => (f64::from(config.sample_rate_hz) / p) as f32,
        None => 0.0,
    };

    // Pass 3: exact sums over the window with the phase-correction delay.
    let (delayed, other) = match delay.channel {
        Channel::Voltage => (voltage, current),
        Channel::Current => (current, voltage),
    };
    let w = delay.whole;
    // start >= lead = whole + 1, so every index below is in range.
    let now = &delayed[start - w..end - w];
    let before = &delayed[start - w - 1..end - w - 1];
    let others = &other[start..end];
    let frac = u64::from(delay.frac);
    let mut s = Sums::default();
    let mut prev: Option<(u64, u64)> = None;
    for ((((&d0, &d1), &r), &v), &c) in now
        .iter()
        .zip(before)
        .zip(others)
        .zip(&voltage[start..end])
        .zip(&current[start..end])
    {
        // Linear interpolation between this and the previous sample of the
        // delayed channel, in 1/256 code: exact in integers.
        let x = u64::from(d0) * (u64::from(FRAC_ONE) - frac) + u64::from(d1) * frac;
        let r = u64::from(r);
        let (v, c) = (u64::from(v), u64::from(c));
        s.v += v;
        s.vv += v * v;
        s.i += c;
        s.ii += c * c;
        s.x += x;
        s.r += r;
        s.xr += x * r;
        match prev {
            Some((px, pr)) => {
                s.x0r1 += px * r;
                s.x1r0 += x * pr;
            }
            None => {
                s.x_first = x;
                s.r_first = r;
            }
        }
        s.x_last = x;
        s.r_last = r;
        prev = Some((x, r));
        s.n += 1;
    }

    let nw = s.n as f64;
    let var_v = centred(s.n, s.vv, s.v, s.v).max(0) as f64;
    let var_i = centred(s.n, s.ii, s.i, s.i).max(0) as f64;
    let scale = f64::from(FRAC_ONE);
    let cov = centred(s.n, s.xr, s.x, s.r) as f64 / (nw * nw) / scale;
    let active_power_codes = cov / delay.gain_at(omega);

    // N times the centred lag difference Σ(x[n]−x̄)(r[n+1]−r̄) − Σ(x[n+1]−x̄)(r[n]−r̄);
    // the mean terms telescope to the window's end samples.
    let lag_n = i128::from(s.n) * (i128::from(s.x0r1) - i128::from(s.x1r0))
        - i128::from(s.x) * (i128::from(s.r_last) - i128::from(s.r_first))
        - i128::from(s.r) * (i128::from(s.x_first) - i128::from(s.x_last));
    // For v = A·cos θ and i = B·cos(θ−φ) the mean lag difference is
    // A·B·sin ω·sin φ (voltage first) and the mean product A·B/2·cos φ.
    let lag = lag_n as f64 / (nw * (nw - 1.0)) / scale;
    let lag = match delay.channel {
        Channel::Voltage => lag,
        Channel::Current => -lag,
    };
    let sin_w = libm::sin(omega);
    let phase_deg = if sin_w.abs() > 1e-9 {
        libm::atan2(lag / sin_w, 2.0 * cov).to_degrees()
    } else {
        0.0
    };

    Ok(RawReadings {
        voltage_rms_codes: (libm::sqrt(var_v) / nw) as f32,
        current_rms_codes: (libm::sqrt(var_i) / nw) as f32,
        active_power_codes: active_power_codes as f32,
        phase_deg: phase_deg as f32,
        frequency_hz,
        samples: u32::try_from(s.n).unwrap_or(u32::MAX),
        cycles,
        saturated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn sine(len: usize, mid: f64, amp: f64, cycles_per_sample: f64, phase: f64) -> Vec<u16> {
        (0..len)
            .map(|n| {
                let x = mid + amp * (2.0 * PI * cycles_per_sample * n as f64 + phase).sin();
                x.round().clamp(0.0, 4095.0) as u16
            })
            .collect()
    }

    #[test]
    fn delay_quantises_to_a_256th_of_a_sample() -> Result<(), MeteringError> {
        let d = Delay::from_samples(1.3)?;
        assert_eq!(d.channel, Channel::Voltage);
        assert_eq!(d.whole, 1);
        assert_eq!(d.frac, 77); // 0.3 * 256 = 76.8
        let d = Delay::from_samples(-0.5)?;
        assert_eq!(d.channel, Channel::Current);
        assert_eq!((d.whole, d.frac), (0, 128));
        assert!((d.samples() + 0.5).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn delay_beyond_the_limit_is_rejected() {
        assert_eq!(
            Delay::from_samples(65.0),
            Err(MeteringError::PhaseDelayTooLarge {
                max_samples: MAX_PHASE_DELAY_SAMPLES
            })
        );
        assert_eq!(
            Delay::from_samples(f32::NAN),
            Err(MeteringError::InvalidCalibration { field: "phase" })
        );
    }

    #[test]
    fn window_spans_whole_cycles_between_crossings() -> Result<(), MeteringError> {
        let v = sine(1000, 2048.0, 1500.0, 50.0 / 4000.0, 0.3);
        let i = sine(1000, 2048.0, 1000.0, 50.0 / 4000.0, 0.3);
        let raw = analyse(&Config::new(4000.0), &Delay::from_samples(0.0)?, &v, &i)?;
        // Rising crossings fall at 76.18 + 80·k: twelve of them fit in 1000
        // samples, spanning 11 cycles from sample 76 to 956.
        assert_eq!(raw.cycles, 11);
        assert_eq!(raw.samples, 880);
        assert!((raw.frequency_hz - 50.0).abs() < 0.01);
        Ok(())
    }

    #[test]
    fn flat_block_has_no_frequency_and_zero_rms() -> Result<(), MeteringError> {
        let v = [2048u16; 100];
        let raw = analyse(&Config::new(4000.0), &Delay::from_samples(0.0)?, &v, &v)?;
        assert_eq!(raw.frequency_hz, 0.0);
        assert_eq!(raw.cycles, 0);
        assert_eq!(raw.voltage_rms_codes, 0.0);
        assert_eq!(raw.active_power_codes, 0.0);
        assert!(!raw.saturated);
        Ok(())
    }

    #[test]
    fn noise_below_the_hysteresis_gives_no_frequency() -> Result<(), MeteringError> {
        // ±20 codes of alternating noise never reaches the 40-code threshold.
        let v: Vec<u16> = (0..400)
            .map(|n| if n % 3 == 0 { 2068 } else { 2038 })
            .collect();
        let raw = analyse(&Config::new(4000.0), &Delay::from_samples(0.0)?, &v, &v)?;
        assert_eq!(raw.frequency_hz, 0.0);
        Ok(())
    }

    #[test]
    fn quarter_period_lag_reads_ninety_degrees() -> Result<(), MeteringError> {
        let v = sine(4000, 2048.0, 1500.0, 50.0 / 4000.0, 0.0);
        let i = sine(4000, 2048.0, 1500.0, 50.0 / 4000.0, -PI / 2.0);
        let raw = analyse(&Config::new(4000.0), &Delay::from_samples(0.0)?, &v, &i)?;
        assert!((raw.phase_deg - 90.0).abs() < 0.05, "{}", raw.phase_deg);
        assert!(raw.active_power_codes.abs() < 1.0);
        Ok(())
    }

    #[test]
    fn clipped_sample_sets_saturated() -> Result<(), MeteringError> {
        let mut v = sine(400, 2048.0, 1500.0, 50.0 / 4000.0, 0.0);
        v[10] = 4095;
        let raw = analyse(&Config::new(4000.0), &Delay::from_samples(0.0)?, &v, &v)?;
        assert!(raw.saturated);
        Ok(())
    }

    #[test]
    fn longest_block_of_extreme_16_bit_codes_does_not_overflow() -> Result<(), MeteringError> {
        // Debug builds panic on integer overflow, so this pins the bounds the
        // u64 sums rely on: full-scale square wave, 65 536 samples, both
        // delay directions with a fractional part.
        let config = Config {
            adc_bits: 16,
            ..Config::new(4000.0)
        };
        let square: Vec<u16> = (0..MAX_BLOCK_LEN)
            .map(|n| if (n / 40) % 2 == 0 { u16::MAX } else { 0 })
            .collect();
        let full = std::vec![u16::MAX; MAX_BLOCK_LEN];
        for delay in [0.5, -63.75] {
            let d = Delay::from_samples(delay)?;
            for (v, i) in [(&square, &square), (&full, &full), (&square, &full)] {
                let raw = analyse(&config, &d, v, i)?;
                assert!(raw.voltage_rms_codes.is_finite() && raw.voltage_rms_codes >= 0.0);
                assert!(raw.active_power_codes.is_finite());
            }
        }
        let too_long = std::vec![0u16; MAX_BLOCK_LEN + 1];
        assert_eq!(
            analyse(&config, &Delay::from_samples(0.0)?, &too_long, &too_long),
            Err(MeteringError::BlockTooLong {
                len: MAX_BLOCK_LEN + 1,
                max: MAX_BLOCK_LEN
            })
        );
        Ok(())
    }

    #[test]
    fn block_shorter_than_the_delay_is_rejected() -> Result<(), MeteringError> {
        let v = [2048u16; 6];
        assert_eq!(
            analyse(&Config::new(4000.0), &Delay::from_samples(2.5)?, &v, &v),
            Err(MeteringError::BlockTooShort { len: 6, min: 8 })
        );
        Ok(())
    }
}
