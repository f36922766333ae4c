//! The metering DSP (`gridpow_metering`) on synthetic 12-bit waveforms with
//! exact answers, in soft float on the 32-bit CPU; a subset of
//! `crates/metering/tests/waveforms.rs` with the same tolerances, on the same
//! signals (`gridpow_metering::synthetic`).

use core::f64::consts::{PI, SQRT_2};

use gridpow_metering::synthetic::{synth_into, tone, Lcg, Tone, I_GAIN, V_GAIN};
use gridpow_metering::{
    Calibration, Config, EnergyRegister, Measurement, Meter, MeteringError, PhaseCorrection,
};

use crate::harness::{Failed, Outcome};

tests![
    pure_sine_reads_230_volts_10_amps_and_unity_power_factor,
    inductive_load_power_factor_is_cos_phi,
    exported_power_is_negative_with_negative_power_factor,
    harmonic_current_rms_follows_parseval,
    dc_offset_is_removed_wherever_the_sensor_sits,
    frequency_is_within_10_mhz_at_49_5_50_50_5_and_60_hz,
    quantisation_and_noise_keep_readings_within_tolerance,
    mains_off_reads_zero_frequency_without_error,
    phase_correction_in_degrees_cancels_a_known_sensor_lead,
    energy_register_integrates_an_hour_without_drift,
];

const FS: f64 = 4000.0;
/// One second of samples per block.
const BLOCK: usize = 4000;

/// A channel's codes: DC level plus tones at `freq`, uniform noise of
/// ±`noise` codes, rounded and clamped to 12 bits.
fn synth(freq: f64, mid: f64, tones: &[Tone], noise: f64, rng: &mut Lcg) -> [u16; BLOCK] {
    let mut out = [0u16; BLOCK];
    synth_into(&mut out, FS, freq, mid, tones, noise, rng);
    out
}

fn calibrated(config: Config) -> Result<Meter, MeteringError> {
    let mut cal = Calibration::UNITY;
    cal.voltage.gain = V_GAIN as f32;
    cal.current.gain = I_GAIN as f32;
    Meter::new(config, cal)
}

fn rel_err(measured: f32, truth: f64) -> f64 {
    libm::fabs(f64::from(measured) - truth) / libm::fabs(truth)
}

/// Fails unless `measured` is within `tolerance` (relative) of `truth`.
macro_rules! check_within {
    ($what:expr, $measured:expr, $truth:expr, $tolerance:expr) => {
        let (m, t, tol) = ($measured, $truth, $tolerance);
        check!(
            rel_err(m, t) <= tol,
            "{}: measured {}, expected {}, error {:.4} % > {:.4} %",
            $what,
            m,
            t,
            rel_err(m, t) * 100.0,
            tol * 100.0
        );
    };
}

fn measured(r: Result<Measurement, MeteringError>) -> Result<Measurement, Failed> {
    r.map_err(|e| {
        crate::harness::report(file!(), line!(), format_args!("metering error: {e:?}"));
        Failed
    })
}

/// Voltage and current at 50 Hz with the current lagging by `lag` radians.
fn load(lag: f64, noise: f64, seed: u64) -> Result<Measurement, Failed> {
    let mut rng = Lcg(seed);
    let v = synth(50.0, 2048.0, &[tone(1500.0, 0.0)], noise, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(1500.0, -lag)], noise, &mut rng);
    measured(calibrated(Config::new(FS as f32)).and_then(|m| m.measure(&v, &i)))
}

fn pure_sine_reads_230_volts_10_amps_and_unity_power_factor() -> Outcome {
    let m = load(0.0, 0.0, 1)?;
    check_within!("voltage", m.voltage_v, 230.0, 0.001);
    check_within!("current", m.current_a, 10.0, 0.001);
    check_within!("active power", m.active_power_w, 2300.0, 0.001);
    check_within!("apparent power", m.apparent_power_va, 2300.0, 0.001);
    check!(m.power_factor > 0.9995, "pf {}", m.power_factor);
    check!(libm::fabsf(m.frequency_hz - 50.0) < 0.01, "f {}", m.frequency_hz);
    check!(!m.saturated);
    let w = m.to_wire();
    check!(w.voltage_cv.abs_diff(23_000) <= 23, "{} cV", w.voltage_cv);
    check!(w.frequency_mhz.abs_diff(50_000) <= 10, "{} mHz", w.frequency_mhz);
    Ok(())
}

fn inductive_load_power_factor_is_cos_phi() -> Outcome {
    let phi = libm::acos(0.8); // 36.87° lagging
    let m = load(phi, 0.0, 2)?;
    check_within!("active power", m.active_power_w, 230.0 * 10.0 * 0.8, 0.005);
    check!(libm::fabsf(m.power_factor - 0.8) < 0.002, "pf {}", m.power_factor);
    check_within!("apparent power", m.apparent_power_va, 2300.0, 0.001);
    Ok(())
}

fn exported_power_is_negative_with_negative_power_factor() -> Outcome {
    let m = load(PI, 0.0, 4)?;
    check_within!("active power", m.active_power_w, -2300.0, 0.001);
    check!(m.power_factor < -0.9995, "pf {}", m.power_factor);
    check!(m.to_wire().active_power_dw < 0);
    Ok(())
}

fn harmonic_current_rms_follows_parseval() -> Outcome {
    // Fundamental 1200 codes peak lagging 20°, 3rd at 30 %, 5th at 15 %.
    let (p1, p3, p5) = (1200.0, 360.0, 180.0);
    let lag = 20f64.to_radians();
    let current = [
        tone(p1, -lag),
        Tone {
            harmonic: 3.0,
            peak: p3,
            phase: 0.7,
        },
        Tone {
            harmonic: 5.0,
            peak: p5,
            phase: -1.1,
        },
    ];
    let mut rng = Lcg(5);
    let v = synth(50.0, 2048.0, &[tone(1500.0, 0.0)], 1.0, &mut rng);
    let i = synth(50.0, 2048.0, &current, 1.0, &mut rng);
    let m = measured(calibrated(Config::new(FS as f32)).and_then(|m| m.measure(&v, &i)))?;

    let i_rms = I_GAIN * libm::sqrt((p1 * p1 + p3 * p3 + p5 * p5) / 2.0);
    let i1_rms = I_GAIN * p1 / SQRT_2;
    let p = 230.0 * i1_rms * libm::cos(lag);
    check_within!("current", m.current_a, i_rms, 0.002);
    check_within!("active power", m.active_power_w, p, 0.005);
    check!(
        libm::fabs(f64::from(m.power_factor) - p / (230.0 * i_rms)) < 0.003,
        "pf {}",
        m.power_factor
    );
    check!(libm::fabsf(m.frequency_hz - 50.0) < 0.01);
    Ok(())
}

fn dc_offset_is_removed_wherever_the_sensor_sits() -> Outcome {
    let lag = 0.3;
    for (v_mid, i_mid) in [(2048.0, 2048.0), (2048.0, 1900.0), (2100.0, 2300.0)] {
        let mut rng = Lcg(6);
        let v = synth(50.0, v_mid, &[tone(1500.0, 0.0)], 0.0, &mut rng);
        let i = synth(50.0, i_mid, &[tone(1000.0, -lag)], 0.0, &mut rng);
        let m = measured(calibrated(Config::new(FS as f32)).and_then(|m| m.measure(&v, &i)))?;
        check_within!("voltage", m.voltage_v, 230.0, 0.001);
        check_within!("current", m.current_a, 10.0 * 1000.0 / 1500.0, 0.001);
        check_within!(
            "active power",
            m.active_power_w,
            230.0 * 10.0 * 1000.0 / 1500.0 * libm::cos(lag),
            0.002
        );
    }
    Ok(())
}

fn measure_frequency(freq: f64, nominal: f32) -> Result<Measurement, Failed> {
    let mut rng = Lcg(freq.to_bits());
    // Noise of ±3 codes on top of 12-bit quantisation jitters every crossing.
    let v = synth(freq, 2048.0, &[tone(1500.0, 0.4)], 3.0, &mut rng);
    let i = synth(freq, 2048.0, &[tone(1500.0, 0.1)], 3.0, &mut rng);
    let config = Config {
        nominal_frequency_hz: nominal,
        ..Config::new(FS as f32)
    };
    measured(calibrated(config).and_then(|m| m.measure(&v, &i)))
}

fn frequency_is_within_10_mhz_at_49_5_50_50_5_and_60_hz() -> Outcome {
    for (f, nominal) in [(49.5, 50.0), (50.0, 50.0), (50.5, 50.0), (60.0, 60.0)] {
        let m = measure_frequency(f, nominal)?;
        check!(
            libm::fabs(f64::from(m.frequency_hz) - f) < 0.01,
            "{f} Hz read as {}",
            m.frequency_hz
        );
        check_within!("voltage off nominal frequency", m.voltage_v, 230.0, 0.001);
    }
    Ok(())
}

fn quantisation_and_noise_keep_readings_within_tolerance() -> Outcome {
    // ±8 codes of uniform noise on each channel on top of 12-bit rounding, PF 0.8.
    let m = load(libm::acos(0.8), 8.0, 8)?;
    check_within!("voltage", m.voltage_v, 230.0, 0.001);
    check_within!("current", m.current_a, 10.0, 0.001);
    check_within!("active power", m.active_power_w, 1840.0, 0.005);
    check!(libm::fabsf(m.frequency_hz - 50.0) < 0.01, "{}", m.frequency_hz);
    Ok(())
}

fn mains_off_reads_zero_frequency_without_error() -> Outcome {
    let mut rng = Lcg(9);
    let v = synth(50.0, 2048.0, &[], 4.0, &mut rng);
    let i = synth(50.0, 2048.0, &[], 4.0, &mut rng);
    let m = measured(calibrated(Config::new(FS as f32)).and_then(|m| m.measure(&v, &i)))?;
    check_eq!(m.frequency_hz, 0.0);
    check!(m.voltage_v < 1.0, "{}", m.voltage_v);
    Ok(())
}

fn phase_correction_in_degrees_cancels_a_known_sensor_lead() -> Outcome {
    // The voltage sensor leads by 4°: uncorrected, a PF 0.8 load reads 5.5 % low.
    let phi = libm::acos(0.8);
    let lead = 4f64.to_radians();
    let mut rng = Lcg(14);
    let v = synth(50.0, 2048.0, &[tone(1500.0, lead)], 2.0, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(1500.0, -phi)], 2.0, &mut rng);

    let uncorrected =
        measured(calibrated(Config::new(FS as f32)).and_then(|m| m.measure(&v, &i)))?;
    check!(rel_err(uncorrected.active_power_w, 1840.0) > 0.05);

    let mut meter = check_ok!(calibrated(Config::new(FS as f32)));
    let mut cal = *meter.calibration();
    cal.phase = PhaseCorrection::Degrees(4.0);
    check_ok!(meter.set_calibration(cal));
    let m = measured(meter.measure(&v, &i))?;
    check_within!("active power", m.active_power_w, 1840.0, 0.005);
    check!(libm::fabsf(m.power_factor - 0.8) < 0.003, "pf {}", m.power_factor);
    Ok(())
}

fn energy_register_integrates_an_hour_without_drift() -> Outcome {
    // 2300 W for 3600 one-second blocks is exactly 2.3 kWh; then 100 W of
    // export for 36 s is 1 Wh exported.
    let mut e = EnergyRegister::new();
    for _ in 0..3600 {
        check!(e.add(2300.0, 1_000_000).is_ok());
    }
    check_eq!(e.import_mwh(), 2_300_000);
    for _ in 0..36 {
        check!(e.add(-100.0, 1_000_000).is_ok());
    }
    check_eq!(e.export_mwh(), 1_000);
    check_eq!(e.import_mwh(), 2_300_000);
    check!(e.add(f32::NAN, 1_000).is_err(), "NaN power is refused");
    Ok(())
}
