//! `gridpow sim`: `--json` prints one object with the classical ALOHA
//! figures, and bad flags are refused with a message.

use std::process::Command;

use gridpow_sim::rng::{DEFAULT_SEED, SEED_ENV};

fn sim() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridpow"));
    c.arg("sim");
    c
}

/// The seed for this test run (default, or `GRIDPOW_SIM_SEED`); in assertion
/// messages so a failure can be replayed.
fn seed() -> u64 {
    std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

#[test]
fn json_output_is_one_object_with_the_classical_figures() {
    let seed = seed().to_string();
    let out = sim()
        .args([
            "--meters",
            "50",
            "--interval",
            "5",
            "--duration",
            "20",
            "--mac",
            "aloha",
            "--poisson",
        ])
        .args(["--max-retries", "0", "--json", "--seed", &seed])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.trim().lines().count(), 1, "seed {seed}: {stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    for key in [
        "offered_load",
        "throughput",
        "delivery_ratio",
        "latency_p50_ms",
        "latency_p99_ms",
        "uplinks_simulated",
    ] {
        assert!(
            v.get(key).is_some_and(|x| x.is_number()),
            "seed {seed}: missing {key}"
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&seed),
        "the seed is printed"
    );
}

#[test]
fn the_seed_comes_from_the_environment_when_no_flag_gives_it() {
    let out = sim()
        .args(["--meters", "5", "--duration", "10", "--json"])
        .env("GRIDPOW_SIM_SEED", "12345")
        .output()
        .expect("the binary runs");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["seed"], 12345);
}

#[test]
fn out_of_range_flags_are_refused_with_a_reason() {
    let out = sim()
        .args(["--meters", "10", "--loss", "1.5"])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loss"));
}

#[test]
fn overlap_puts_edge_meters_under_two_relays_and_reports_them() {
    let seed = seed().to_string();
    let out = sim()
        .args(["--meters", "40", "--relays", "2", "--interval", "5"])
        .args(["--duration", "30", "--overlap", "0.5", "--loss", "0.1"])
        .args(["--json", "--seed", &seed])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["overlap"], 0.5, "seed {seed}: {v}");
    assert_eq!(v["overlap_meters"], 20, "seed {seed}: {v}");
    assert!(
        v["readings_heard_by_both"].as_u64().is_some_and(|n| n > 0),
        "seed {seed}: {v}"
    );
    assert_eq!(v["duplicates_delivered"], 0, "seed {seed}: {v}");
    assert_eq!(
        v["readings_delivered"], v["readings_made"],
        "seed {seed}: {v}"
    );

    let table = sim()
        .args(["--meters", "10", "--relays", "2", "--duration", "20"])
        .args(["--overlap", "1", "--seed", &seed])
        .output()
        .expect("the binary runs");
    assert!(table.status.success(), "seed {seed}");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("overlap 100 % (10 edge meters)"), "{text}");
    assert!(text.contains("also delivered by a second relay"), "{text}");
}

#[test]
fn overlap_out_of_range_or_without_a_second_relay_is_refused() {
    for (args, reason) in [
        (&["--relays", "2", "--overlap", "1.5"][..], "[0, 1]"),
        (&["--relays", "2", "--overlap=-0.1"][..], "[0, 1]"),
        (&["--relays", "2", "--overlap", "NaN"][..], "[0, 1]"),
        (
            &["--relays", "1", "--overlap", "0.2"][..],
            "2 relays per channel",
        ),
        (
            &["--relays", "3", "--channels", "2", "--overlap", "0.2"][..],
            "4 relays for 2 channel(s), got 3",
        ),
        (&["--relays", "2", "--overlap", "half"][..], "half"),
    ] {
        let out = sim()
            .args(["--meters", "10", "--duration", "5"])
            .args(args)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains("overlap") && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
    }
}
