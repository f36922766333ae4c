//! The dashboard of a fleet of 10 000 meters in a real browser: Debian's
//! Chromium, headless, driven over WebDriver (ChromeDriver), against a real
//! server on SQLite holding verified blocks of 10 000 meters on four relays
//! (one relay's meters silent, some voltages out of band).
//!
//! Checks what an operator sees and does: the fleet tiles, the meter table's
//! first page, sorting by power, searching by id, paging, the silent filter,
//! a block's readings with links to their proofs. Prints the page load time
//! and each interaction's time (table re-rendered after the click), measured
//! in the page; they are reported, not asserted (docs/dashboard.md).
//! `GRIDPOW_DASHBOARD_PNG=path` also saves a screenshot.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Site;
use fantoccini::{Client, ClientBuilder, Locator};
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::uplink::{seal, UplinkHeader};
use gridpow_proto::wire::Reading;
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::verify_payload;
use gridpow_server::Server;
use gridpow_store::{open_store, Arrival, Ingest};
use gridpow_testkit::{free_port, KillOnDrop};
use serde_json::{json, Value};

const METERS: u32 = 10_000;
const RELAYS: u32 = 4;
const LEAVES_PER_BLOCK: usize = 250;
const READINGS_PER_FRAME: u32 = 3;

/// Meter `m`'s reading `seq`: 230 V ± a few volts, every 97th meter at 262 V
/// (above the band), a load that depends on the meter; consistent P = V·I·PF.
fn reading(t0: u64, meter: u32, seq: u32) -> Reading {
    let v_cv: u16 = if meter % 97 == 0 {
        26_200
    } else {
        22_600 + (meter % 800) as u16
    };
    let amps_ma = 500 + (meter * 37 + seq * 11) % 9_000;
    let p_dw = (f64::from(v_cv) / 100.0 * f64::from(amps_ma) / 1000.0 * 0.95 * 10.0).round() as i32;
    Reading {
        timestamp_ms: t0 + u64::from(seq) * 10_000,
        voltage_cv: v_cv,
        current_ma: amps_ma,
        active_power_dw: p_dw,
        power_factor_e4: 9_500,
        frequency_mhz: 50_000,
        energy_mwh: 1_000_000 + u64::from(meter) * 1_000 + u64::from(seq) * 5_000,
        flags: 0,
    }
}

/// Fills the site's database with one frame of three readings per meter,
/// meters spread over the relays' chains, through the real verifier.
fn fill_database(site: &Site) {
    let secret = site.keys.site().unwrap();
    let key_id = secret.current_key_id;
    let now = gridpow_common::wall_ms();
    let t0 = now - 40_000;
    let per_relay = METERS / RELAYS;
    let mut keyring = Keyring::load(&site.keys).unwrap();
    let mut store = open_store(
        &site.db_path().display().to_string(),
        gridpow_store::StoreOptions::default(),
    )
    .unwrap();
    for relay in 1..=RELAYS {
        let meters: Vec<u32> = ((relay - 1) * per_relay + 1..=relay * per_relay).collect();
        let mut prev = [0u8; 32];
        for (height, chunk) in meters.chunks(LEAVES_PER_BLOCK).enumerate() {
            let frames: Vec<Vec<u8>> = chunk
                .iter()
                .map(|&m| {
                    let keys = gridpow_proto::crypto::MeterKeys::new(
                        &RustCrypto,
                        key_id,
                        &secret.meter_secret(m, key_id).unwrap(),
                    );
                    let header = UplinkHeader {
                        key_id,
                        meter_id: m,
                        boot_epoch: 1,
                        counter: 0,
                    };
                    let readings: Vec<Reading> =
                        (0..READINGS_PER_FRAME).map(|s| reading(t0, m, s)).collect();
                    let mut out = [0u8; 250];
                    let len = seal(&RustCrypto, &keys, &header, 0, &readings, &mut out).unwrap();
                    out[..len].to_vec()
                })
                .collect();
            let (bytes, hash) = site.block(relay, height as u64, prev, 8, &frames);
            prev = hash;
            let block = verify_payload(&mut keyring, 8, &bytes).unwrap();
            // Relay 4's meters were last heard 20 minutes ago: they are silent now.
            let heard = if relay == RELAYS {
                now - 1_200_000
            } else {
                now - 5_000
            };
            let received_ms = now - 600_000 + (relay as u64 * 100 + height as u64) * 1_000;
            store
                .commit(
                    &[Ingest::Block {
                        arrival: Arrival {
                            received_ms,
                            topic: format!("gridpow/v1/relays/{relay}/blocks"),
                        },
                        block,
                    }],
                    heard,
                )
                .unwrap();
        }
    }
    let silent = store.sweep_silent(now, 600_000, 0).unwrap();
    assert_eq!(
        silent.len() as u32,
        per_relay,
        "relay 4's meters are silent"
    );
}

/// Starts ChromeDriver on a free port and a headless Chromium session.
async fn browser() -> (KillOnDrop, tempfile::TempDir, Client) {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "ChromeDriver is required: apt-get install chromium-driver (scripts/deps.sh does it)",
        );
    let port = free_port().unwrap();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child);
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1500,1800", "--no-first-run", "--disable-background-networking",
                     format!("--user-data-dir={}", profile.path().display())],
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let start = Instant::now();
    loop {
        match ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (guard, profile, c),
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session with Chromium: {e}"),
        }
    }
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Runs `action` (JavaScript) in the page and waits until the meter table has
/// re-rendered; returns the time it took, measured in the page, ms.
async fn timed(c: &Client, action: &str) -> f64 {
    let script = format!(
        r#"const done = arguments[arguments.length - 1];
        const t = document.getElementById("meters-table");
        const v0 = t.dataset.version, t0 = performance.now();
        const obs = new MutationObserver(() => {{
          if (t.dataset.version !== v0) {{ obs.disconnect(); done(performance.now() - t0); }}
        }});
        obs.observe(t, {{ attributes: true }});
        {action}"#
    );
    c.execute_async(&script, vec![])
        .await
        .unwrap()
        .as_f64()
        .unwrap()
}

/// The meter ids of the table's rows.
async fn table_ids(c: &Client) -> Vec<u64> {
    let v = js(
        c,
        "return [...document.querySelectorAll('#meters-table tbody tr[data-meter]')].map(r => Number(r.dataset.meter));",
    )
    .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_of_ten_thousand_meters_loads_sorts_searches_and_pages_in_headless_chromium() {
    let started = Instant::now();
    let meters: Vec<u32> = (1..=METERS).collect();
    let relays: Vec<u32> = (1..=RELAYS).collect();
    let site = Site::new(&relays, &meters);
    let fill = Instant::now();
    fill_database(&site);
    eprintln!(
        "fleet: {METERS} meters provisioned and {} readings stored in {:.1} s (set-up {:.1} s)",
        METERS * READINGS_PER_FRAME,
        fill.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let mut cfg = site.config(free_port().unwrap());
    cfg.mqtt.tls = false;
    cfg.plausibility.silent_after_intervals = 1_000_000;
    let server = Server::start(cfg).await.unwrap();
    let base = format!("http://{}", server.http_addr());

    let (_driver, _profile, c) = browser().await;
    let load = Instant::now();
    c.goto(&format!("{base}/login?token={}", site.admin))
        .await
        .unwrap();
    loop {
        let ready = js(
            &c,
            "return document.body.dataset.ready === '1' && document.querySelectorAll('#meters-table tbody tr[data-meter]').length;",
        )
        .await;
        if ready.as_u64() == Some(50) {
            break;
        }
        assert!(
            load.elapsed() < Duration::from_secs(60),
            "the dashboard did not show the meter table: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_ms = load.elapsed().as_secs_f64() * 1000.0;
    let in_page = js(&c, "return performance.now();").await.as_f64().unwrap();

    // The tiles: the whole fleet, its silent part, the band.
    let text = |id: &str| format!("return document.getElementById('{id}').textContent;");
    assert_eq!(js(&c, &text("meters-count")).await, json!("10,000"));
    assert_eq!(js(&c, &text("meters-silent")).await, json!("2,500"));
    assert_eq!(js(&c, &text("band")).await, json!("207–253 V"));
    let range = js(&c, &text("meters-range")).await;
    assert_eq!(range, json!("1–50 of 10,000 meters"));
    assert_eq!(table_ids(&c).await, (1..=50).collect::<Vec<u64>>());
    let voltage_now = js(&c, &text("voltage-now")).await;
    // Every 97th of the 7 500 reporting meters is above the band.
    assert!(
        voltage_now.as_str().unwrap().contains("77 above"),
        "{voltage_now}"
    );

    // Sort by power, highest first: the first row has the fleet's highest power.
    let sort_ms = timed(&c, "document.querySelector('th[data-sort=power]').click();").await;
    let ids = table_ids(&c).await;
    let api: Value = js(
        &c,
        "return fetch('/api/v1/fleet/meters?sort=power&order=desc&limit=50').then(r => r.json()).then(p => p.rows.map(m => m.meter_id));",
    )
    .await;
    let api: Vec<u64> = api
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(ids, api, "the table shows the server's order");

    // Search by id prefix: 123 and 1230..1239.
    let search_ms = timed(
        &c,
        "const s = document.getElementById('meter-search'); s.value = '123'; s.dispatchEvent(new Event('input'));",
    )
    .await;
    let mut found = table_ids(&c).await;
    found.sort_unstable();
    assert_eq!(
        found,
        [123].into_iter().chain(1230..=1239).collect::<Vec<u64>>()
    );
    assert!(js(&c, &text("meters-range"))
        .await
        .as_str()
        .unwrap()
        .contains("of 11 matching"));

    // Back to all meters by id, then the next page.
    timed(
        &c,
        "const s = document.getElementById('meter-search'); s.value = ''; s.dispatchEvent(new Event('input'));",
    )
    .await;
    timed(&c, "document.querySelector('th[data-sort=id]').click();").await;
    let page_ms = timed(&c, "document.getElementById('page-next').click();").await;
    assert_eq!(table_ids(&c).await, (51..=100).collect::<Vec<u64>>());

    // Only silent meters: relay 4's, with no "now" value.
    let filter_ms = timed(
        &c,
        "const f = document.getElementById('meter-filter'); f.value = 'silent'; f.dispatchEvent(new Event('change'));",
    )
    .await;
    assert_eq!(table_ids(&c).await.first(), Some(&7_501));
    let cells = js(
        &c,
        "const r = document.querySelector('#meters-table tbody tr'); return [r.cells[2].textContent, r.cells[3].textContent];",
    )
    .await;
    assert_eq!(cells, json!(["silent", "–"]));

    // A block's readings, each linking to its inclusion proof, which verifies.
    c.find(Locator::Css("#blocks-table tbody tr[data-block]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let link = loop {
        let href = js(
            &c,
            "const a = document.querySelector('#block-readings-table a'); return a ? a.getAttribute('href') : null;",
        )
        .await;
        if let Some(h) = href.as_str() {
            break h.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        link.starts_with("/api/v1/readings/") && link.ends_with("/proof"),
        "{link}"
    );
    let proof = js(&c, &format!("return fetch('{link}').then(r => r.json());")).await;
    assert_eq!(proof["verified"], json!(true), "{proof}");
    assert_eq!(proof["signature_verified"], json!(true), "{proof}");

    if let Ok(path) = std::env::var("GRIDPOW_DASHBOARD_PNG") {
        js(&c, "document.getElementById('meter-filter').value = 'all'; document.getElementById('meter-filter').dispatchEvent(new Event('change')); window.scrollTo(0, 0);").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        std::fs::write(&path, c.screenshot().await.unwrap()).unwrap();
        eprintln!("screenshot: {path}");
    }
    eprintln!(
        "dashboard with {METERS} meters: page load to a filled meter table {load_ms:.0} ms \
         (in-page clock {in_page:.0} ms); sort by power {sort_ms:.0} ms; search {search_ms:.0} ms \
         (incl. 150 ms typing debounce); next page {page_ms:.0} ms; silent filter {filter_ms:.0} ms"
    );
    c.close().await.unwrap();
    server.shutdown().await;
}
