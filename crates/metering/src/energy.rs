//! Drift-free energy registers: imported and exported energy in whole mWh,
//! each with an exact integer remainder in µJ.

use crate::MeteringError;

/// Micro-joules in one milliwatt-hour (1 mWh = 3.6 J).
const UJ_PER_MWH: u64 = 3_600_000;

/// One direction of energy flow: whole mWh plus the µJ not yet making one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
struct Accumulator {
    mwh: u64,
    /// Always below [`UJ_PER_MWH`].
    rem_uj: u32,
}

impl Accumulator {
    fn add_uj(&mut self, uj: u64) {
        // Integer carry: nothing is ever rounded away, so a day of one-second
        // steps sums exactly what each step measured.
        let rem = u64::from(self.rem_uj) + uj % UJ_PER_MWH;
        let carry = uj / UJ_PER_MWH + rem / UJ_PER_MWH;
        self.mwh = self.mwh.saturating_add(carry);
        // The remainder of a division by 3.6e6 fits u32.
        self.rem_uj = u32::try_from(rem % UJ_PER_MWH).unwrap_or(0);
    }
}

/// Energy registers fed with power and elapsed time.
///
/// Import (positive active power, energy taken from the grid) and export
/// (negative active power, energy fed into it) are counted separately, each
/// monotonic: an export never lowers the import register. This is how
/// billing meters keep them, and the wire's energy field carries the import
/// register ([`EnergyRegister::total_mwh`]).
///
/// Each step's energy `|P|·Δt` is rounded once to a whole µJ and added to an
/// integer register, so there is no floating-point accumulation and no drift:
/// the error after a day of one-second steps is at most 86 400 × 0.5 µJ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EnergyRegister {
    import: Accumulator,
    export: Accumulator,
}

impl EnergyRegister {
    /// Empty registers.
    pub const fn new() -> EnergyRegister {
        EnergyRegister {
            import: Accumulator { mwh: 0, rem_uj: 0 },
            export: Accumulator { mwh: 0, rem_uj: 0 },
        }
    }

    /// Registers restored from persistent storage (after a restart), with no
    /// fraction of a mWh pending.
    pub const fn with_totals(import_mwh: u64, export_mwh: u64) -> EnergyRegister {
        EnergyRegister {
            import: Accumulator {
                mwh: import_mwh,
                rem_uj: 0,
            },
            export: Accumulator {
                mwh: export_mwh,
                rem_uj: 0,
            },
        }
    }

    /// Adds `active_power_w` held for `duration_us` microseconds: to the
    /// import register when positive, to the export register when negative.
    ///
    /// NaN or infinite power is refused with [`MeteringError::InvalidPower`]
    /// and leaves the registers unchanged. Registers saturate at `u64::MAX`
    /// mWh rather than wrap.
    pub fn add(&mut self, active_power_w: f32, duration_us: u64) -> Result<(), MeteringError> {
        if !active_power_w.is_finite() {
            return Err(MeteringError::InvalidPower);
        }
        // W·µs = µJ. f64 holds the product of an f32 power and a duration of
        // up to 2^53 µs without losing a µJ at realistic magnitudes; the `as`
        // cast saturates for absurd ones.
        let uj = f64::from(active_power_w.abs()) * duration_us as f64 + 0.5;
        let uj = uj as u64;
        if active_power_w >= 0.0 {
            self.import.add_uj(uj);
        } else {
            self.export.add_uj(uj);
        }
        Ok(())
    }

    /// The imported-energy register in mWh: monotonic, never decreasing.
    /// This is the value the protocol's `energy_mwh` field carries.
    pub fn total_mwh(&self) -> u64 {
        self.import.mwh
    }

    /// Imported energy in mWh (same as [`EnergyRegister::total_mwh`]).
    pub fn import_mwh(&self) -> u64 {
        self.import.mwh
    }

    /// Exported energy in mWh: monotonic, never decreasing.
    pub fn export_mwh(&self) -> u64 {
        self.export.mwh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kilowatt_for_an_hour_is_one_million_mwh() -> Result<(), MeteringError> {
        let mut r = EnergyRegister::new();
        for _ in 0..3600 {
            r.add(1000.0, 1_000_000)?;
        }
        assert_eq!(r.total_mwh(), 1_000_000);
        assert_eq!(r.export_mwh(), 0);
        Ok(())
    }

    #[test]
    fn sub_mwh_steps_carry_into_whole_mwh() -> Result<(), MeteringError> {
        // 1 W for 1 ms is 1000 µJ; 3600 of them make exactly 1 mWh.
        let mut r = EnergyRegister::new();
        for _ in 0..3599 {
            r.add(1.0, 1000)?;
        }
        assert_eq!(r.total_mwh(), 0);
        r.add(1.0, 1000)?;
        assert_eq!(r.total_mwh(), 1);
        Ok(())
    }

    #[test]
    fn export_never_lowers_the_import_register() -> Result<(), MeteringError> {
        let mut r = EnergyRegister::with_totals(500, 7);
        r.add(3600.0, 1_000_000)?; // +1000 mWh import
        r.add(-7200.0, 1_000_000)?; // +2000 mWh export
        assert_eq!(r.import_mwh(), 1500);
        assert_eq!(r.export_mwh(), 2007);
        Ok(())
    }

    #[test]
    fn non_finite_power_is_refused_and_changes_nothing() {
        let mut r = EnergyRegister::with_totals(42, 0);
        assert_eq!(r.add(f32::NAN, 1), Err(MeteringError::InvalidPower));
        assert_eq!(
            r.add(f32::NEG_INFINITY, 1),
            Err(MeteringError::InvalidPower)
        );
        assert_eq!(r, EnergyRegister::with_totals(42, 0));
    }

    #[test]
    fn huge_steps_saturate_instead_of_wrapping() -> Result<(), MeteringError> {
        let mut r = EnergyRegister::with_totals(u64::MAX - 1, 0);
        r.add(f32::MAX, u64::MAX)?;
        assert_eq!(r.total_mwh(), u64::MAX);
        r.add(f32::MAX, u64::MAX)?;
        assert_eq!(r.total_mwh(), u64::MAX);
        Ok(())
    }
}
