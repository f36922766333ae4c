//! A household's electrical load, deterministic from a seed.
//!
//! - **Daily curve**: a night base load (60–250 W: fridge, standby, router),
//!   a morning peak around 07:15 and a larger evening peak around 19:00, a
//!   little activity at midday; each household shifts its day by up to ±45 min.
//! - **Appliances**: on/off steps started at random (Poisson, more likely when
//!   the household is active): kettle (2–3 kW for 2–4 min), oven (2–3.5 kW for
//!   30–60 min, evenings), washing machine (a 2 kW heating phase, then a
//!   400–600 W motor at PF 0.8, 60–120 min), and a fridge compressor cycling
//!   15 min on / 30 min off.
//! - **Noise**: a slowly varying (AR(1)) ±5 % on the base load.
//! - **Voltage** around 230 V: a per-household offset (±3 V), a grid-wide
//!   daily sag at the evening peak, a small random walk, and a drop of
//!   0.8 V per kW the household draws. **Frequency** 50 Hz ± 0.05 Hz, the same
//!   for every meter at the same time (it is one grid).
//! - **Power factor** from the mix: resistive loads 1.0, electronics 0.92,
//!   motors 0.8, clamped to 0.85…1.0.
//! - **Energy**: the register integrates the active power over each interval
//!   in mWh, carrying the fraction, so it never goes backwards and never drifts.
//!
//! Sub-steps of at most one second make the interval means (power, voltage,
//! current) include appliance steps inside the interval.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a meter reports for one interval, in wire units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// RMS voltage, 0.01 V.
    pub voltage_cv: u16,
    /// RMS current, mA.
    pub current_ma: u32,
    /// Active power, 0.1 W.
    pub active_power_dw: i32,
    /// Power factor, 1/10000.
    pub power_factor_e4: i16,
    /// Line frequency, mHz.
    pub frequency_mhz: u16,
    /// Imported-energy register, mWh.
    pub energy_mwh: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Kettle,
    Oven,
    Washer,
}

#[derive(Clone, Copy, Debug)]
struct Running {
    kind: Kind,
    /// Seconds left.
    left_s: f64,
    /// Seconds since it started.
    age_s: f64,
    /// Nominal power, W.
    power_w: f64,
}

/// Mixes a meter id into a seed (SplitMix64 finaliser).
pub fn mix_seed(seed: u64, meter_id: u32) -> u64 {
    let mut z = seed ^ (u64::from(meter_id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn gauss(rng: &mut StdRng) -> f64 {
    // Box–Muller; u1 in (0, 1] so the logarithm is finite.
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Circular Gaussian bump on the 24-hour clock.
fn bump(hour: f64, center: f64, width: f64) -> f64 {
    let mut d = (hour - center).rem_euclid(24.0);
    if d > 12.0 {
        d -= 24.0;
    }
    (-0.5 * (d / width).powi(2)).exp()
}

/// Hour of day (0..24) of a Unix ms time at a UTC offset.
pub fn hour_of_day(t_ms: u64, utc_offset_h: f64) -> f64 {
    (t_ms as f64 / 3_600_000.0 + utc_offset_h).rem_euclid(24.0)
}

/// Grid frequency at `t_ms`, the same for every household (Hz).
pub fn grid_frequency_hz(t_ms: u64) -> f64 {
    let t = t_ms as f64 / 1000.0;
    let tau = 2.0 * std::f64::consts::PI;
    let slow = 0.03 * (tau * t / 900.0).sin();
    let mid = 0.012 * (tau * t / 97.0 + 1.3).sin();
    // Deterministic per-second jitter from the second itself.
    let s = mix_seed(0x6772_6964, (t_ms / 1000) as u32);
    let jitter = ((s % 2001) as f64 / 1000.0 - 1.0) * 0.005;
    (50.0 + slow + mid + jitter).clamp(49.95, 50.05)
}

/// One simulated household.
#[derive(Debug)]
pub struct Household {
    rng: StdRng,
    utc_offset_h: f64,
    base_w: f64,
    morning_w: f64,
    evening_w: f64,
    midday_w: f64,
    shift_h: f64,
    voltage_offset_v: f64,
    voltage_walk_v: f64,
    noise: f64,
    fridge_w: f64,
    fridge_phase_s: f64,
    running: Vec<Running>,
    energy_mwh: u64,
    energy_frac_mwh: f64,
}

/// Seconds a fridge cycle lasts: 15 min on, 30 min off.
const FRIDGE_ON_S: f64 = 900.0;
const FRIDGE_CYCLE_S: f64 = 2700.0;

impl Household {
    /// A household for `meter_id`, deterministic from `seed`; `energy_mwh`
    /// is the register to continue from (`None`: a seeded starting value).
    pub fn new(meter_id: u32, seed: u64, utc_offset_h: f64, energy_mwh: Option<u64>) -> Self {
        let mut rng = StdRng::seed_from_u64(mix_seed(seed, meter_id));
        let start_energy = rng.gen_range(500_000_000..20_000_000_000u64);
        Household {
            base_w: rng.gen_range(60.0..250.0),
            morning_w: rng.gen_range(250.0..1000.0),
            evening_w: rng.gen_range(500.0..1800.0),
            midday_w: rng.gen_range(50.0..400.0),
            shift_h: rng.gen_range(-0.75..0.75),
            voltage_offset_v: rng.gen_range(-3.0..3.0),
            voltage_walk_v: 0.0,
            noise: 0.0,
            fridge_w: rng.gen_range(80.0..150.0),
            fridge_phase_s: rng.gen_range(0.0..FRIDGE_CYCLE_S),
            running: Vec::new(),
            energy_mwh: energy_mwh.unwrap_or(start_energy),
            energy_frac_mwh: 0.0,
            utc_offset_h,
            rng,
        }
    }

    /// The energy register now, mWh.
    pub fn energy_mwh(&self) -> u64 {
        self.energy_mwh
    }

    /// The smooth daily curve (without appliances and noise) at `hour`, W.
    pub fn daily_curve_w(&self, hour: f64) -> f64 {
        let h = hour - self.shift_h;
        self.base_w
            + self.morning_w * bump(h, 7.25, 0.8)
            + self.midday_w * bump(h, 12.75, 1.5)
            + self.evening_w * (0.55 * bump(h, 19.0, 1.2) + 0.45 * bump(h, 21.0, 1.5))
    }

    /// How busy the household is at `hour`, 0…1 (drives appliance starts).
    fn activity(&self, hour: f64) -> f64 {
        let peak = self.base_w + self.morning_w.max(self.evening_w);
        ((self.daily_curve_w(hour) - self.base_w) / (peak - self.base_w).max(1.0)).clamp(0.0, 1.0)
    }

    fn maybe_start(&mut self, hour: f64, dt: f64) {
        let a = self.activity(hour);
        let h = hour - self.shift_h;
        // Expected starts per day at full activity.
        let kettle = 14.0 * a;
        let oven = 5.0 * a * (bump(h, 18.5, 1.0) + 0.2 * bump(h, 12.5, 0.8));
        let washer = 1.5 * (bump(h, 10.0, 2.0) + 0.5 * bump(h, 19.5, 1.5));
        for (kind, per_day) in [
            (Kind::Kettle, kettle),
            (Kind::Oven, oven),
            (Kind::Washer, washer),
        ] {
            if self.running.iter().any(|r| r.kind == kind) {
                continue;
            }
            let p = per_day * dt / 86_400.0;
            if self.rng.gen::<f64>() < p {
                let (power_w, len_s) = match kind {
                    Kind::Kettle => (
                        self.rng.gen_range(2000.0..3000.0),
                        self.rng.gen_range(120.0..240.0),
                    ),
                    Kind::Oven => (
                        self.rng.gen_range(2000.0..3500.0),
                        self.rng.gen_range(1800.0..3600.0),
                    ),
                    Kind::Washer => (
                        self.rng.gen_range(400.0..600.0),
                        self.rng.gen_range(3600.0..7200.0),
                    ),
                };
                self.running.push(Running {
                    kind,
                    left_s: len_s,
                    age_s: 0.0,
                    power_w,
                });
            }
        }
    }

    /// Instantaneous state: (active power W, apparent power VA) of the loads.
    fn loads(&self, t_s: f64, noise: f64, hour: f64) -> (f64, f64) {
        let curve = self.daily_curve_w(hour) * (1.0 + noise);
        let electronics = curve.max(20.0);
        let mut p = electronics;
        let mut s = electronics / 0.92;
        if (t_s + self.fridge_phase_s).rem_euclid(FRIDGE_CYCLE_S) < FRIDGE_ON_S {
            p += self.fridge_w;
            s += self.fridge_w / 0.82;
        }
        for r in &self.running {
            match r.kind {
                Kind::Kettle | Kind::Oven => {
                    p += r.power_w;
                    s += r.power_w;
                }
                Kind::Washer if r.age_s < 1200.0 => {
                    // Heating the water: resistive, plus the drum turning slowly.
                    p += 2000.0 + 150.0;
                    s += 2000.0 + 150.0 / 0.8;
                }
                Kind::Washer => {
                    p += r.power_w;
                    s += r.power_w / 0.8;
                }
            }
        }
        (p, s)
    }

    /// Simulates `[t_start_ms, t_end_ms)` and returns the interval's
    /// measurement; the energy register advances by the energy drawn.
    pub fn measure(&mut self, t_start_ms: u64, t_end_ms: u64) -> Measurement {
        let total_s = (t_end_ms.saturating_sub(t_start_ms)) as f64 / 1000.0;
        let steps = (total_s.ceil() as usize).max(1);
        let dt = total_s / steps as f64;
        let (mut sum_p, mut sum_v, mut sum_s) = (0.0, 0.0, 0.0);
        for k in 0..steps {
            let t_ms = t_start_ms + ((k as f64 + 0.5) * dt * 1000.0) as u64;
            let t_s = t_ms as f64 / 1000.0;
            let hour = hour_of_day(t_ms, self.utc_offset_h);
            self.maybe_start(hour, dt);
            // AR(1) noise with a time constant of about two minutes.
            let a = (-dt / 120.0).exp();
            self.noise = a * self.noise + (1.0 - a * a).sqrt() * 0.05 * gauss(&mut self.rng);
            self.voltage_walk_v =
                (0.999 * self.voltage_walk_v + 0.05 * gauss(&mut self.rng)).clamp(-1.5, 1.5);
            let (p, s) = self.loads(t_s, self.noise, hour);
            let grid_sag = 2.5 * bump(hour, 19.5, 1.5);
            let v =
                (230.0 + self.voltage_offset_v + self.voltage_walk_v - grid_sag - 0.8 * p / 1000.0)
                    .clamp(207.0, 253.0);
            sum_p += p * dt;
            sum_s += s * dt;
            sum_v += v * dt;
            for r in &mut self.running {
                r.left_s -= dt;
                r.age_s += dt;
            }
            self.running.retain(|r| r.left_s > 0.0);
        }
        let span = (steps as f64 * dt).max(1e-9);
        let p = sum_p / span;
        let v = sum_v / span;
        let pf = (sum_p / sum_s.max(1e-9)).clamp(0.85, 1.0);
        // RMS current consistent with the reported P, V and PF (S = V·I by definition).
        let i = p / (v * pf);
        // W·s → mWh: 1 mWh = 3.6 W·s.
        self.energy_frac_mwh += sum_p / 3.6;
        let whole = self.energy_frac_mwh.floor();
        self.energy_frac_mwh -= whole;
        self.energy_mwh = self.energy_mwh.saturating_add(whole as u64);
        Measurement {
            voltage_cv: (v * 100.0).round() as u16,
            current_ma: (i * 1000.0).round() as u32,
            active_power_dw: (p * 10.0).round() as i32,
            power_factor_e4: (pf * 10_000.0).round() as i16,
            frequency_mhz: (grid_frequency_hz(t_end_ms) * 1000.0).round() as u16,
            energy_mwh: self.energy_mwh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    /// 2024-01-01T00:00:00Z.
    const T0: u64 = 1_704_067_200_000;

    #[test]
    fn energy_register_is_monotonic_and_matches_the_integrated_power() {
        let mut h = Household::new(7, 42, 0.0, Some(1_000_000));
        let mut last = h.energy_mwh();
        let mut integrated_mwh = 0.0;
        let interval = 10_000;
        let mut t = T0;
        while t < T0 + 2 * DAY_MS {
            let m = h.measure(t, t + interval);
            assert!(m.energy_mwh >= last, "register went back at {t}");
            last = m.energy_mwh;
            integrated_mwh += f64::from(m.active_power_dw) / 10.0 * 10.0 / 3.6;
            t += interval;
        }
        let gained = (last - 1_000_000) as f64;
        assert!(
            (gained - integrated_mwh).abs() / integrated_mwh < 0.001,
            "{gained} vs {integrated_mwh}"
        );
        // A household uses a few kWh a day.
        assert!(
            (2_000_000.0..40_000_000.0).contains(&(gained / 2.0)),
            "{gained} mWh in 2 days"
        );
    }

    #[test]
    fn daily_curve_has_a_quiet_night_and_morning_and_evening_peaks() {
        let mut sums = [0.0f64; 24];
        let mut counts = [0u32; 24];
        for meter in 1..=12 {
            let mut h = Household::new(meter, 9, 0.0, None);
            let mut t = T0;
            while t < T0 + 2 * DAY_MS {
                let m = h.measure(t, t + 60_000);
                let hour = hour_of_day(t, 0.0) as usize;
                sums[hour] += f64::from(m.active_power_dw) / 10.0;
                counts[hour] += 1;
                t += 60_000;
            }
        }
        let mean = |h: usize| sums[h] / f64::from(counts[h]);
        let night = (2..5).map(mean).sum::<f64>() / 3.0;
        let morning = (7..8).map(mean).sum::<f64>();
        let evening = (18..21).map(mean).sum::<f64>() / 3.0;
        assert!(
            morning > 1.8 * night,
            "morning {morning:.0} W vs night {night:.0} W"
        );
        assert!(
            evening > 2.5 * night,
            "evening {evening:.0} W vs night {night:.0} W"
        );
        assert!(
            evening > morning,
            "evening {evening:.0} W vs morning {morning:.0} W"
        );
        assert!((80.0..500.0).contains(&night), "night {night:.0} W");
    }

    #[test]
    fn voltage_frequency_and_power_factor_stay_in_their_bands() {
        let mut h = Household::new(3, 5, 1.0, None);
        let mut t = T0;
        let mut saw_step = false;
        let mut last_p = 0;
        while t < T0 + DAY_MS {
            let m = h.measure(t, t + 10_000);
            assert!((21_500..=24_500).contains(&m.voltage_cv), "{m:?}");
            assert!((49_950..=50_050).contains(&m.frequency_mhz), "{m:?}");
            assert!((8_500..=10_000).contains(&m.power_factor_e4), "{m:?}");
            // P = V·I·PF within rounding and averaging.
            let vi_pf = f64::from(m.voltage_cv) / 100.0 * f64::from(m.current_ma) / 1000.0
                * f64::from(m.power_factor_e4)
                / 1e4;
            let p = f64::from(m.active_power_dw) / 10.0;
            assert!(
                (vi_pf - p).abs() <= 0.03 * p + 1.0,
                "P {p} vs V·I·PF {vi_pf}"
            );
            if (m.active_power_dw - last_p).abs() > 15_000 {
                saw_step = true;
            }
            last_p = m.active_power_dw;
            t += 10_000;
        }
        assert!(saw_step, "no appliance switched on or off all day");
    }

    #[test]
    fn same_seed_gives_the_same_readings_and_meters_differ() {
        let run = |meter, seed| {
            let mut h = Household::new(meter, seed, 0.0, None);
            (0..50)
                .map(|k| h.measure(T0 + k * 10_000, T0 + (k + 1) * 10_000))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1, 1), run(1, 1));
        assert_ne!(run(1, 1), run(2, 1));
        assert_ne!(run(1, 1), run(1, 2));
        assert_eq!(grid_frequency_hz(T0 + 5), grid_frequency_hz(T0 + 5));
    }
}
