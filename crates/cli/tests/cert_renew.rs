//! Certificate rotation without downtime, across real processes: `gridpow
//! server`, `gridpow relay` and `gridpow meters` over UDP air and a private
//! Mosquitto with mutual TLS. The site's certificates start 20 days from
//! their end (the 30-day warning shows in `/metrics` and `/api/v1/stats`);
//! midway, `gridpow keys renew` issues them for 400 days, the operator copies
//! them into the bundles and sends SIGHUP to relay and server. Every reading
//! the meters generated must be stored exactly once, both services must log
//! the new material, and `/metrics` must show the new end.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{
    create_token, export_bundle, free_tcp_port, free_udp_port, gridpow, http_get, start_stack,
    text, write_meters_config,
};

/// The value of the `/metrics` sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<i64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Copies a renewed file into a bundle as an operator should: next to it,
/// then renamed over it, so a service never reads half a file.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("pem.new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn hangup(pid: u32) {
    let s = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success(), "kill -HUP {pid}");
}

#[test]
fn renewed_certificates_are_loaded_on_sighup_without_losing_a_reading() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (keys, k) = common::key_dir(root, 10);
    // Certificates 20 days from their end: inside the 30-day warning.
    let o = gridpow(&["keys", "renew", "--dir", &k, "--days", "20"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for name in ["broker", "relay-1", "server-1"] {
        assert!(out.contains(&format!("{name}: certificate ")), "{out}");
    }
    let broker = common::site_broker(&keys);
    let relay_bundle = root.join("relay-bundle");
    let server_bundle = root.join("server-bundle");
    let rb = relay_bundle.display().to_string();
    let sb = server_bundle.display().to_string();
    export_bundle(&["relay", "--dir", &k, "--id", "1", "--out", &rb]);
    export_bundle(&["server", "--dir", &k, "--out", &sb]);
    let token = create_token(
        &server_bundle.join("tokens.toml").display().to_string(),
        "test",
        "viewer",
    );
    let http = free_tcp_port();
    let udp = free_udp_port();
    let db = root.join("server.db");
    let truth = root.join("truth.jsonl");
    common::write_server_config(root, &sb, &db, 10, broker.port, http);
    let data = root.join("relay");
    let setup = common::RelaySetup {
        id: 1,
        bundle: &rb,
        data: &data,
        udp,
        broker_port: broker.port,
        difficulty: 10,
        max_age_ms: 300,
    };
    common::write_relay_config(&root.join("relay.toml"), &setup);
    write_meters_config(root, &k, udp, 0.5, 0.1, &truth);
    let (mut server, mut relay, mut meters) = start_stack(root, "info,rumqttd=off");
    let logs = || common::logs(root, &["server.log", "relay.log", "meters.log"]);
    relay.wait_log("connected to the broker", Duration::from_secs(30));
    server.wait_log("Subscribed.", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));

    // Before: 19 or 20 days left, flagged in /metrics and the stats the dashboard reads.
    let client_metric = format!(
        "gridpow_tls_cert_expiry_days{{role=\"mqtt_client\",file=\"{}\"}}",
        server_bundle.join("tls").join("server-1.pem").display()
    );
    let metrics = http_get(http, &token, "/metrics");
    let before = sample(&metrics, &client_metric).unwrap_or_else(|| panic!("{metrics}"));
    assert!((19..=20).contains(&before), "{metrics}");
    assert!(
        sample(&metrics, "gridpow_tls_certs_expiring_soon").unwrap() >= 2,
        "{metrics}"
    );
    let stats = http_get(http, &token, "/api/v1/stats");
    assert!(
        stats.contains("\"role\":\"mqtt_client\"") && stats.contains("\"ends_soon\":true"),
        "{stats}"
    );
    let warned = std::fs::read_to_string(root.join("server.log")).unwrap();
    assert!(
        warned.contains("days left"),
        "no 30-day warning at start:\n{warned}"
    );

    // Midway, while the meters send: renew, install, SIGHUP.
    let o = gridpow(&[
        "keys", "renew", "--dir", &k, "--days", "400", "--name", "relay-1", "--name", "server-1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gridpow(&["keys", "renew", "--dir", &k, "--name", "relay-9"]);
    assert!(!o.status.success(), "an unknown name must be refused");
    assert!(
        text(&o).contains("relay-9") && text(&o).contains("relay-1, server-1"),
        "{}",
        text(&o)
    );
    install(
        &keys.tls_files("relay-1").cert,
        &relay_bundle.join("tls/relay-1.pem"),
    );
    install(
        &keys.tls_files("server-1").cert,
        &server_bundle.join("tls/server-1.pem"),
    );
    hangup(relay.id().unwrap());
    hangup(server.id().unwrap());
    relay.wait_log("TLS material reloaded", Duration::from_secs(20));
    server.wait_log("TLS material reloaded", Duration::from_secs(20));
    let reloaded = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    meters.interrupt(Duration::from_secs(40));

    let want = common::truth_keys(&truth);
    assert!(
        want.len() >= 10 * 10,
        "only {} readings generated",
        want.len()
    );
    let got = common::stored_keys_when(&db, want.len(), Duration::from_secs(60));
    let lost = want.difference(&got).count();
    eprintln!(
        "cert_renew: {} readings generated, {} stored, {lost} lost; reloaded {:?} before the meters stopped",
        want.len(),
        got.len(),
        reloaded.elapsed()
    );
    assert_eq!(lost, 0, "{lost} readings lost\n{}", logs());
    assert_eq!(got, want, "stored readings differ from the generated ones");

    // After: the new end in /metrics, for the server and (from its status) the relay.
    let metrics = http_get(http, &token, "/metrics");
    let after = sample(&metrics, &client_metric).unwrap_or_else(|| panic!("{metrics}"));
    assert!((399..=400).contains(&after), "{metrics}");
    assert!(
        sample(&metrics, "gridpow_server_tls_reloads_total").unwrap() >= 1,
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = http_get(http, &token, "/metrics");
        let relay_days = sample(&m, "gridpow_relay_tls_cert_expiry_days{relay=\"1\"}");
        if relay_days.is_some_and(|d| d >= 399) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relay's status never showed the new end:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let relay_log = std::fs::read_to_string(root.join("relay.log")).unwrap();
    assert!(relay_log.contains("relay-1.pem"), "{relay_log}");
    relay.interrupt(Duration::from_secs(30));
    server.interrupt(Duration::from_secs(30));
}
