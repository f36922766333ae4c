//! The `gridpow` binary end to end: keys, the demo's summary, and the offline
//! ledger check catching a single altered byte.
#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

use std::path::Path;

mod common;

use common::{gridpow, text};

#[test]
fn keys_init_and_add_meter_write_secret_files_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let k = keys.to_str().unwrap();
    let o = gridpow(&["keys", "init", "--dir", k, "--relays", "1,2"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gridpow(&[
        "keys",
        "add-meter",
        "--dir",
        k,
        "--id",
        "7",
        "--mac",
        "aa:bb:cc:dd:ee:07",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("meters/7.toml") && text(&o).contains("meters/7.bin"));
    let blob = std::fs::read(keys.join("meters/7.bin")).unwrap();
    let cfg = gridpow_firmware_logic::provisioning::MeterConfig::decode(&blob).unwrap();
    assert_eq!((cfg.meter_id, cfg.key_id), (7, 1));
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "site.toml",
        "relays/1.key",
        "relays/2.key",
        "server.key",
        "meters/7.toml",
        "tls/ca.key",
        "tls/relay-2.key",
    ] {
        let mode = std::fs::metadata(keys.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let reg = std::fs::read_to_string(keys.join("meters.toml")).unwrap();
    assert!(reg.contains("AA:BB:CC:DD:EE:07"), "{reg}");
    // Running init again must not overwrite the site secret.
    let o = gridpow(&["keys", "init", "--dir", k]);
    assert!(!o.status.success());
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
}

#[test]
fn bulk_meter_import_names_the_bad_csv_line() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let k = keys.to_str().unwrap();
    assert!(gridpow(&["keys", "init", "--dir", k]).status.success());
    let csv = dir.path().join("meters.csv");
    std::fs::write(&csv, "id,mac\n1,02:00:00:00:00:01\n2,\n3,not-a-mac\n").unwrap();
    let o = gridpow(&[
        "keys",
        "add-meters",
        "--dir",
        k,
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("meters.csv:4"), "{}", text(&o));
    std::fs::write(&csv, "id,mac\n1,02:00:00:00:00:01\n2,\n").unwrap();
    let o = gridpow(&[
        "keys",
        "add-meters",
        "--dir",
        k,
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gridpow(&["keys", "add-meters", "--dir", k, "--range", "3-40"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(keys.join("meters.toml"))
            .unwrap()
            .matches("[[meter]]")
            .count(),
        40
    );
}

#[test]
fn broken_config_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(&cfg, "relay_id = 1\ndifficulty = \"hard\"\n").unwrap();
    let o = gridpow(&["relay", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("relay.toml") && t.contains("difficulty"), "{t}");
    let o = gridpow(&[
        "server",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("missing.toml"), "{}", text(&o));
}

#[test]
fn example_configs_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["relay", "server", "meters"] {
        let o = gridpow(&["example-config", kind]);
        assert!(o.status.success(), "{}", text(&o));
        let p = dir.path().join(format!("{kind}.toml"));
        std::fs::write(&p, &o.stdout).unwrap();
        let v: toml::Value = toml::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
        assert!(v.as_table().is_some_and(|t| !t.is_empty()), "{kind}");
    }
}

#[test]
fn a_missing_keys_dir_is_named_with_its_setting_and_the_commands_that_make_it() {
    let dir = tempfile::tempdir().unwrap();
    for (kind, keys) in [("relay", "relay-1"), ("server", "server-1")] {
        let o = gridpow(&["example-config", kind]);
        let cfg = dir.path().join(format!("{kind}.toml"));
        // Relative paths in the example resolve against the working directory.
        let body = String::from_utf8_lossy(&o.stdout).replace(
            &format!("keys_dir = \"{keys}\""),
            &format!("keys_dir = \"{}\"", dir.path().join(keys).display()),
        );
        std::fs::write(&cfg, body).unwrap();
        let o = gridpow(&[kind, "--config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let line = err.lines().last().unwrap_or("");
        assert!(
            line.contains("does not exist (setting `keys_dir`)")
                && line.contains("gridpow keys init")
                && line.contains(&format!("gridpow keys export {kind}")),
            "{err}"
        );
        // Each cause once: no "…: No such file…: No such file…".
        let parts: Vec<&str> = line.split(": ").collect();
        let mut seen = std::collections::HashSet::new();
        assert!(
            parts.iter().all(|p| seen.insert(*p)),
            "repeated text: {line}"
        );
    }
}

fn alter_one_byte_of_a_stored_reading(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let n = c.execute("UPDATE readings SET power_dw = power_dw + 1 WHERE id = (SELECT id FROM readings ORDER BY id LIMIT 1 OFFSET 5)", []).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn demo_stores_every_reading_once_and_the_ledger_detects_one_altered_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let d = data.to_str().unwrap();
    let o = gridpow(&[
        "demo",
        "--meters",
        "12",
        "--duration",
        "8",
        "--loss",
        "0.25",
        "--data-dir",
        d,
        // A host name, resolved at start (issue 12: `--http localhost:8080`).
        "--http",
        "localhost:0",
        "--difficulty",
        "12",
        "--json",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    let n = |k: &str| {
        s[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {s}"))
    };
    assert!(n("generated") >= 12 * 6, "{s}");
    assert_eq!(n("lost"), 0, "{s}");
    assert_eq!(n("stored"), n("generated"), "{s}");
    assert_eq!(n("acknowledged"), n("generated"), "{s}");
    assert!(n("blocks") >= 2, "{s}");
    assert!(n("latency_p50_ms") <= n("latency_p99_ms"), "{s}");
    assert!(
        n("retransmissions") > 0,
        "25 % loss must cause retransmissions: {s}"
    );
    // Each reading is in the database exactly once.
    let db = data.join("gridpow.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let (rows, distinct): (i64, i64) = c
            .query_row("SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT meter_id, epoch, seq FROM readings)) FROM readings", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(rows as u64, n("stored"));
        assert_eq!(rows, distinct);
        // What the block age costs, as the summary reports it, from the database itself.
        let bytes: i64 = c
            .query_row("SELECT SUM(LENGTH(raw)) FROM blocks", [], |r| r.get(0))
            .unwrap();
        let per_reading = s["ledger_bytes_per_reading"].as_f64().unwrap();
        assert!(
            (per_reading - bytes as f64 / rows as f64).abs() < 1e-6,
            "{s}"
        );
    }
    let f = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {s}"))
    };
    // Judged over the traffic, which is part of the run: the blocks sealed
    // by its end (the drain's come after) over its length.
    let traffic = f("traffic_seconds");
    assert!(traffic > 0.0 && traffic < f("seconds"), "{s}");
    let per_hour = f("blocks_per_hour");
    assert!(per_hour > 0.0, "{s}");
    assert!(
        per_hour <= n("blocks") as f64 * 3600.0 / traffic + 1e-6,
        "{s}"
    );
    assert!((0.0..=1.0).contains(&f("pow_busy")), "{s}");
    let o = gridpow(&["verify-ledger", "--data-dir", d]);
    assert!(o.status.success(), "{}", text(&o));
    alter_one_byte_of_a_stored_reading(&db);
    let o = gridpow(&["verify-ledger", "--data-dir", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("LEDGER INVALID") && t.contains("block"), "{t}");
}

#[test]
fn demo_runs_on_postgresql_and_its_ledger_verifies() {
    let pg = gridpow_testkit::pg_harness::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.create_database().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = gridpow(&[
        "demo",
        "--meters",
        "8",
        "--duration",
        "6",
        "--db",
        &url,
        "--data-dir",
        d,
        "--http",
        "127.0.0.1:0",
        "--difficulty",
        "12",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let s: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(s["lost"], 0, "{s}");
    assert!(s["stored"].as_u64().unwrap() >= 8 * 4, "{s}");
    assert_eq!(s["ledger_verified"], true, "{s}");
    let keys = dir.path().join("keys");
    let o = gridpow(&[
        "verify-ledger",
        "--db",
        &url,
        "--keys",
        keys.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn tokens_are_printed_once_stored_as_hashes_with_mode_0600_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server-1").join("tokens.toml");
    let f = file.to_str().unwrap();
    let create = |name: &str, role: &str, meter: Option<&str>| {
        let mut args = vec![
            "tokens", "create", "--file", f, "--name", name, "--role", role,
        ];
        if let Some(m) = meter {
            args.extend(["--meter", m]);
        }
        gridpow(&args)
    };
    let o = create("grafana", "viewer", None);
    assert!(o.status.success(), "{}", text(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(token.starts_with("gpt_") && token.len() == 68, "{token}");
    let o = create("house-17", "customer", Some("17"));
    assert!(o.status.success(), "{}", text(&o));
    let o = create("house-18", "customer", None);
    assert!(
        !o.status.success() && text(&o).contains("--meter"),
        "{}",
        text(&o)
    );
    let o = create("grafana", "admin", None);
    assert!(
        !o.status.success() && text(&o).contains("exists"),
        "{}",
        text(&o)
    );
    let o = create("x", "root", None);
    assert!(
        !o.status.success() && text(&o).contains("unknown role"),
        "{}",
        text(&o)
    );
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token[4..]), "{stored}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let o = gridpow(&["tokens", "list", "--file", f]);
    let listed = text(&o);
    assert!(o.status.success(), "{listed}");
    assert!(
        listed.contains("grafana") && listed.contains("viewer"),
        "{listed}"
    );
    assert!(
        listed.contains("house-17") && listed.contains("17"),
        "{listed}"
    );
    assert!(!listed.contains(&token[4..]), "{listed}");
    let o = gridpow(&["tokens", "revoke", "--file", f, "--name", "grafana"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = gridpow(&["tokens", "revoke", "--file", f, "--name", "grafana"]);
    assert!(!o.status.success(), "{}", text(&o));
    let listed = text(&gridpow(&["tokens", "list", "--file", f]));
    assert!(
        !listed.contains("grafana") && listed.contains("house-17"),
        "{listed}"
    );
}

#[test]
fn relay_blob_from_the_bundle_carries_wifi_broker_and_tls_as_der() {
    use gridpow_firmware_logic::provisioning::{RelayConfig, RelayMode};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let k = keys.to_str().unwrap();
    let o = gridpow(&[
        "keys",
        "init",
        "--dir",
        k,
        "--broker-name",
        "broker.site.example",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for (id, mac) in [("1", "aa:bb:cc:dd:ee:01"), ("2", "aa:bb:cc:dd:ee:02")] {
        let o = gridpow(&["keys", "add-meter", "--dir", k, "--id", id, "--mac", mac]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let bundle = dir.path().join("relay-1");
    let b = bundle.to_str().unwrap();
    let o = gridpow(&[
        "keys", "export", "relay", "--dir", k, "--id", "1", "--out", b,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pass = dir.path().join("wifi-pass");
    std::fs::write(&pass, "correct horse battery\n").unwrap();
    let p = pass.to_str().unwrap();
    let args = |extra: &[&str]| {
        let mut v = vec![
            "keys",
            "relay-blob",
            "--id",
            "1",
            "--channel",
            "6",
            "--wifi-ssid",
            "site-ap",
            "--wifi-pass-file",
            p,
            "--broker-host",
            "broker.site.example",
        ];
        v.extend_from_slice(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| gridpow(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // The master key directory holds the site secret: refused.
    let o = run(args(&["--bundle", k]));
    assert!(!o.status.success());
    assert!(text(&o).contains("site secret"), "{}", text(&o));

    let o = run(args(&["--bundle", b, "--require-registered-mac"]));
    assert!(o.status.success(), "{}", text(&o));
    let path = bundle.join("relay-1.bin");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let blob = std::fs::read(&path).unwrap();
    let cfg = RelayConfig::decode(&blob).unwrap();
    assert_eq!(cfg.mode, RelayMode::Standalone);
    assert_eq!((cfg.relay_id, cfg.channel, cfg.meter_count), (1, 6, 2));
    assert!(cfg.require_registered_mac);
    assert_eq!(cfg.wifi_ssid.as_str(), "site-ap");
    assert_eq!(cfg.wifi_password.as_str(), "correct horse battery");
    assert_eq!(cfg.broker_host.as_str(), "broker.site.example");
    assert_eq!(cfg.broker_port, 8883);
    assert_eq!(
        cfg.meter(&blob, 1).unwrap().mac,
        Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 2])
    );
    let tls = cfg.tls(&blob).unwrap();
    let der = |f: &str| {
        pem::parse(std::fs::read(bundle.join(f)).unwrap())
            .unwrap()
            .into_contents()
    };
    assert_eq!(tls.ca_der, der("tls/ca.pem").as_slice());
    assert_eq!(tls.cert_der, der("tls/relay-1.pem").as_slice());
    assert_eq!(tls.key_der, der("tls/relay-1.key").as_slice());

    // A passphrase WPA2 cannot use is refused before anything is written.
    std::fs::write(&pass, "short\n").unwrap();
    let o = run(args(&["--bundle", b, "--out", "/nonexistent/x.bin"]));
    assert!(!o.status.success());
    assert!(text(&o).contains("8 to 63 characters"), "{}", text(&o));
}

#[test]
fn example_configs_comment_every_field_and_service_help_lists_its_environment_variables() {
    for (kind, var, other) in [
        ("relay", "GRIDPOW_RELAY__MQTT__PORT", "GRIDPOW_METERS__"),
        ("server", "GRIDPOW_SERVER__HTTP__LISTEN", "GRIDPOW_RELAY__"),
        (
            "meters",
            "GRIDPOW_METERS__RADIO__UDP_RELAY",
            "GRIDPOW_RELAY__",
        ),
    ] {
        let o = gridpow(&["example-config", kind]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let mut prev = "";
        let mut fields = 0;
        for line in out.lines() {
            if line.starts_with('[') || (!line.starts_with(['#', ' ', ']']) && line.contains(" = "))
            {
                assert!(
                    prev.starts_with('#'),
                    "{kind}: no comment above {line}\n{out}"
                );
                fields += 1;
            }
            prev = line;
        }
        assert!(fields >= 8, "{kind}: {fields} fields\n{out}");
        let o = gridpow(&[kind, "--help"]);
        assert!(o.status.success(), "{}", text(&o));
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.contains(var) && help.contains("NO_COLOR"),
            "{kind} --help:\n{help}"
        );
        assert!(
            !help.contains(other),
            "{kind} --help names {other}:\n{help}"
        );
    }
}

#[test]
fn the_server_refuses_a_taken_http_port_naming_it_and_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let server = dir.path().join("server-1");
    let (k, s) = (keys.to_string_lossy(), server.to_string_lossy());
    assert!(gridpow(&["keys", "init", "--dir", &k]).status.success());
    assert!(
        gridpow(&["keys", "export", "server", "--dir", &k, "--out", &s])
            .status
            .success()
    );
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "keys_dir = \"{s}\"\ndb = \"{}\"\n",
            dir.path().join("g.db").display()
        ),
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = gridpow(&[
        "server",
        "--config",
        &cfg.to_string_lossy(),
        "--http",
        &addr,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("cannot listen on {addr} (--http)")),
        "{err}"
    );
    assert!(
        !dir.path().join("g.db").exists(),
        "the database was touched before the preflight"
    );
}

#[test]
fn relay_and_server_name_the_unreachable_broker_with_tls_and_settings_and_say_where_they_start() {
    use common::{free_tcp_port, free_udp_port};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let k = common::keys_with_meters(root, "1-3");
    let (r, s) = (root.join("relay-1"), root.join("server-1"));
    common::export_bundle(&[
        "relay",
        "--dir",
        &k,
        "--id",
        "1",
        "--out",
        &r.to_string_lossy(),
    ]);
    common::export_bundle(&["server", "--dir", &k, "--out", &s.to_string_lossy()]);
    // Nothing listens on this port.
    let port = free_tcp_port();
    let db = root.join("gridpow.db");
    std::fs::write(
        root.join("server.toml"),
        format!("keys_dir = \"{}\"\ndb = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n[http]\nlisten = \"127.0.0.1:0\"\n", s.display(), db.display()),
    )
    .unwrap();
    std::fs::write(
        root.join("relay.toml"),
        format!("keys_dir = \"{}\"\ndata_dir = \"{}\"\n[radio]\nudp_listen = \"127.0.0.1:{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n", r.display(), root.join("relay-data").display(), free_udp_port()),
    )
    .unwrap();
    let cfg = |n: &str| root.join(n).to_string_lossy().into_owned();
    let mut server = common::spawn_logging(
        "server",
        &["server", "--config", &cfg("server.toml")],
        &root.join("server.log"),
        "warn",
    );
    let mut relay = common::spawn_logging(
        "relay",
        &["relay", "--config", &cfg("relay.toml")],
        &root.join("relay.log"),
        "warn",
    );
    let log = |n: &str| std::fs::read_to_string(root.join(n)).unwrap_or_default();
    let want = [
        (
            "server.log",
            format!("cannot connect to the MQTT broker at 127.0.0.1:{port} (TLS, MQTT 5)"),
        ),
        (
            "relay.log",
            format!("cannot connect to the MQTT broker at 127.0.0.1:{port} (TLS, MQTT 3.1.1)"),
        ),
    ];
    let start = Instant::now();
    while !want.iter().all(|(f, w)| log(f).contains(w.as_str())) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "--- server\n{}\n--- relay\n{}",
            log("server.log"),
            log("relay.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.interrupt(Duration::from_secs(30));
    relay.interrupt(Duration::from_secs(30));
    let (server_log, relay_log) = (log("server.log"), log("relay.log"));
    for l in [&server_log, &relay_log] {
        assert!(
            l.contains("Connection refused") && l.contains("nothing listens there"),
            "{l}"
        );
        assert!(l.contains("[mqtt] host, port, tls"), "{l}");
        assert!(!l.contains('\u{1b}'), "colour codes in a log file:\n{l}");
    }
    assert!(
        server_log.contains("GRIDPOW_SERVER__MQTT__PORT"),
        "{server_log}"
    );
    assert!(
        relay_log.contains("GRIDPOW_RELAY__MQTT__PORT"),
        "{relay_log}"
    );
    // Start and stop lines: which database, which broker, which chain head.
    let broker = format!("broker 127.0.0.1:{port} (TLS, MQTT 5)");
    assert!(
        server_log.contains(&format!(
            "grid server running: database {} (0 blocks, 0 readings stored), {broker}",
            db.display()
        )),
        "{server_log}"
    );
    assert!(
        server_log.contains(&format!(
            "grid server stopped: database {} holds 0 blocks",
            db.display()
        )),
        "{server_log}"
    );
    assert!(
        relay_log.contains(&format!("broker 127.0.0.1:{port} (TLS, MQTT 3.1.1)"))
            && relay_log.contains("starting a new chain"),
        "{relay_log}"
    );
    assert!(
        relay_log.contains("relay 1 stopped: 0 blocks sealed"),
        "{relay_log}"
    );
}

#[test]
fn meters_with_no_relay_answering_warn_naming_the_relay_address_and_its_setting() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let k = common::keys_with_meters(root, "1-3");
    // Nothing listens on the relay's air address.
    let air = common::free_udp_port();
    std::fs::write(
        root.join("meters.toml"),
        format!(
            "keys_dir = \"{k}\"\nstate_dir = \"{}\"\ninterval_s = 0.5\nno_ack_warn_s = 2\n[radio]\nudp_relay = \"127.0.0.1:{air}\"\nudp_listen = \"127.0.0.1:0\"\n",
            root.join("state").display()
        ),
    )
    .unwrap();
    let log = root.join("meters.log");
    let mut meters = common::spawn_logging(
        "meters",
        &[
            "meters",
            "--config",
            &root.join("meters.toml").to_string_lossy(),
        ],
        &log,
        "warn",
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while !read().contains("no relay has answered") {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", read());
        std::thread::sleep(Duration::from_millis(200));
    }
    let l = read();
    assert!(
        l.contains(&format!(
            "the relay at 127.0.0.1:{air} ([radio] udp_relay, GRIDPOW_METERS__RADIO__UDP_RELAY)"
        )),
        "{l}"
    );
    assert!(l.contains("`gridpow relay` runs"), "{l}");
    assert!(!l.contains('\u{1b}'), "{l}");
    // Stopping waits up to 30 s for ACKs that will not come; kill instead.
    meters.interrupt_or_kill(Duration::from_secs(2));
}

#[test]
fn an_expired_certificate_stops_the_relay_and_the_server_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let k = root.join("keys").to_string_lossy().into_owned();
    assert!(gridpow(&["keys", "init", "--dir", &k]).status.success());
    let (r, s) = (root.join("relay-1"), root.join("server-1"));
    common::export_bundle(&[
        "relay",
        "--dir",
        &k,
        "--id",
        "1",
        "--out",
        &r.to_string_lossy(),
    ]);
    common::export_bundle(&["server", "--dir", &k, "--out", &s.to_string_lossy()]);
    // A CA certificate that ended on 1 January 2021.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    for bundle in [&r, &s] {
        std::fs::write(bundle.join("tls").join("ca.pem"), &expired).unwrap();
    }
    std::fs::write(
        root.join("relay.toml"),
        format!(
            "keys_dir = \"{}\"\ndata_dir = \"{}\"\n[radio]\nudp_listen = \"127.0.0.1:0\"\n",
            r.display(),
            root.join("relay-data").display()
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("server.toml"),
        format!(
            "keys_dir = \"{}\"\ndb = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            s.display(),
            root.join("g.db").display()
        ),
    )
    .unwrap();
    for (kind, bundle) in [("relay", &r), ("server", &s)] {
        let cfg = root.join(format!("{kind}.toml"));
        let o = gridpow(&[kind, "--config", &cfg.to_string_lossy()]);
        assert_eq!(o.status.code(), Some(2), "{kind}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let ca = bundle.join("tls").join("ca.pem");
        assert!(
            err.contains(&format!("{}: certificate valid from", ca.display()))
                && err.contains("2020")
                && err.contains("2021")
                && err.contains("expired"),
            "{kind}: {err}"
        );
    }
    assert!(!root.join("relay-data").exists() && !root.join("g.db").exists());
}
