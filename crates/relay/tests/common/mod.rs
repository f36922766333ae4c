//! Test harness: a key directory, a stand-in grid server that verifies blocks
//! and answers with signed receipts (so these tests do not depend on
//! crates/server), and the ground-truth comparison.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gridpow_common::topics;
use gridpow_keys::{InitOptions, KeyDir};
use gridpow_meters::{read_truth, Fleet, FleetConfig, FleetHandle, FleetStats, TruthRecord};
use gridpow_proto::block::{check_link, verify_block, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, RustCrypto};
use gridpow_proto::ingress::{first_new_index, DeliveredMark};
use gridpow_proto::wire::{BlockHeaderRepr, LogPosition, Reading, ReceiptRepr, ReceiptStatus};
use gridpow_proto::Hash;
use gridpow_radio::Medium;
use gridpow_relay::{Relay, RelayConfig, RelayHandle, RelayStats};
use gridpow_testkit::{Mosquitto, MosquittoOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

/// The seed of a test: `GRIDPOW_TEST_SEED` or the clock; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("GRIDPOW_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| gridpow_common::wall_ms() % 1_000_000);
    eprintln!("{test}: seed {s} (set GRIDPOW_TEST_SEED={s} to replay)");
    s
}

/// A fresh key directory with relay 1, server-1 and meters 1..=n.
pub fn site(dir: &Path, meters: u32) -> KeyDir {
    let kd = KeyDir::new(dir.join("keys"));
    kd.init(&InitOptions::default()).unwrap();
    let list: Vec<(u32, Option<[u8; 6]>)> = (1..=meters).map(|id| (id, None)).collect();
    kd.add_meters(&list).unwrap();
    kd
}

/// Relay settings for tests: quick blocks, modest PoW, small journal segments.
pub fn relay_config(keys: &KeyDir, data: &Path, port: u16) -> RelayConfig {
    // The relay runs from its own bundle (hop keys only), as deployed.
    let bundle = KeyDir::new(data.with_file_name("relay-1-bundle"));
    keys.export_relay_bundle(1, None, &bundle).unwrap();
    let mut c = RelayConfig::new(1, bundle.root(), data);
    c.difficulty = 14;
    c.block.max_frames = 64;
    c.block.max_age_ms = 300;
    c.pow.threads = 2;
    c.mqtt.host = "127.0.0.1".into();
    c.mqtt.port = port;
    c.mqtt.republish_after_s = 2;
    c.journal.segment_bytes = 32 << 10;
    c
}

/// Starts the relay and then the fleet, each with its own port on `medium`.
pub async fn start_on(
    medium: &Medium,
    rcfg: &RelayConfig,
    fcfg: &FleetConfig,
) -> (RelayHandle, FleetHandle) {
    let macs: Vec<_> = Fleet::meter_macs(fcfg)
        .unwrap()
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    let relay = Relay::start(rcfg.clone(), Box::new(medium.port(&[rcfg.mac()])))
        .await
        .unwrap();
    let fleet = Fleet::start(fcfg.clone(), Box::new(medium.port(&macs))).unwrap();
    (relay, fleet)
}

/// Fleet settings for tests: fast readings, short timers, a truth file.
pub fn fleet_config(keys: &KeyDir, dir: &Path, seed: u64) -> FleetConfig {
    let mut c = FleetConfig::new(keys.root(), dir.join("meters-state"));
    c.interval_s = 0.2;
    c.seed = seed;
    c.backlog = 1024;
    c.sender.max_backoff_ms = Some(400);
    c.sender.retry_holdoff_ms = Some(500);
    c.truth_file = Some(dir.join("truth.jsonl"));
    c
}

struct Keys(HashMap<u32, MeterKeys<RustCrypto>>);

impl KeyLookup<RustCrypto> for Keys {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.0.get(&meter_id).filter(|k| k.key_id() == key_id)
    }
}

/// A leaf as the server saw it.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub meter_id: u32,
    pub epoch: u32,
    pub first_seq: u32,
    pub readings: Vec<Reading>,
}

/// A verified block.
#[derive(Clone, Debug)]
pub struct Stored {
    pub header: BlockHeaderRepr,
    pub hash: Hash,
    pub leaves: Vec<Leaf>,
}

/// What the stand-in server saw.
#[derive(Default)]
pub struct Ledger {
    pub blocks: BTreeMap<u64, Stored>,
    pub deliveries: u64,
    pub rejected: Vec<String>,
    pub forks: Vec<u64>,
    /// Heights answered "refused for good", once per delivery.
    pub refused: Vec<u64>,
}

/// The stand-in grid server.
pub struct TestServer {
    pub ledger: Arc<Mutex<Ledger>>,
    /// While false, blocks are stored but no receipt is sent (a slow server).
    pub send_receipts: Arc<AtomicBool>,
    pub receipts_sent: Arc<AtomicU64>,
    /// This many next deliveries are answered "quarantined" (not stored), as
    /// a server that refused them would.
    pub quarantine_next: Arc<AtomicU64>,
    /// This many next deliveries are answered "refused for good" (not stored).
    pub refuse_next: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Connects as `server-1` with mutual TLS, subscribes to relay 1's blocks,
    /// verifies each with the core's verifier and answers with a signed receipt.
    pub fn start(keys: &KeyDir, port: u16) -> TestServer {
        let id = keys.tls_files("server-1");
        let tls =
            gridpow_common::tls::client_config(&keys.ca_cert_path(), Some((&id.cert, &id.key)))
                .unwrap();
        let mut o = MqttOptions::new("test-server-1", "127.0.0.1", port);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        let site = keys.site().unwrap();
        let mut mk = HashMap::new();
        for m in keys.meters().unwrap().meters {
            let s = site.meter_secret(m.id, m.key_id).unwrap();
            mk.insert(m.id, MeterKeys::new(&RustCrypto, m.key_id, &s));
        }
        let meter_keys = Keys(mk);
        let relay_key = keys
            .relays()
            .unwrap()
            .get(1)
            .unwrap()
            .verifying_key()
            .unwrap();
        let server_key = keys.server_signing_key().unwrap();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let send_receipts = Arc::new(AtomicBool::new(true));
        let receipts_sent = Arc::new(AtomicU64::new(0));
        let quarantine_next = Arc::new(AtomicU64::new(0));
        let refuse_next = Arc::new(AtomicU64::new(0));
        let (l, sr, rs, qn, rn) = (
            ledger.clone(),
            send_receipts.clone(),
            receipts_sent.clone(),
            quarantine_next.clone(),
            refuse_next.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .try_subscribe(topics::blocks(1), QoS::AtLeastOnce)
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut leaves = Vec::new();
                        let policy = VerifyPolicy {
                            relay_id: 1,
                            min_difficulty: 8,
                        };
                        let res = verify_block(
                            &RustCrypto,
                            &p.payload,
                            &relay_key,
                            &policy,
                            &meter_keys,
                            |leaf| {
                                leaves.push(Leaf {
                                    meter_id: leaf.frame.meter_id(),
                                    epoch: leaf.frame.boot_epoch(),
                                    first_seq: leaf.body.first_seq(),
                                    readings: leaf.body.readings().map(|(_, r)| r).collect(),
                                });
                                Ok(())
                            },
                        );
                        let vb = match res {
                            Ok(vb) => vb,
                            Err(e) => {
                                l.lock().unwrap().rejected.push(e.to_string());
                                continue;
                            }
                        };
                        let quarantine = qn
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok();
                        let refuse = !quarantine
                            && rn
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                        let status = if quarantine {
                            ReceiptStatus::Quarantined
                        } else if refuse {
                            l.lock().unwrap().refused.push(vb.header.height);
                            ReceiptStatus::Refused
                        } else {
                            let mut led = l.lock().unwrap();
                            led.deliveries += 1;
                            match led.blocks.get(&vb.header.height) {
                                Some(s) if s.hash == vb.hash => ReceiptStatus::AlreadyStored,
                                Some(_) => {
                                    led.forks.push(vb.header.height);
                                    continue;
                                }
                                None => {
                                    led.blocks.insert(
                                        vb.header.height,
                                        Stored {
                                            header: vb.header,
                                            hash: vb.hash,
                                            leaves,
                                        },
                                    );
                                    ReceiptStatus::Stored
                                }
                            }
                        };
                        if !sr.load(Ordering::Relaxed) {
                            continue;
                        }
                        let receipt = ReceiptRepr {
                            status,
                            relay_id: 1,
                            height: vb.header.height,
                            block_hash: vb.hash,
                            server_id: 1,
                            time_ms: gridpow_common::wall_ms(),
                            // This stand-in server keeps no log: each stored
                            // block is entry `height` of a log of its own.
                            log: matches!(
                                status,
                                ReceiptStatus::Stored | ReceiptStatus::AlreadyStored
                            )
                            .then_some(LogPosition {
                                index: vb.header.height,
                                tree_size: vb.header.height + 1,
                            }),
                        };
                        let Ok(bytes) = receipt.to_signed_bytes(&RustCrypto, &server_key) else {
                            continue;
                        };
                        if client
                            .try_publish(
                                topics::receipts(1),
                                QoS::AtLeastOnce,
                                false,
                                bytes.to_vec(),
                            )
                            .is_ok()
                        {
                            rs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        TestServer {
            ledger,
            send_receipts,
            receipts_sent,
            quarantine_next,
            refuse_next,
            task,
        }
    }
}

/// Checks the ledger: a contiguous, linked chain from genesis, and every
/// truth reading among the leaves' new readings exactly once, bit for bit,
/// and nothing else. Returns (blocks, readings).
pub fn check_ledger(ledger: &Ledger, truth: &[TruthRecord]) -> (usize, usize) {
    assert!(
        ledger.rejected.is_empty(),
        "blocks rejected: {:?}",
        ledger.rejected
    );
    assert!(
        ledger.forks.is_empty(),
        "forks at heights {:?}",
        ledger.forks
    );
    let mut prev: Option<(u64, Hash)> = None;
    for (h, b) in &ledger.blocks {
        assert_eq!(b.header.height, *h);
        check_link(&b.header, prev.as_ref().map(|(h, x)| (*h, x)))
            .unwrap_or_else(|e| panic!("chain broken at height {h}: {e}"));
        prev = Some((*h, b.hash));
    }
    let mut marks: HashMap<u32, Option<DeliveredMark>> = HashMap::new();
    let mut seen: HashMap<(u32, u32, u32), (u32, Reading)> = HashMap::new();
    for b in ledger.blocks.values() {
        for leaf in &b.leaves {
            let count = leaf.readings.len() as u8;
            let mark = marks.entry(leaf.meter_id).or_default();
            let first_new = first_new_index(*mark, leaf.epoch, leaf.first_seq, count);
            assert!(
                first_new < count,
                "a leaf without new readings in block {}",
                b.header.height
            );
            for (i, r) in leaf
                .readings
                .iter()
                .enumerate()
                .skip(usize::from(first_new))
            {
                let key = (leaf.meter_id, leaf.epoch, leaf.first_seq + i as u32);
                seen.entry(key).or_insert((0, *r)).0 += 1;
            }
            *mark = Some(DeliveredMark {
                epoch: leaf.epoch,
                next_seq: leaf.first_seq + u32::from(count),
            });
        }
    }
    let mut missing = Vec::new();
    for t in truth {
        match seen.remove(&(t.meter_id, t.boot_epoch, t.seq)) {
            Some((1, r)) => assert_eq!(r, t.reading(), "reading {t:?} altered"),
            Some((n, _)) => panic!("reading {t:?} delivered {n} times"),
            None => missing.push((t.meter_id, t.boot_epoch, t.seq)),
        }
    }
    assert!(
        missing.is_empty(),
        "{} readings missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        seen.is_empty(),
        "{} readings not in the truth: {:?}",
        seen.len(),
        seen.keys().take(5).collect::<Vec<_>>()
    );
    (ledger.blocks.len(), truth.len())
}

/// A private Mosquitto requiring client certificates from the site CA.
pub fn broker(keys: &KeyDir) -> Mosquitto {
    Mosquitto::start(
        keys,
        &MosquittoOptions {
            require_certificate: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Ends a run: meters stop measuring and drain, the relay drains and stops;
/// every generated reading must have been acknowledged (none dropped) and be in
/// the ground-truth file; then the stand-in server's ledger is checked against
/// it. Returns the fleet's and relay's final counters, the truth, and the
/// ledger's block and reading counts.
pub async fn finish(
    fleet: FleetHandle,
    relay: RelayHandle,
    fcfg: &FleetConfig,
    server: &TestServer,
) -> (FleetStats, RelayStats, Vec<TruthRecord>, usize, usize) {
    fleet.stop_generating();
    let drained = tokio::task::block_in_place(|| fleet.wait_drained(Duration::from_secs(60)));
    let fs = fleet.shutdown().unwrap();
    assert!(drained, "meters still hold unconfirmed readings: {fs:?}");
    assert!(
        relay.drain(Duration::from_secs(60)).await,
        "relay did not drain: {:?}",
        relay.stats()
    );
    let rs = relay.stats();
    relay.shutdown().await;
    let truth = read_truth(fcfg.truth_file.as_ref().unwrap()).unwrap();
    assert_eq!(
        (fs.dropped, fs.acknowledged, truth.len() as u64),
        (0, fs.generated, fs.generated),
        "{fs:?}"
    );
    let (blocks, readings) = check_ledger(&server.ledger.lock().unwrap(), &truth);
    (fs, rs, truth, blocks, readings)
}
