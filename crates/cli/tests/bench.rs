//! `gridpow bench`: the quick run prints every figure with its baseline and
//! the goals as one JSON object; bad flags get a clear error. No timing is
//! asserted (this machine may be loaded): only that each figure was
//! measured, is finite and positive, and that related figures agree.
#![allow(clippy::unwrap_used)]

mod common;

use common::{gridpow, text};
use serde_json::Value;

fn positive(v: &Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"));
    assert!(x.is_finite() && x > 0.0, "{path} = {x}");
    x
}

#[test]
fn quick_run_reports_every_figure_with_its_baseline_and_the_goals() {
    let journal = tempfile::tempdir().expect("tempdir");
    let o = gridpow(&[
        "bench",
        "--quick",
        "--json",
        "--journal-dir",
        journal.path().to_str().expect("UTF-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).expect("one JSON object on stdout");
    assert_eq!(r["quick"], true);
    // Progress went to stderr, one line per step.
    let err = String::from_utf8_lossy(&o.stderr);
    for step in ["pow:", "verify:", "ingest:", "sim:", "journal:"] {
        assert!(err.contains(step), "no progress for {step}: {err}");
    }

    // Proof of work: tries and compressions measured on the same threads.
    let pow = r["pow"].as_array().expect("pow");
    assert!(!pow.is_empty());
    for (i, _) in pow.iter().enumerate() {
        let tries = positive(&r, &format!("/pow/{i}/pow_tries_per_s"));
        let sha = positive(&r, &format!("/pow/{i}/sha256_compress_per_s"));
        let ratio = positive(&r, &format!("/pow/{i}/ratio"));
        assert!((ratio - tries / sha).abs() < 1e-6 * ratio.max(1.0));
        // A try is at least one compression: it cannot be several times faster.
        assert!(ratio < 2.0, "ratio {ratio}");
    }

    // Verification: four shapes, readings/s = blocks/s × readings per block.
    let shapes = r["verify"]["shapes"].as_array().expect("shapes");
    assert_eq!(shapes.len(), 4);
    for (i, s) in shapes.iter().enumerate() {
        let blocks = positive(&r, &format!("/verify/shapes/{i}/blocks_per_s"));
        let readings = positive(&r, &format!("/verify/shapes/{i}/readings_per_s"));
        let per_block = s["readings_per_block"]
            .as_f64()
            .expect("readings_per_block");
        assert!((readings - blocks * per_block).abs() < 1e-6 * readings);
        // Every block costs one Ed25519 verification.
        assert!(blocks < 2.0 * positive(&r, "/verify/ed25519_verify_per_s"));
    }
    positive(&r, "/verify/ccm_open_per_s");
    positive(&r, "/verify/leaf_hash_per_s");
    positive(&r, "/verify/ed25519_batch64_per_s");
    positive(&r, "/verify/r_subgroup_check_per_s");

    // Ingest: raw, store and end to end on the same readings (Mosquitto is installed here).
    assert_eq!(r["ingest"]["backend"], "sqlite");
    let raw = positive(&r, "/ingest/raw_readings_per_s");
    let store = positive(&r, "/ingest/store_readings_per_s");
    assert!((positive(&r, "/ingest/store_over_raw") - store / raw).abs() < 1e-6);
    let e2e = positive(&r, "/ingest/end_to_end/readings_per_s");
    assert!((positive(&r, "/ingest/end_to_end/over_raw") - e2e / raw).abs() < 1e-6);
    positive(&r, "/ingest/end_to_end/writer_busy");
    positive(&r, "/ingest/end_to_end/transactions");
    assert!(r["ingest"]["end_to_end_skipped"].is_null());

    // The simulator ran the benchmark configuration with real traffic.
    assert_eq!(r["sim"]["meters"], 100_000);
    positive(&r, "/sim/uplinks");
    positive(&r, "/sim/uplinks_per_wall_s");
    positive(&r, "/sim/uplinks_per_cpu_s");
    assert_eq!(r["sim"]["trace_hash"].as_str().expect("hash").len(), 16);

    // The journal: group commit makes more frames durable per fsync.
    let rates = r["journal"]["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 3);
    for (i, _) in rates.iter().enumerate() {
        positive(&r, &format!("/journal/rates/{i}/frames_per_s"));
    }

    // The goals, each with the figure it was judged on.
    let goals = r["goals"].as_array().expect("goals");
    let names: Vec<&str> = goals.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    for g in goals {
        let (m, goal) = (
            g["measured"].as_f64().expect("m"),
            g["goal"].as_f64().expect("g"),
        );
        let at_least = g["at_least"].as_bool().expect("at_least");
        assert_eq!(
            g["met"].as_bool(),
            Some(if at_least { m >= goal } else { m <= goal })
        );
    }
}

#[test]
fn only_runs_the_parts_asked_for_and_the_table_names_the_goals() {
    let o = gridpow(&["bench", "--quick", "--only", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("verify 64-reading blocks, 6 per frame"),
        "{out}"
    );
    assert!(out.contains("(goal ≥ 2000000)"), "{out}");
    assert!(!out.contains("pow,") && !out.contains("ingest") && !out.contains("journal"));
}

#[test]
fn bad_flags_get_a_clear_error() {
    let o = gridpow(&["bench", "--only", "pow,warp"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown part \"warp\""), "{}", text(&o));
    let o = gridpow(&["bench", "--db", "mysql://x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("expected sqlite, pg"), "{}", text(&o));
}

#[test]
fn ingest_on_a_private_postgresql_compares_with_raw_copy() {
    let o = gridpow(&[
        "bench", "--quick", "--json", "--only", "ingest", "--db", "pg",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(r["ingest"]["backend"], "postgresql");
    let raw = positive(&r, "/ingest/raw_readings_per_s");
    let store = positive(&r, "/ingest/store_readings_per_s");
    assert!((positive(&r, "/ingest/store_over_raw") - store / raw).abs() < 1e-6);
    positive(&r, "/ingest/end_to_end/readings_per_s");
    assert!(r["pow"].as_array().is_some_and(Vec::is_empty));
    assert!(r["verify"].is_null() && r["sim"].is_null());
}
