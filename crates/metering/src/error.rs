//! The one error type of the crate, its variants grouped by cause: the sample
//! block handed in, the configuration or calibration, the inputs of a
//! calibration helper, and the energy register.
//!
//! Errors are small and `Copy` so firmware can store or log them without
//! allocation. `Display` is written by hand because `thiserror` needs `std`.

use core::fmt;

/// One of the two ADC channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The voltage sensor (for example a ZMPT101B).
    Voltage,
    /// The current sensor (for example an ACS712).
    Current,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Voltage => "voltage",
            Channel::Current => "current",
        })
    }
}

/// Why a metering call refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeteringError {
    // --- The sample block ---------------------------------------------------
    /// The sample block holds no samples.
    EmptyBlock,
    /// The voltage and current blocks differ in length; the samples must be
    /// simultaneous pairs.
    LengthMismatch {
        /// Number of voltage samples.
        voltage: usize,
        /// Number of current samples.
        current: usize,
    },
    /// The block is too short to hold the phase-correction delay plus a few
    /// samples to measure.
    BlockTooShort {
        /// Samples given.
        len: usize,
        /// Fewest samples accepted with the configured phase delay.
        min: usize,
    },
    /// The block is longer than [`crate::MAX_BLOCK_LEN`], beyond which the
    /// 64-bit integer sums could overflow.
    BlockTooLong {
        /// Samples given.
        len: usize,
        /// Most samples accepted.
        max: usize,
    },
    /// A sample is above the largest code of the configured ADC resolution,
    /// which a working ADC cannot produce (a driver or DMA framing bug).
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
    InvalidSampleRate,
    /// The ADC resolution is outside 1..=16 bits.
    InvalidAdcBits {
        /// The configured resolution.
        bits: u8,
    },
    /// The nominal line frequency is not finite, not above zero, or not below
    /// half the sample rate (Nyquist).
    InvalidNominalFrequency,
    /// A calibration value is not finite or outside its range (gains must be
    /// finite with magnitude at most [`crate::MAX_GAIN`], offsets finite and
    /// non-negative).
    InvalidCalibration {
        /// Which value: `"voltage gain"`, `"current offset"`, `"phase"`, ...
        field: &'static str,
    },
    /// The phase correction asks for a delay longer than
    /// [`crate::MAX_PHASE_DELAY_SAMPLES`] samples.
    PhaseDelayTooLarge {
        /// The largest delay accepted, in whole samples.
        max_samples: u32,
    },

    // --- Calibration helpers -------------------------------------------------
    /// The reference values are not finite, or the true voltage or current is
    /// not above zero.
    InvalidReference,
    /// A channel carried no signal above its noise offset during the
    /// reference measurement, so no gain can be derived from it.
    SignalTooSmall {
        /// The silent channel.
        channel: Channel,
    },

    // --- Energy register -----------------------------------------------------
    /// The power handed to the energy register is NaN or infinite.
    InvalidPower,
}

impl fmt::Display for MeteringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MeteringError::EmptyBlock => f.write_str("sample block is empty"),
            MeteringError::LengthMismatch { voltage, current } => write!(
                f,
                "voltage block has {voltage} samples but current block has {current}"
            ),
            MeteringError::BlockTooShort { len, min } => {
                write!(f, "sample block has {len} samples, at least {min} needed")
            }
            MeteringError::BlockTooLong { len, max } => {
                write!(f, "sample block has {len} samples, at most {max} accepted")
            }
            MeteringError::SampleOutOfRange {
                channel,
                index,
                code,
                max,
            } => write!(
                f,
                "{channel} sample {index} is {code}, above the ADC maximum {max}"
            ),
            MeteringError::InvalidSampleRate => {
                f.write_str("sample rate must be finite and above zero")
            }
            MeteringError::InvalidAdcBits { bits } => {
                write!(f, "ADC resolution of {bits} bits is outside 1..=16")
            }
            MeteringError::InvalidNominalFrequency => f.write_str(
                "nominal frequency must be finite, above zero and below half the sample rate",
            ),
            MeteringError::InvalidCalibration { field } => {
                write!(f, "calibration {field} is not finite or out of range")
            }
            MeteringError::PhaseDelayTooLarge { max_samples } => {
                write!(f, "phase correction delay exceeds {max_samples} samples")
            }
            MeteringError::InvalidReference => f.write_str(
                "reference voltage and current must be finite and above zero, phase finite",
            ),
            MeteringError::SignalTooSmall { channel } => write!(
                f,
                "{channel} channel has no signal above its offset; cannot derive a gain"
            ),
            MeteringError::InvalidPower => f.write_str("power is NaN or infinite"),
        }
    }
}

impl core::error::Error for MeteringError {}
