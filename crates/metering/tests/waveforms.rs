//! End-to-end checks against synthetic waveforms with exact answers: the
//! waveforms are built from known amplitudes, phases, harmonics, offsets and
//! noise, quantised to 12 bits like the ESP32 ADC, and the readings compared
//! with the values those parameters imply.

use std::f64::consts::PI;

use gridpow_metering::synthetic::{synth_into, tone, Lcg, Tone, I_GAIN, V_GAIN};
use gridpow_metering::{
    Calibration, Config, EnergyRegister, Measurement, Meter, MeteringError, PhaseCorrection,
    ReferenceLoad,
};
use proptest::prelude::*;

const FS: f64 = 4000.0;
/// One second of samples per block.
const BLOCK: usize = 4000;

/// A channel's codes: DC level plus tones at `freq`, uniform noise of
/// ±`noise` codes, rounded and clamped to 12 bits.
fn synth(freq: f64, mid: f64, tones: &[Tone], noise: f64, rng: &mut Lcg) -> Vec<u16> {
    let mut out = vec![0; BLOCK];
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
    (f64::from(measured) - truth).abs() / truth.abs()
}

fn assert_within(what: &str, measured: f32, truth: f64, tolerance: f64) {
    let e = rel_err(measured, truth);
    assert!(
        e <= tolerance,
        "{what}: measured {measured}, expected {truth}, error {:.4} % > {:.4} %",
        e * 100.0,
        tolerance * 100.0
    );
}

/// Voltage and current at 50 Hz with the current lagging by `lag` radians.
fn load(lag: f64, noise: f64, seed: u64) -> Result<Measurement, MeteringError> {
    let mut rng = Lcg(seed);
    let v = synth(50.0, 2048.0, &[tone(1500.0, 0.0)], noise, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(1500.0, -lag)], noise, &mut rng);
    calibrated(Config::new(FS as f32))?.measure(&v, &i)
}

#[test]
fn pure_sine_reads_230_volts_10_amps_and_unity_power_factor() -> Result<(), MeteringError> {
    let m = load(0.0, 0.0, 1)?;
    assert_within("voltage", m.voltage_v, 230.0, 0.001);
    assert_within("current", m.current_a, 10.0, 0.001);
    assert_within("active power", m.active_power_w, 2300.0, 0.001);
    assert_within("apparent power", m.apparent_power_va, 2300.0, 0.001);
    assert!(m.power_factor > 0.9995, "pf {}", m.power_factor);
    assert!((m.frequency_hz - 50.0).abs() < 0.01, "f {}", m.frequency_hz);
    assert!(!m.saturated);
    Ok(())
}

#[test]
fn inductive_load_power_factor_is_cos_phi() -> Result<(), MeteringError> {
    let phi = 0.8f64.acos(); // 36.87° lagging
    let m = load(phi, 0.0, 2)?;
    assert_within("active power", m.active_power_w, 230.0 * 10.0 * 0.8, 0.005);
    assert!(
        (m.power_factor - 0.8).abs() < 0.002,
        "pf {}",
        m.power_factor
    );
    assert_within("apparent power", m.apparent_power_va, 2300.0, 0.001);
    Ok(())
}

#[test]
fn inductive_load_reads_a_positive_phase_angle() -> Result<(), MeteringError> {
    let mut rng = Lcg(3);
    let v = synth(50.0, 2048.0, &[tone(1500.0, 0.0)], 0.0, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(1500.0, -0.6435)], 0.0, &mut rng);
    let raw = calibrated(Config::new(FS as f32))?.raw_readings(&v, &i)?;
    assert!((raw.phase_deg - 36.87).abs() < 0.05, "{}", raw.phase_deg);
    Ok(())
}

#[test]
fn exported_power_is_negative_with_negative_power_factor() -> Result<(), MeteringError> {
    let m = load(PI, 0.0, 4)?;
    assert_within("active power", m.active_power_w, -2300.0, 0.001);
    assert!(m.power_factor < -0.9995, "pf {}", m.power_factor);
    Ok(())
}

#[test]
fn harmonic_current_rms_follows_parseval() -> Result<(), MeteringError> {
    // Fundamental 1200 codes peak lagging 20°, 3rd at 30 %, 5th at 15 %:
    // RMS² is the sum of the components' RMS², and only the fundamental
    // carries power because the voltage is a pure sine.
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
    let m = calibrated(Config::new(FS as f32))?.measure(&v, &i)?;

    let i_rms = I_GAIN * ((p1 * p1 + p3 * p3 + p5 * p5) / 2.0).sqrt();
    let i1_rms = I_GAIN * p1 / 2f64.sqrt();
    let p = 230.0 * i1_rms * lag.cos();
    assert_within("current", m.current_a, i_rms, 0.002);
    assert_within("active power", m.active_power_w, p, 0.005);
    assert!(
        (f64::from(m.power_factor) - p / (230.0 * i_rms)).abs() < 0.003,
        "pf {}",
        m.power_factor
    );
    assert!((m.frequency_hz - 50.0).abs() < 0.01);
    Ok(())
}

#[test]
fn dc_offset_is_removed_wherever_the_sensor_sits() -> Result<(), MeteringError> {
    let meter = calibrated(Config::new(FS as f32))?;
    let lag = 0.3;
    let mut readings = Vec::new();
    // Mid-rail 2048, and an ACS712 whose zero sits off mid-rail.
    for (v_mid, i_mid) in [(2048.0, 2048.0), (2048.0, 1900.0), (2100.0, 2300.0)] {
        let mut rng = Lcg(6);
        let v = synth(50.0, v_mid, &[tone(1500.0, 0.0)], 0.0, &mut rng);
        let i = synth(50.0, i_mid, &[tone(1000.0, -lag)], 0.0, &mut rng);
        readings.push(meter.measure(&v, &i)?);
    }
    for m in &readings {
        assert_within("voltage", m.voltage_v, 230.0, 0.001);
        assert_within("current", m.current_a, 10.0 * 1000.0 / 1500.0, 0.001);
        assert_within(
            "active power",
            m.active_power_w,
            230.0 * 10.0 * 1000.0 / 1500.0 * f64::cos(lag),
            0.002,
        );
    }
    Ok(())
}

fn measure_frequency(freq: f64, nominal: f32) -> Result<Measurement, MeteringError> {
    let mut rng = Lcg(freq.to_bits());
    // Noise of ±3 codes on top of 12-bit quantisation jitters every crossing.
    let v = synth(freq, 2048.0, &[tone(1500.0, 0.4)], 3.0, &mut rng);
    let i = synth(freq, 2048.0, &[tone(1500.0, 0.1)], 3.0, &mut rng);
    let config = Config {
        nominal_frequency_hz: nominal,
        ..Config::new(FS as f32)
    };
    calibrated(config)?.measure(&v, &i)
}

#[test]
fn frequency_is_within_10_mhz_at_49_5_50_and_50_5_hz() -> Result<(), MeteringError> {
    for f in [49.5, 50.0, 50.5] {
        let m = measure_frequency(f, 50.0)?;
        assert!(
            (f64::from(m.frequency_hz) - f).abs() < 0.01,
            "{f} Hz read as {}",
            m.frequency_hz
        );
        assert_within("voltage off nominal frequency", m.voltage_v, 230.0, 0.001);
    }
    Ok(())
}

#[test]
fn frequency_is_within_10_mhz_at_60_hz() -> Result<(), MeteringError> {
    let m = measure_frequency(60.0, 60.0)?;
    assert!((m.frequency_hz - 60.0).abs() < 0.01, "{}", m.frequency_hz);
    assert!(m.to_wire().frequency_mhz.abs_diff(60_000) <= 10);
    Ok(())
}

#[test]
fn short_block_of_ten_cycles_still_reads_frequency_within_10_mhz() -> Result<(), MeteringError> {
    let mut rng = Lcg(7);
    let v = synth(50.3, 2048.0, &[tone(1500.0, 0.0)], 3.0, &mut rng);
    let i = synth(50.3, 2048.0, &[tone(1500.0, 0.0)], 3.0, &mut rng);
    // 0.2 s: ten cycles.
    let m = calibrated(Config::new(FS as f32))?.measure(&v[..800], &i[..800])?;
    assert!((m.frequency_hz - 50.3).abs() < 0.01, "{}", m.frequency_hz);
    assert_within("voltage", m.voltage_v, 230.0, 0.002);
    Ok(())
}

#[test]
fn quantisation_and_noise_keep_readings_within_tolerance() -> Result<(), MeteringError> {
    // ±8 codes of uniform noise on each channel (σ ≈ 4.6 codes) on top of
    // 12-bit rounding, at PF 0.8.
    let m = load(0.8f64.acos(), 8.0, 8)?;
    assert_within("voltage", m.voltage_v, 230.0, 0.001);
    assert_within("current", m.current_a, 10.0, 0.001);
    assert_within("active power", m.active_power_w, 1840.0, 0.005);
    assert!((m.frequency_hz - 50.0).abs() < 0.01, "{}", m.frequency_hz);
    Ok(())
}

#[test]
fn mains_off_reads_zero_frequency_without_error() -> Result<(), MeteringError> {
    let mut rng = Lcg(9);
    let v = synth(50.0, 2048.0, &[], 4.0, &mut rng);
    let i = synth(50.0, 2048.0, &[], 4.0, &mut rng);
    let m = calibrated(Config::new(FS as f32))?.measure(&v, &i)?;
    assert_eq!(m.frequency_hz, 0.0);
    assert!(m.voltage_v < 1.0, "{}", m.voltage_v);
    Ok(())
}

/// The "true" hardware of the calibration round trip.
struct Hardware {
    v_gain: f64,
    i_gain: f64,
    /// The voltage sensor leads by this much.
    v_lead: f64,
    /// Uniform noise of the current sensor, ± codes.
    i_noise: f64,
    /// Voltage coupling into the current channel.
    crosstalk: f64,
}

impl Hardware {
    /// Codes for a true load of `v_rms`, `i_rms` with the current lagging `lag`.
    fn sample(&self, v_rms: f64, i_rms: f64, lag: f64, seed: u64) -> (Vec<u16>, Vec<u16>) {
        let mut rng = Lcg(seed);
        let v_peak = v_rms * 2f64.sqrt() / self.v_gain;
        let i_peak = i_rms * 2f64.sqrt() / self.i_gain;
        let v = synth(50.0, 2040.0, &[tone(v_peak, self.v_lead)], 1.0, &mut rng);
        let i = synth(
            50.0,
            2061.0,
            &[
                tone(i_peak, -lag),
                tone(v_peak * self.crosstalk, self.v_lead),
            ],
            self.i_noise,
            &mut rng,
        );
        (v, i)
    }
}

#[test]
fn calibration_round_trip_recovers_gains_offsets_and_phase() -> Result<(), MeteringError> {
    let hw = Hardware {
        v_gain: 0.2,
        i_gain: 0.012,
        v_lead: 3f64.to_radians(),
        i_noise: 15.0,
        crosstalk: 0.0003,
    };
    let mut meter = Meter::new(Config::new(FS as f32), Calibration::UNITY)?;

    // Step 1: mains on, nothing plugged in.
    let (v, i) = hw.sample(230.0, 0.0, 0.0, 10);
    let cal = meter.calibrate_no_load(&meter.raw_readings(&v, &i)?)?;
    meter.set_calibration(cal)?;

    // Step 2: a 1 kW kettle at 230 V (4.348 A, resistive) read by a multimeter.
    let reference = ReferenceLoad::resistive(230.0, 1000.0 / 230.0);
    let (v, i) = hw.sample(230.0, 1000.0 / 230.0, 0.0, 11);
    let cal = meter.calibrate_reference(&meter.raw_readings(&v, &i)?, &reference)?;
    meter.set_calibration(cal)?;

    assert_within("voltage gain", cal.voltage.gain, hw.v_gain, 0.002);
    assert_within("current gain", cal.current.gain, hw.i_gain, 0.003);
    let PhaseCorrection::Samples(delay) = cal.phase else {
        panic!("helper returns samples");
    };
    // 3° at 80 samples per cycle is 0.667 samples.
    assert!((delay - 0.6667).abs() < 0.02, "delay {delay}");

    // Check: an inductive load the calibration never saw.
    let phi = 0.8f64.acos();
    let (v, i) = hw.sample(240.0, 6.0, phi, 12);
    let m = meter.measure(&v, &i)?;
    assert_within("voltage", m.voltage_v, 240.0, 0.002);
    assert_within("current", m.current_a, 6.0, 0.005);
    assert_within("active power", m.active_power_w, 240.0 * 6.0 * 0.8, 0.005);
    assert!(
        (m.power_factor - 0.8).abs() < 0.005,
        "pf {}",
        m.power_factor
    );

    // And no load reads (nearly) nothing.
    let (v, i) = hw.sample(230.0, 0.0, 0.0, 13);
    let m = meter.measure(&v, &i)?;
    assert!(m.active_power_w.abs() < 1.0, "creep {} W", m.active_power_w);
    assert!(m.current_a < 0.05, "{} A", m.current_a);
    Ok(())
}

#[test]
fn phase_correction_in_degrees_cancels_a_known_sensor_lead() -> Result<(), MeteringError> {
    // The voltage sensor leads by 4°: uncorrected, a PF 0.8 load reads
    // cos(36.87° + 4°) = 0.756, 5.5 % low.
    let phi = 0.8f64.acos();
    let lead = 4f64.to_radians();
    let mut rng = Lcg(14);
    let v = synth(50.0, 2048.0, &[tone(1500.0, lead)], 2.0, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(1500.0, -phi)], 2.0, &mut rng);

    let uncorrected = calibrated(Config::new(FS as f32))?.measure(&v, &i)?;
    assert!(rel_err(uncorrected.active_power_w, 1840.0) > 0.05);

    let mut meter = calibrated(Config::new(FS as f32))?;
    let mut cal = *meter.calibration();
    cal.phase = PhaseCorrection::Degrees(4.0);
    meter.set_calibration(cal)?;
    let m = meter.measure(&v, &i)?;
    assert_within("active power", m.active_power_w, 1840.0, 0.005);
    assert!(
        (m.power_factor - 0.8).abs() < 0.003,
        "pf {}",
        m.power_factor
    );
    Ok(())
}

#[test]
fn current_sensor_leading_is_corrected_by_delaying_current() -> Result<(), MeteringError> {
    // Here the voltage lags by 2°, so calibration must delay the current.
    let lag_v = 2f64.to_radians();
    let mut meter = calibrated(Config::new(FS as f32))?;
    let mut rng = Lcg(15);
    let v = synth(50.0, 2048.0, &[tone(1500.0, -lag_v)], 2.0, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(700.0, 0.0)], 2.0, &mut rng);
    let reference = ReferenceLoad::resistive(230.0, 10.0 * 700.0 / 1500.0);
    let cal = meter.calibrate_reference(&meter.raw_readings(&v, &i)?, &reference)?;
    meter.set_calibration(cal)?;
    // 2° at 80 samples per cycle is 0.444 samples, on the current channel.
    assert!(
        (meter.phase_delay_samples() + 0.4444).abs() < 0.01,
        "delay {}",
        meter.phase_delay_samples()
    );

    let phi = 0.8f64.acos();
    let v = synth(50.0, 2048.0, &[tone(1500.0, -lag_v)], 2.0, &mut rng);
    let i = synth(50.0, 2048.0, &[tone(1500.0, -phi)], 2.0, &mut rng);
    let m = meter.measure(&v, &i)?;
    assert_within("active power", m.active_power_w, 1840.0, 0.005);
    assert!(
        (m.power_factor - 0.8).abs() < 0.003,
        "pf {}",
        m.power_factor
    );
    Ok(())
}

/// Simulates a day of one-second steps of `power(t)` sampled at mid-step, as
/// a meter measuring each second's mean power would.
fn simulate_day(power: impl Fn(f64) -> f64) -> Result<EnergyRegister, MeteringError> {
    let mut register = EnergyRegister::new();
    for s in 0..86_400 {
        register.add(power(f64::from(s) + 0.5) as f32, 1_000_000)?;
    }
    Ok(register)
}

#[test]
fn energy_after_a_simulated_day_is_within_0_1_percent_of_the_integral() -> Result<(), MeteringError>
{
    // A day-shaped half sine plus a 5000 s appliance cycle.
    let power =
        |t: f64| 1000.0 + 700.0 * (PI * t / 86_400.0).sin() + 150.0 * (2.0 * PI * t / 5000.0).sin();
    let joules = 1000.0 * 86_400.0
        + 700.0 * 86_400.0 * 2.0 / PI
        + 150.0 * 5000.0 / (2.0 * PI) * (1.0 - (2.0 * PI * 86_400.0 / 5000.0).cos());
    let expected_mwh = joules / 3.6;
    let register = simulate_day(power)?;
    let error = (register.total_mwh() as f64 - expected_mwh).abs() / expected_mwh;
    assert!(error < 0.001, "error {:.6} %", error * 100.0);
    // In fact the integer register adds no error beyond mid-point sampling.
    assert!(error < 1e-6, "error {:.8} %", error * 100.0);
    assert_eq!(register.export_mwh(), 0);
    Ok(())
}

#[test]
fn constant_load_for_a_day_is_exact_to_the_mwh() -> Result<(), MeteringError> {
    let p = 1234.567f32;
    let register = simulate_day(|_| f64::from(p))?;
    let exact = f64::from(p) * 86_400.0 / 3.6;
    assert!(
        (register.total_mwh() as f64 - exact).abs() <= 1.0,
        "{} vs {exact}",
        register.total_mwh()
    );
    Ok(())
}

#[test]
fn solar_export_over_a_day_goes_to_the_export_register() -> Result<(), MeteringError> {
    // 400 W house load, 2 kW peak solar from 06:00 to 18:00.
    let t = 43_200.0;
    let power = |s: f64| {
        let solar = if (21_600.0..64_800.0).contains(&s) {
            2000.0 * (PI * (s - 21_600.0) / t).sin()
        } else {
            0.0
        };
        400.0 - solar
    };
    let a = (0.2f64).asin(); // export while 2000·sin u > 400
    let export_j = t / PI * (2000.0 * 2.0 * a.cos() - 400.0 * (PI - 2.0 * a));
    let net_j = 400.0 * 86_400.0 - 2000.0 * 2.0 * t / PI;
    let import_j = net_j + export_j;
    let register = simulate_day(power)?;
    assert_within(
        "import",
        register.import_mwh() as f32,
        import_j / 3.6,
        0.001,
    );
    assert_within(
        "export",
        register.export_mwh() as f32,
        export_j / 3.6,
        0.001,
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_sample_blocks_never_panic_and_give_finite_non_negative_rms(
        pairs in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..3000),
        delay in -3.0f32..3.0,
        fs in prop_oneof![Just(1000.0f32), Just(4000.0), Just(10_000.0)],
        hysteresis in any::<u16>(),
    ) {
        let config = Config { adc_bits: 16, hysteresis_codes: hysteresis, ..Config::new(fs) };
        let cal = Calibration { phase: PhaseCorrection::Samples(delay), ..Calibration::UNITY };
        let meter = Meter::new(config, cal);
        prop_assert!(meter.is_ok());
        let Ok(meter) = meter else { return Ok(()) };
        let (v, i): (Vec<u16>, Vec<u16>) = pairs.into_iter().unzip();
        match meter.measure(&v, &i) {
            Ok(m) => {
                prop_assert!(m.voltage_v.is_finite() && m.voltage_v >= 0.0);
                prop_assert!(m.current_a.is_finite() && m.current_a >= 0.0);
                prop_assert!(m.active_power_w.is_finite());
                prop_assert!(m.apparent_power_va.is_finite() && m.apparent_power_va >= 0.0);
                prop_assert!((-1.0..=1.0).contains(&m.power_factor));
                prop_assert!(m.frequency_hz.is_finite() && m.frequency_hz >= 0.0);
                let _ = m.to_wire();
            }
            Err(e) => prop_assert!(
                matches!(e, MeteringError::EmptyBlock | MeteringError::BlockTooShort { .. }),
                "unexpected {e}"
            ),
        }
    }

    #[test]
    fn arbitrary_codes_on_a_12_bit_meter_are_measured_or_rejected_as_out_of_range(
        v in proptest::collection::vec(any::<u16>(), 10..500),
        i in proptest::collection::vec(0u16..4096, 10..500),
    ) {
        let n = v.len().min(i.len());
        let meter = calibrated(Config::new(4000.0));
        prop_assert!(meter.is_ok());
        let Ok(meter) = meter else { return Ok(()) };
        match meter.measure(&v[..n], &i[..n]) {
            Ok(m) => prop_assert!(m.voltage_v.is_finite() && m.voltage_v >= 0.0),
            Err(e) => prop_assert!(matches!(e, MeteringError::SampleOutOfRange { .. }), "{e}"),
        }
    }

    #[test]
    fn any_sine_in_range_reads_its_rms_and_frequency(
        peak in 300.0f64..1900.0,
        freq in 45.0f64..65.0,
        phase in 0.0f64..(2.0 * PI),
        mid in 2000.0f64..2100.0,
        seed in any::<u64>(),
    ) {
        let mut rng = Lcg(seed);
        let v = synth(freq, mid, &[tone(peak, phase)], 2.0, &mut rng);
        let meter = Meter::new(Config::new(FS as f32), Calibration::UNITY);
        prop_assert!(meter.is_ok());
        let Ok(meter) = meter else { return Ok(()) };
        let m = meter.measure(&v, &v);
        prop_assert!(m.is_ok());
        let Ok(m) = m else { return Ok(()) };
        let rms = peak / 2f64.sqrt();
        prop_assert!(rel_err(m.voltage_v, rms) < 0.001, "rms {} vs {rms}", m.voltage_v);
        prop_assert!((f64::from(m.frequency_hz) - freq).abs() < 0.01, "f {} vs {freq}", m.frequency_hz);
    }

    #[test]
    fn energy_registers_never_decrease(
        steps in proptest::collection::vec((any::<f32>(), any::<u64>()), 0..200),
    ) {
        let mut r = EnergyRegister::new();
        for (p, d) in steps {
            let (import, export) = (r.import_mwh(), r.export_mwh());
            let _ = r.add(p, d);
            prop_assert!(r.import_mwh() >= import);
            prop_assert!(r.export_mwh() >= export);
        }
    }
}
