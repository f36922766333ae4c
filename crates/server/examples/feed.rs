//! Runs the grid server against a private Mosquitto (mutual TLS) and feeds it
//! signed blocks of realistic readings from a simulated relay, with a gap, a
//! fork and some garbage on the way, so the dashboard has something to show.
//!
//! ```text
//! cargo run -p gridpow-server --example feed -- [seconds] [meters] [http-port]
//! ```
//! Prints the dashboard URL; stops after `seconds` (default 60).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use gridpow_common::topics;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_proto::block::BlockBuilder;
use gridpow_proto::crypto::{MeterKeys, RustCrypto};
use gridpow_proto::pow::solve_blocking;
use gridpow_proto::wire::uplink::{seal, UplinkHeader};
use gridpow_proto::wire::Reading;
use gridpow_server::config::{HttpConfig, MqttConfig, PlausibilityConfig};
use gridpow_server::{Server, ServerConfig};
use gridpow_testkit::{Mosquitto, MosquittoOptions};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

/// A household load: base load, a daily-ish wave and appliance steps.
fn reading(meter: u32, seq: u32, t_ms: u64) -> Reading {
    let phase = f64::from(seq) / 30.0 + f64::from(meter);
    let appliance = if (seq / 20 + meter) % 5 == 0 {
        2000.0
    } else {
        0.0
    };
    let watts = 300.0 + 250.0 * phase.sin() + appliance + f64::from(meter % 7) * 40.0;
    let volts = 230.0 + 2.5 * (phase * 1.7).sin();
    let pf = 0.95;
    let amps = watts / (volts * pf);
    Reading {
        timestamp_ms: t_ms,
        voltage_cv: (volts * 100.0) as u16,
        current_ma: (amps * 1000.0) as u32,
        active_power_dw: (watts * 10.0) as i32,
        power_factor_e4: (pf * 10_000.0) as i16,
        frequency_mhz: 50_000 + (seq % 7) as u16,
        energy_mwh: 5_000_000 + u64::from(seq) * 1_000,
        flags: 0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(60);
    let meters = args.get(1).copied().unwrap_or(12) as u32;
    let http_port = args.get(2).copied().unwrap_or(0) as u16;
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    keys.init(&InitOptions::default()).unwrap();
    keys.add_meters(&(1..=meters).map(|m| (m, None)).collect::<Vec<_>>())
        .unwrap();
    let broker = Mosquitto::start(
        &keys,
        &MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .unwrap();
    // The server runs from its least-privilege bundle (it refuses the CA key).
    let bundle = gridpow_keys::KeyDir::new(keys.root().with_file_name("server-bundle"));
    keys.export_server_bundle("server-1", &bundle).unwrap();
    let cfg = ServerConfig {
        keys_dir: bundle.root().to_path_buf(),
        db: dir.path().join("ledger.db").display().to_string(),
        min_difficulty: 12,
        mqtt: MqttConfig {
            host: "127.0.0.1".into(),
            port: broker.port,
            ..MqttConfig::default()
        },
        http: HttpConfig {
            listen: ([127, 0, 0, 1], http_port).into(),
            ..HttpConfig::default()
        },
        plausibility: PlausibilityConfig {
            expected_interval_s: 1,
            ..PlausibilityConfig::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(cfg).await.unwrap();
    println!("dashboard: http://{}/", server.http_addr());

    let id = keys.tls_files("relay-1");
    let tls = gridpow_common::tls::client_config(&keys.ca_cert_path(), Some((&id.cert, &id.key)))
        .unwrap();
    let mut o = MqttOptions::new("feed-relay-1", "127.0.0.1", broker.port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
        .set_max_packet_size(Some(8 << 20));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    let site = keys.site().unwrap();
    let key_id = site.current_key_id;
    let mkeys: Vec<MeterKeys<RustCrypto>> = (1..=meters)
        .map(|m| MeterKeys::new(&RustCrypto, key_id, &site.meter_secret(m, key_id).unwrap()))
        .collect();
    let relay_key = keys.relay_signing_key(1).unwrap();
    let mut prev = [0u8; 32];
    let mut held: Option<Vec<u8>> = None;
    for tick in 0..seconds as u32 {
        let now = gridpow_common::wall_ms();
        let mut buf = vec![0u8; 1 << 16];
        let mut b = BlockBuilder::new(&mut buf).unwrap();
        for m in 0..meters {
            // Meter 3 goes quiet for a while.
            if m == 2 && (20..40).contains(&tick) {
                continue;
            }
            let mut r = reading(m + 1, tick, now);
            if m == 4 && tick % 15 == 7 {
                r.voltage_cv = 26_000; // a voltage excursion
            }
            let h = UplinkHeader {
                key_id,
                meter_id: m + 1,
                boot_epoch: 1,
                counter: tick,
            };
            let mut out = [0u8; 250];
            let n = seal(&RustCrypto, &mkeys[m as usize], &h, tick, &[r], &mut out).unwrap();
            b.push_leaf(&RustCrypto, &out[..n]).unwrap();
        }
        let mut header = b.header(&RustCrypto, 1, u64::from(tick), prev, now, 12);
        solve_blocking(&mut header);
        let len = b.finish(&header, &relay_key).unwrap();
        buf.truncate(len);
        prev = header.hash(&RustCrypto);
        let publish =
            |bytes: Vec<u8>| client.publish(topics::blocks(1), QoS::AtLeastOnce, false, bytes);
        match tick {
            // Hold block 10 back for three seconds: a gap, then filled.
            10 => held = Some(buf),
            13 => {
                publish(buf).await.unwrap();
                publish(held.take().unwrap()).await.unwrap();
            }
            _ => publish(buf).await.unwrap(),
        }
        if tick == 25 {
            publish(b"not a block at all".to_vec()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if tick % 10 == 9 {
            let s = server.stats();
            println!(
                "t={:>3}s stored {} readings in {} blocks; rejected {}; gaps {}",
                tick + 1,
                s.ledger.readings_stored,
                s.ledger.blocks_verified,
                s.ledger.blocks_rejected,
                s.ledger.gaps_open
            );
        }
    }
    server.shutdown().await;
}
