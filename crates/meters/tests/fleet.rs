//! The fleet against a minimal relay (the core's `Ingress`, ACK at once) over
//! a lossy in-process medium and over lossy UDP air, across a fleet restart.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gridpow_keys::{InitOptions, KeyDir};
use gridpow_meters::{open_udp_radio, read_truth, Fleet, FleetConfig, TruthRecord};
use gridpow_proto::crypto::{HopKeys, MeterKeys, RustCrypto};
use gridpow_proto::ingress::{FixedMeterTable, Ingress, IngressConfig, MeterEntry, Verdict};
use gridpow_proto::wire::uplink::{UplinkPacket, MAX_BODY_LEN};
use gridpow_proto::wire::Reading;
use gridpow_radio::{Confirmation, Medium, RadioPort, UdpAir};

type Delivered = HashMap<(u32, u32, u32), (u32, Reading)>;

fn seed() -> u64 {
    let s = std::env::var("GRIDPOW_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| gridpow_common::wall_ms() % 1_000_000);
    eprintln!("seed {s} (set GRIDPOW_TEST_SEED={s} to replay)");
    s
}

/// A relay that judges frames with the core's ingress and ACKs at once;
/// returns every newly delivered reading with its delivery count.
fn fake_relay(
    mut radio: Box<dyn RadioPort>,
    keys: &KeyDir,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Delivered> {
    let site = keys.site().unwrap();
    let mut table = FixedMeterTable::<64>::new();
    // The relay's half (hop keys) and, to check what was delivered, the server's (all keys).
    let mut server_keys = HashMap::new();
    for m in keys.meters().unwrap().meters {
        let s = site.meter_secret(m.id, m.key_id).unwrap();
        table
            .insert(MeterEntry::new(m.id, None, HopKeys::new(m.key_id, &s.hop)))
            .unwrap();
        server_keys.insert(m.id, MeterKeys::new(&RustCrypto, m.key_id, &s));
    }
    let relay_mac = gridpow_common::virtual_relay_mac(1);
    std::thread::spawn(move || {
        let cfg = IngressConfig {
            relay_id: 1,
            channel: 1,
            require_registered_mac: false,
        };
        let mut ingress = Ingress::new(RustCrypto, cfg, table);
        let mut delivered = Delivered::new();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            let Some(f) = radio.recv(Duration::from_millis(20)).unwrap() else {
                continue;
            };
            let Ok(v) = ingress.handle_frame(&f.src, &f.data) else {
                continue;
            };
            radio.confirm_peer(
                f.src,
                match v {
                    Verdict::Accepted(_) => Confirmation::Fresh,
                    _ => Confirmation::Replayed,
                },
            );
            if let Verdict::Accepted(info) = v {
                let mut scratch = [0u8; MAX_BODY_LEN];
                let body = UplinkPacket::new_checked(&f.data[..])
                    .unwrap()
                    .open(&RustCrypto, &server_keys[&info.meter_id], &mut scratch)
                    .unwrap();
                for (seq, r) in body.readings().skip(usize::from(info.first_new)) {
                    delivered
                        .entry((info.meter_id, info.boot_epoch, seq))
                        .or_insert((0, r))
                        .0 += 1;
                }
            }
            let n = ingress
                .emit_ack(&v, gridpow_common::wall_ms(), &mut buf)
                .unwrap();
            radio.send(relay_mac, f.src, &buf[..n]).unwrap();
        }
        delivered
    })
}

fn run(cfg: &FleetConfig, radio: Box<dyn RadioPort>, secs: f64) -> gridpow_meters::FleetStats {
    let fleet = Fleet::start(cfg.clone(), radio).unwrap();
    std::thread::sleep(Duration::from_secs_f64(secs));
    fleet.stop_generating();
    let drained = fleet.wait_drained(Duration::from_secs(30));
    let stats = fleet.shutdown().unwrap();
    assert!(drained, "not drained: {stats:?}");
    stats
}

fn check(truth: &[TruthRecord], delivered: &Delivered) {
    for t in truth {
        match delivered.get(&(t.meter_id, t.boot_epoch, t.seq)) {
            Some((1, r)) => assert_eq!(*r, t.reading()),
            other => panic!("reading {t:?} delivered {other:?}"),
        }
    }
    assert_eq!(
        delivered.len(),
        truth.len(),
        "readings delivered that the truth does not hold"
    );
}

#[test]
fn every_reading_is_acknowledged_over_lossy_air_and_a_restarted_fleet_uses_new_epochs() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    keys.init(&InitOptions::default()).unwrap();
    keys.add_meters(&(1..=12).map(|id| (id, None)).collect::<Vec<_>>())
        .unwrap();
    let mut cfg = FleetConfig::new(keys.root(), dir.path().join("state"));
    cfg.interval_s = 0.1;
    cfg.seed = seed;
    // Real time at a 0.1 s interval: timers scaled down from the defaults.
    cfg.sender.start_spread_ms = Some(0);
    cfg.sender.phase_spread_ms = Some(0);
    cfg.sender.ack_timeout_ms = Some(100);
    cfg.sender.max_backoff_ms = Some(300);
    cfg.sender.retry_holdoff_ms = Some(300);
    cfg.truth_file = Some(dir.path().join("truth.jsonl"));

    // First boot over an in-process medium losing 30 % of frames both ways.
    let medium = Medium::new(0.3, seed);
    let stop = Arc::new(AtomicBool::new(false));
    let relay = fake_relay(
        Box::new(medium.port(&[gridpow_common::virtual_relay_mac(1)])),
        &keys,
        stop.clone(),
    );
    let macs: Vec<_> = Fleet::meter_macs(&cfg)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(macs.len(), 12);
    let s1 = run(&cfg, Box::new(medium.port(&macs)), 2.0);
    stop.store(true, Ordering::Relaxed);
    let mut delivered = relay.join().unwrap();
    assert_eq!((s1.dropped, s1.acknowledged), (0, s1.generated), "{s1:?}");
    assert!(
        s1.retransmissions > 0,
        "loss must cause retransmissions: {s1:?}"
    );
    let truth1 = read_truth(cfg.truth_file.as_ref().unwrap()).unwrap();
    assert_eq!(truth1.len() as u64, s1.generated);
    for m in 1..=12u32 {
        let seqs: Vec<u32> = truth1
            .iter()
            .filter(|t| t.meter_id == m)
            .map(|t| t.seq)
            .collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u32).collect::<Vec<_>>(),
            "meter {m}: sequence numbers not consecutive"
        );
        assert!(truth1
            .iter()
            .filter(|t| t.meter_id == m)
            .all(|t| t.boot_epoch == 1));
        let first = truth1.iter().find(|t| t.meter_id == m).unwrap();
        assert_ne!(
            first.flags & Reading::FLAG_RESTARTED,
            0,
            "first reading of a boot is flagged"
        );
    }

    // Second boot over UDP air losing 20 % both ways: new epoch, register continues.
    cfg.radio.loss = 0.2;
    let relay_air = UdpAir::bind("127.0.0.1:0".parse().unwrap(), None, 0.0, seed).unwrap();
    cfg.radio.udp_relay = relay_air.local_addr().unwrap();
    cfg.radio.udp_listen = "127.0.0.1:0".parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let relay = fake_relay(Box::new(relay_air), &keys, stop.clone());
    let s2 = run(&cfg, open_udp_radio(&cfg).unwrap(), 1.5);
    stop.store(true, Ordering::Relaxed);
    delivered.extend(relay.join().unwrap());
    assert_eq!((s2.dropped, s2.acknowledged), (0, s2.generated), "{s2:?}");
    let truth = read_truth(cfg.truth_file.as_ref().unwrap()).unwrap();
    let truth2 = &truth[truth1.len()..];
    assert!(
        truth2.iter().all(|t| t.boot_epoch == 2),
        "a restarted fleet must use a new boot epoch"
    );
    for m in 1..=12u32 {
        let last1 = truth1
            .iter()
            .filter(|t| t.meter_id == m)
            .map(|t| t.energy_mwh)
            .max()
            .unwrap();
        let first2 = truth2.iter().find(|t| t.meter_id == m).unwrap().energy_mwh;
        assert!(
            first2 >= last1,
            "meter {m}: energy register went back across the restart"
        );
    }
    check(&truth, &delivered);
}

#[test]
fn spoofed_datagrams_claiming_the_relay_do_not_divert_the_fleets_uplinks() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    keys.init(&InitOptions::default()).unwrap();
    keys.add_meters(&(1..=4).map(|id| (id, None)).collect::<Vec<_>>())
        .unwrap();
    let mut cfg = FleetConfig::new(keys.root(), dir.path().join("state"));
    cfg.interval_s = 0.1;
    cfg.seed = seed;
    // Real time at a 0.1 s interval: timers scaled down from the defaults.
    cfg.sender.start_spread_ms = Some(0);
    cfg.sender.phase_spread_ms = Some(0);
    cfg.sender.ack_timeout_ms = Some(100);
    cfg.sender.max_backoff_ms = Some(300);
    cfg.sender.retry_holdoff_ms = Some(300);
    cfg.truth_file = Some(dir.path().join("truth.jsonl"));
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let relay_air = UdpAir::bind(any, None, 0.0, seed).unwrap();
    let relay_addr = relay_air.local_addr().unwrap();
    let fleet_air = UdpAir::bind(any, Some(relay_addr), 0.0, seed ^ 1).unwrap();
    let fleet_addr = fleet_air.local_addr().unwrap();
    let attacker = std::net::UdpSocket::bind(any).unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let macs: Vec<_> = Fleet::meter_macs(&cfg)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    // "GPA1" ‖ src (the relay's MAC) ‖ dst (a meter) ‖ garbage: the fleet
    // refuses it, and must not take the attacker for the relay.
    let spoof = |dst: &[u8; 6]| {
        let mut d = b"GPA1".to_vec();
        d.extend_from_slice(&gridpow_common::virtual_relay_mac(1));
        d.extend_from_slice(dst);
        d.extend_from_slice(&[0x5a; 40]);
        attacker.send_to(&d, fleet_addr).unwrap();
    };
    for m in &macs {
        spoof(m);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let relay = fake_relay(Box::new(relay_air), &keys, stop.clone());
    let fleet = Fleet::start(cfg.clone(), Box::new(fleet_air)).unwrap();
    let mut diverted = 0;
    let mut buf = [0u8; 2048];
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < until {
        for m in &macs {
            spoof(m);
        }
        while attacker.recv_from(&mut buf).is_ok() {
            diverted += 1;
        }
    }
    fleet.stop_generating();
    let drained = fleet.wait_drained(Duration::from_secs(30));
    let stats = fleet.shutdown().unwrap();
    stop.store(true, Ordering::Relaxed);
    let delivered = relay.join().unwrap();
    while attacker.recv_from(&mut buf).is_ok() {
        diverted += 1;
    }
    assert!(drained, "not drained: {stats:?}");
    assert_eq!(diverted, 0, "uplinks reached the attacker");
    assert!(stats.generated > 0);
    assert_eq!(
        (stats.dropped, stats.acknowledged),
        (0, stats.generated),
        "{stats:?}"
    );
    check(
        &read_truth(cfg.truth_file.as_ref().unwrap()).unwrap(),
        &delivered,
    );
}
