//! Plausibility rules: what a meter's tag cannot vouch for. A tag proves the
//! meter sent a reading, not that the physics adds up; a faulty sensor or a
//! tampered-with meter still produces authentic readings.
//!
//! - active power versus `V·I·PF` beyond tolerance,
//! - voltage outside nominal ± tolerance,
//! - the energy register going backwards,
//! - a meter silent for N expected intervals (checked by the store's sweep),
//! - a reading flagged by the meter itself as a sensor fault.

use gridpow_proto::wire::Reading;
use serde::{Deserialize, Serialize};

/// Kinds of alert the server raises; the string is the `kind` column and API field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// |P − V·I·PF| beyond tolerance.
    PowerMismatch,
    /// Voltage outside nominal ± tolerance.
    VoltageOutOfRange,
    /// The energy register decreased.
    EnergyBackwards,
    /// The meter flagged a sensor fault or saturation.
    SensorFault,
    /// No reading for `silent_after_intervals` expected intervals.
    Silent,
    /// A block was stored before its parent (cleared when the parent arrives).
    Gap,
    /// Two different blocks claim one place in a relay's chain.
    Fork,
    /// A meter sent two different readings under one (boot epoch, sequence
    /// number), both with valid end-to-end tags (§9.5): a meter bug or a
    /// stolen meter key. Both blocks stay in the ledger as evidence.
    Equivocation,
}

impl AlertKind {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PowerMismatch => "power_mismatch",
            AlertKind::VoltageOutOfRange => "voltage_out_of_range",
            AlertKind::EnergyBackwards => "energy_backwards",
            AlertKind::SensorFault => "sensor_fault",
            AlertKind::Silent => "silent",
            AlertKind::Gap => "gap",
            AlertKind::Fork => "fork",
            AlertKind::Equivocation => "equivocation",
        }
    }

    /// `critical` for a fork (the relay's key signed two histories: treat the
    /// key as compromised) and an equivocation (the same for a meter's key),
    /// `warning` otherwise.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::Fork | AlertKind::Equivocation => "critical",
            _ => "warning",
        }
    }

    /// The kind named by `s` (the `kind` column), if known.
    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// All kinds, for metrics.
    pub const ALL: [AlertKind; 8] = [
        AlertKind::PowerMismatch,
        AlertKind::VoltageOutOfRange,
        AlertKind::EnergyBackwards,
        AlertKind::SensorFault,
        AlertKind::Silent,
        AlertKind::Gap,
        AlertKind::Fork,
        AlertKind::Equivocation,
    ];
}

/// One rule a reading broke.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    /// Measured active power differs from `V·I·PF` by more than the tolerance.
    PowerMismatch {
        /// Measured active power, W.
        measured_w: f64,
        /// `V·I·PF`, W.
        expected_w: f64,
        /// Allowed difference, W.
        allowed_w: f64,
    },
    /// Voltage outside the allowed band.
    VoltageOutOfRange {
        /// Measured voltage, V.
        volts: f64,
        /// Lowest allowed, V.
        low: f64,
        /// Highest allowed, V.
        high: f64,
    },
    /// The energy register is lower than at an earlier reading.
    EnergyBackwards {
        /// The earlier register value, mWh.
        before_mwh: u64,
        /// This reading's register value, mWh.
        now_mwh: u64,
    },
    /// The meter itself flagged a sensor fault.
    SensorFault,
}

impl Finding {
    /// The alert kind this finding raises.
    pub fn kind(&self) -> AlertKind {
        match self {
            Finding::PowerMismatch { .. } => AlertKind::PowerMismatch,
            Finding::VoltageOutOfRange { .. } => AlertKind::VoltageOutOfRange,
            Finding::EnergyBackwards { .. } => AlertKind::EnergyBackwards,
            Finding::SensorFault => AlertKind::SensorFault,
        }
    }

    /// A short sentence for the alert's message.
    pub fn describe(&self) -> String {
        match self {
            Finding::PowerMismatch { measured_w, expected_w, allowed_w } => format!(
                "active power {measured_w:.1} W differs from V·I·PF = {expected_w:.1} W by more than {allowed_w:.1} W"
            ),
            Finding::VoltageOutOfRange { volts, low, high } => {
                format!("voltage {volts:.2} V outside {low:.1}–{high:.1} V")
            }
            Finding::EnergyBackwards { before_mwh, now_mwh } => {
                format!("energy register went backwards from {before_mwh} mWh to {now_mwh} mWh")
            }
            Finding::SensorFault => "meter flagged a sensor fault or saturation".into(),
        }
    }
}

/// This file, whose doc comments document [`PlausibilityConfig`]'s fields
/// in the server's example configuration.
pub const SOURCE: &str = include_str!("plausibility.rs");

/// Plausibility rules: physics the meter's tag cannot vouch for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlausibilityConfig {
    /// Nominal line voltage, volts.
    pub nominal_voltage_v: f64,
    /// Allowed relative deviation from nominal (0.10 = ±10 %).
    pub voltage_tolerance: f64,
    /// Allowed |P − V·I·PF| as a fraction of the apparent power V·I …
    pub power_tolerance: f64,
    /// … plus this absolute slack, watts (covers rounding at small loads).
    pub power_slack_w: f64,
    /// The meters' reporting interval, seconds.
    pub expected_interval_s: u64,
    /// A meter is reported silent after this many intervals without a reading.
    pub silent_after_intervals: u32,
}

impl Default for PlausibilityConfig {
    fn default() -> Self {
        PlausibilityConfig {
            nominal_voltage_v: 230.0,
            voltage_tolerance: 0.10,
            power_tolerance: 0.05,
            power_slack_w: 5.0,
            expected_interval_s: 10,
            silent_after_intervals: 5,
        }
    }
}

impl PlausibilityConfig {
    /// Milliseconds of silence after which a meter is reported.
    pub fn silent_after_ms(&self) -> u64 {
        self.expected_interval_s
            .saturating_mul(u64::from(self.silent_after_intervals))
            .saturating_mul(1000)
    }
}

/// The voltage band a meter should stay in, centivolts inclusive:
/// `nominal_voltage_v ± voltage_tolerance` (EN 50160's 230 V ± 10 % by
/// default). The one band the alert rule, the fleet views' SQL and the
/// dashboard judge voltages against, in the readings' own unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VoltageBand {
    /// Lowest in-band voltage, cV.
    pub low_cv: i64,
    /// Highest in-band voltage, cV.
    pub high_cv: i64,
}

impl VoltageBand {
    /// The band `nominal ± tolerance` (tolerance relative: 0.10 = ±10 %).
    pub fn new(nominal_v: f64, tolerance: f64) -> VoltageBand {
        VoltageBand {
            low_cv: (nominal_v * (1.0 - tolerance) * 100.0).round() as i64,
            high_cv: (nominal_v * (1.0 + tolerance) * 100.0).round() as i64,
        }
    }

    /// The band of the plausibility rules.
    pub fn of(cfg: &PlausibilityConfig) -> VoltageBand {
        VoltageBand::new(cfg.nominal_voltage_v, cfg.voltage_tolerance)
    }

    /// Whether `voltage_cv` is inside the band.
    pub fn contains(&self, voltage_cv: u16) -> bool {
        (self.low_cv..=self.high_cv).contains(&i64::from(voltage_cv))
    }
}

/// The rules with their thresholds.
#[derive(Clone, Debug)]
pub struct Rules {
    cfg: PlausibilityConfig,
    band: VoltageBand,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new(PlausibilityConfig::default())
    }
}

impl Rules {
    /// Rules with the configured thresholds.
    pub fn new(cfg: PlausibilityConfig) -> Self {
        let band = VoltageBand::of(&cfg);
        Rules { cfg, band }
    }

    /// The configuration.
    pub fn config(&self) -> &PlausibilityConfig {
        &self.cfg
    }

    /// Checks one reading on its own; calls `found` for each rule it breaks.
    /// A reading the meter flagged as a sensor fault is reported as such and
    /// not judged further (its values are known to be unreliable).
    pub fn check_reading(&self, r: &Reading, mut found: impl FnMut(Finding)) {
        if r.flags & Reading::FLAG_SENSOR_FAULT != 0 {
            found(Finding::SensorFault);
            return;
        }
        if !self.band.contains(r.voltage_cv) {
            found(Finding::VoltageOutOfRange {
                volts: r.voltage_v(),
                low: self.band.low_cv as f64 / 100.0,
                high: self.band.high_cv as f64 / 100.0,
            });
        }
        let apparent = r.apparent_power_va();
        let expected_w = apparent * r.power_factor();
        let measured_w = r.active_power_w();
        let allowed_w = self.cfg.power_tolerance * apparent + self.cfg.power_slack_w;
        if (measured_w - expected_w).abs() > allowed_w {
            found(Finding::PowerMismatch {
                measured_w,
                expected_w,
                allowed_w,
            });
        }
    }

    /// Checks that the energy register did not decrease from an earlier reading
    /// (`before`) of the same meter to a later one (`now`).
    pub fn check_energy(&self, before_mwh: u64, now_mwh: u64) -> Option<Finding> {
        (now_mwh < before_mwh).then_some(Finding::EnergyBackwards {
            before_mwh,
            now_mwh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(voltage_cv: u16, current_ma: u32, power_dw: i32, pf_e4: i16) -> Reading {
        Reading {
            timestamp_ms: 1_700_000_000_000,
            voltage_cv,
            current_ma,
            active_power_dw: power_dw,
            power_factor_e4: pf_e4,
            frequency_mhz: 50_000,
            energy_mwh: 1,
            flags: 0,
        }
    }

    fn findings(rules: &Rules, r: &Reading) -> Vec<Finding> {
        let mut v = Vec::new();
        rules.check_reading(r, |f| v.push(f));
        v
    }

    #[test]
    fn consistent_reading_breaks_no_rule() {
        // 230 V × 10 A × 0.95 = 2185 W.
        let r = reading(23000, 10_000, 21_850, 9500);
        assert_eq!(findings(&Rules::default(), &r), vec![]);
        // Export: negative power with negative power factor.
        let r = reading(23000, 10_000, -21_850, -9500);
        assert_eq!(findings(&Rules::default(), &r), vec![]);
    }

    #[test]
    fn the_band_edges_are_in_band_for_the_alert_and_the_fleet_views_alike() {
        let band = VoltageBand::of(&PlausibilityConfig::default());
        assert_eq!((band.low_cv, band.high_cv), (20_700, 25_300));
        for (cv, inside) in [
            (20_699, false),
            (20_700, true),
            (25_300, true),
            (25_301, false),
        ] {
            assert_eq!(band.contains(cv), inside, "{cv} cV");
            // No load, so only the voltage rule can fire.
            let r = reading(cv, 0, 0, 10_000);
            assert_eq!(
                findings(&Rules::default(), &r).is_empty(),
                inside,
                "{cv} cV"
            );
        }
    }

    #[test]
    fn power_far_from_v_times_i_times_pf_is_reported() {
        // Claims 3000 W where 230 V × 10 A × 0.95 = 2185 W; allowed 5 % of 2300 VA + 5 W = 120 W.
        let r = reading(23000, 10_000, 30_000, 9500);
        let f = findings(&Rules::default(), &r);
        assert_eq!(f.len(), 1);
        match &f[0] {
            Finding::PowerMismatch {
                measured_w,
                expected_w,
                allowed_w,
            } => {
                assert!((measured_w - 3000.0).abs() < 1e-9);
                assert!((expected_w - 2185.0).abs() < 1e-6);
                assert!((allowed_w - 120.0).abs() < 1e-6);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Just inside the tolerance is fine.
        let r = reading(23000, 10_000, 21_850 + 1_190, 9500);
        assert!(findings(&Rules::default(), &r).is_empty());
    }

    #[test]
    fn voltage_outside_ten_percent_of_nominal_is_reported() {
        let rules = Rules::default();
        // 260 V at no load: only the voltage rule fires.
        let f = findings(&rules, &reading(26000, 0, 0, 10000));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind(), AlertKind::VoltageOutOfRange);
        assert!(
            findings(&rules, &reading(25300, 0, 0, 10000)).is_empty(),
            "253 V is the upper limit"
        );
        assert_eq!(
            findings(&rules, &reading(20600, 0, 0, 10000))[0].kind(),
            AlertKind::VoltageOutOfRange
        );
    }

    #[test]
    fn energy_register_going_backwards_is_reported_and_standing_still_is_not() {
        let rules = Rules::default();
        assert_eq!(
            rules.check_energy(1000, 999),
            Some(Finding::EnergyBackwards {
                before_mwh: 1000,
                now_mwh: 999
            })
        );
        assert_eq!(rules.check_energy(1000, 1000), None);
        assert_eq!(rules.check_energy(1000, 5000), None);
    }

    #[test]
    fn sensor_fault_flag_is_reported_instead_of_judging_the_values() {
        let mut r = reading(0, 0, 99_999, 0);
        r.flags = Reading::FLAG_SENSOR_FAULT;
        assert_eq!(findings(&Rules::default(), &r), vec![Finding::SensorFault]);
    }
}
