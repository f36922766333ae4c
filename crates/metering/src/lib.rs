//! # gridpow-metering: electrical readings from ADC sample blocks
//!
//! The meter firmware samples a voltage sensor (ZMPT101B) and a current
//! sensor (ACS712) as simultaneous pairs of raw ADC codes. This crate turns a
//! block of such pairs into a [`Measurement`]: RMS voltage and current,
//! active and apparent power, power factor and line frequency. An
//! [`EnergyRegister`] integrates active power into import and export energy
//! without drift, and [`WireUnits`] gives the protocol's integer units.
//!
//! It is `no_std`, allocates nothing, holds no `unsafe`, and never panics on
//! any input: bad input is a [`MeteringError`].
//!
//! ## Signal chain, per block
//! 1. **Validation**: equal lengths, 1..=[`MAX_BLOCK_LEN`] samples, codes
//!    within the ADC range; codes at either rail set
//!    [`Measurement::saturated`].
//! 2. **Frequency**: rising zero crossings of the voltage around the block
//!    mean, with hysteresis (see [`Config::hysteresis_codes`]), interpolated
//!    linearly between samples; the period is the least-squares slope of
//!    crossing time against crossing number.
//! 3. **Window**: the whole cycles between the first and last crossing (the
//!    whole block when there are fewer than two crossings).
//! 4. **DC removal**: the sensors sit at mid-rail; the window mean of each
//!    channel is removed exactly, via integer sums (`N·Σx² − (Σx)²`). Over
//!    whole cycles the mean is the DC offset alone, and the offset may drift
//!    from block to block without affecting anything.
//! 5. **Phase correction**: one channel is delayed by a fractional number of
//!    samples (linear interpolation, 1/256-sample steps) to cancel the
//!    sensors' different phase shifts ([`PhaseCorrection`]).
//! 6. **Calibration**: noise offsets removed in quadrature, gains applied
//!    ([`Calibration`]).
//!
//! ## Example
//! ```
//! use gridpow_metering::{Calibration, Config, EnergyRegister, Meter};
//!
//! # fn main() -> Result<(), gridpow_metering::MeteringError> {
//! let mut calibration = Calibration::UNITY;
//! calibration.voltage.gain = 0.2168; // V per code
//! calibration.current.gain = 0.00943; // A per code
//! let meter = Meter::new(Config::new(4000.0), calibration)?;
//!
//! // One 0.2 s block: 800 simultaneous pairs at 4 kHz.
//! let mut voltage = [0u16; 800];
//! let mut current = [0u16; 800];
//! for n in 0..800 {
//!     let s = (2.0 * std::f64::consts::PI * 50.0 * n as f64 / 4000.0).sin();
//!     voltage[n] = (2048.0 + 1500.0 * s) as u16;
//!     current[n] = (2048.0 + 1500.0 * s) as u16;
//! }
//! let m = meter.measure(&voltage, &current)?;
//! assert!((m.frequency_hz - 50.0).abs() < 0.01);
//! assert!(m.power_factor > 0.999);
//!
//! let mut energy = EnergyRegister::new();
//! energy.add(m.active_power_w, 200_000)?; // the block lasted 200 000 µs
//! let wire = m.to_wire();
//! assert_eq!(wire.frequency_mhz, 50_000);
//! # Ok(())
//! # }
//! ```
//!
//! The calibration procedure a technician follows is in `docs/metering.md`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod analysis;
mod config;
mod energy;
mod error;
mod measurement;
mod meter;
pub mod synthetic;

pub use analysis::RawReadings;
pub use config::{
    Calibration, ChannelCalibration, Config, PhaseCorrection, MAX_BLOCK_LEN, MAX_GAIN,
    MAX_PHASE_DELAY_SAMPLES,
};
pub use energy::EnergyRegister;
pub use error::{Channel, MeteringError};
pub use measurement::{Measurement, WireUnits};
pub use meter::{Meter, ReferenceLoad};
