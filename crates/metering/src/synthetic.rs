//! Synthetic ADC waveforms with exact answers, for tests: sums of tones of
//! known amplitude and phase on a DC level, with deterministic noise,
//! quantised to the ESP32's 12 bits. The host tests
//! (`tests/waveforms.rs`) and the RV32IMC run under QEMU
//! (`firmware/qemu-check`) build their inputs here, so both check the meter
//! against the same signals.

use core::f64::consts::{PI, SQRT_2};

/// Volts per code of the reference scaling: 230 V RMS peaks at 1500 codes.
pub const V_GAIN: f64 = 230.0 * SQRT_2 / 1500.0;
/// Amperes per code of the reference scaling: 10 A RMS peaks at 1500 codes.
pub const I_GAIN: f64 = 10.0 * SQRT_2 / 1500.0;

/// Deterministic noise: a 64-bit LCG (Knuth's MMIX constants), uniform in [-1, 1).
#[derive(Clone, Copy, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in [-1, 1).
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// One sinusoidal component: harmonic number, peak in codes, phase in radians.
#[derive(Clone, Copy, Debug)]
pub struct Tone {
    /// Multiple of the fundamental frequency.
    pub harmonic: f64,
    /// Peak amplitude in ADC codes.
    pub peak: f64,
    /// Phase in radians.
    pub phase: f64,
}

/// The fundamental with `peak` codes and `phase` radians.
pub fn tone(peak: f64, phase: f64) -> Tone {
    Tone {
        harmonic: 1.0,
        peak,
        phase,
    }
}

/// Fills `out` with a channel's codes sampled at `fs` Hz: DC level `mid`
/// plus `tones` at fundamental `freq`, uniform noise of ±`noise` codes,
/// rounded and clamped to 12 bits.
pub fn synth_into(
    out: &mut [u16],
    fs: f64,
    freq: f64,
    mid: f64,
    tones: &[Tone],
    noise: f64,
    rng: &mut Lcg,
) {
    for (n, code) in out.iter_mut().enumerate() {
        let t = n as f64 / fs;
        let ac: f64 = tones
            .iter()
            .map(|k| k.peak * libm::sin(2.0 * PI * k.harmonic * freq * t + k.phase))
            .sum();
        *code = libm::round(mid + ac + noise * rng.next()).clamp(0.0, 4095.0) as u16;
    }
}
