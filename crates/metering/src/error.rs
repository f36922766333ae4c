//! The one error type of the crate, its variants grouped by cause: the sample
//! block handed in, the configuration or calibration, the inputs of a
//! calibration helper, and the energy register.
//!
//! Errors are small and `Copy` so firmware can store or log them without
//! allocation. Messages come from `thiserror` (without `std`).

use core::fmt;

/// One of the two ADC channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The voltage sensor (for example a ZMPT101B).
    Voltage,
    /// The current sensor (for example an ACS712).
    Current,
}

// Written by hand: a channel is a name inside messages, not an error, so it
// does not derive `thiserror::Error`.
impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Voltage => "voltage",
            Channel::Current => "current",
        })
    }
}

/// Why a metering call refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeteringError {
    // --- The sample block ---------------------------------------------------
    /// The sample block holds no samples.
    #[error("sample block is empty")]
    EmptyBlock,
    /// The voltage and current blocks differ in length; the samples must be
    /// simultaneous pairs.
    #[error("voltage block has {voltage} samples but current block has {current}")]
    LengthMismatch {
        /// Number of voltage samples.
        voltage: usize,
        /// Number of current samples.
        current: usize,
    },
    /// The block is too short to hold the phase-correction delay plus a few
    /// samples to measure.
    #[error("sample block has {len} samples, at least {min} needed")]
    BlockTooShort {
        /// Samples given.
        len: usize,
        /// Fewest samples accepted with the configured phase delay.
        min: usize,
    },
    /// The block is longer than [`crate::MAX_BLOCK_LEN`], beyond which the
    /// 64-bit integer sums could overflow.
    #[error("sample block has {len} samples, at most {max} accepted")]
    BlockTooLong {
        /// Samples given.
        len: usize,
        /// Most samples accepted.
        max: usize,
    },
    /// A sample is above the largest code of the configured ADC resolution,
    /// which a working ADC cannot produce (a driver or DMA framing bug).
    #[error("{channel} sample {index} is {code}, above the ADC maximum {max}")]
    SampleOutOfRange {
        /// The channel holding the sample.
        channel: Channel,
        /// Index of the first such sample.
        index: usize,
        /// Its value.
        code: u16,
        /// The largest valid code.
        max: u16,
    },

    // --- Configuration and calibration ----------------------------------------
    /// The sample rate is not a finite number above zero.
    #[error("sample rate must be finite and above zero")]
    InvalidSampleRate,
    /// The ADC resolution is outside 1..=16 bits.
    #[error("ADC resolution of {bits} bits is outside 1..=16")]
    InvalidAdcBits {
        /// The configured resolution.
        bits: u8,
    },
    /// The nominal line frequency is not finite, not above zero, or not below
    /// half the sample rate (Nyquist).
    #[error("nominal frequency must be finite, above zero and below half the sample rate")]
    InvalidNominalFrequency,
    /// A calibration value is not finite or outside its range (gains must be
    /// finite with magnitude at most [`crate::MAX_GAIN`], offsets finite and
    /// non-negative).
    #[error("calibration {field} is not finite or out of range")]
    InvalidCalibration {
        /// Which value: `"voltage gain"`, `"current offset"`, `"phase"`, ...
        field: &'static str,
    },
    /// The phase correction asks for a delay longer than
    /// [`crate::MAX_PHASE_DELAY_SAMPLES`] samples.
    #[error("phase correction delay exceeds {max_samples} samples")]
    PhaseDelayTooLarge {
        /// The largest delay accepted, in whole samples.
        max_samples: u32,
    },

    // --- Calibration helpers -------------------------------------------------
    /// The reference values are not finite, or the true voltage or current is
    /// not above zero.
    #[error("reference voltage and current must be finite and above zero, phase finite")]
    InvalidReference,
    /// A channel carried no signal above its noise offset during the
    /// reference measurement, so no gain can be derived from it.
    #[error("{channel} channel has no signal above its offset; cannot derive a gain")]
    SignalTooSmall {
        /// The silent channel.
        channel: Channel,
    },

    // --- Energy register -----------------------------------------------------
    /// The power handed to the energy register is NaN or infinite.
    #[error("power is NaN or infinite")]
    InvalidPower,
}
