//! docs/protocol.md §9.5 and §10, pinned as a known-answer vector
//! (`test-vectors/chain_policy.json`): a sequence of real signed blocks under
//! fixed test keys, each with the verdict the grid server must reach given
//! the blocks before it — already stored, orphan and gap, fork, wrong chain
//! link, bad genesis, too far ahead, a frame heard by two relays, a replayed
//! frame, a frame of an older boot epoch, an equivocating meter — and the
//! receipt status it answers. The test runs the sequence through the real
//! verifier, SQLite store and equivocation check, then `verify_ledger`;
//! `test-vectors/verify.py` judges the same file with its own model of the
//! rules. `GRIDPOW_REGEN_VECTORS=1` rewrites the file.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use gridpow_keys::KeyDir;
use gridpow_proto::block::BlockBuilder;
use gridpow_proto::crypto::{derive_meter_secret, MeterKeys, RustCrypto, SiteSecret};
use gridpow_proto::pow::solve_blocking;
use gridpow_proto::wire::uplink::{seal, UplinkHeader};
use gridpow_proto::wire::{BlockHeaderRepr, Reading};
use gridpow_proto::Hash;
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::verify_payload;
use gridpow_store::{Arrival, Ingest, Outcome, QuarantineItem, SqliteStore, Store};
use serde_json::{json, Value};

/// Test keys, public on purpose.
const SITE_SECRET: [u8; 32] = *b"gridpow chain-policy test site!!";
const KEY_ID: u8 = 1;
const METERS: [u32; 2] = [7, 8];
const RELAYS: [(u32, [u8; 32]); 3] = [(1, [0x11; 32]), (2, [0x22; 32]), (3, [0x33; 32])];
const DIFFICULTY: u8 = 8;
const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn relay_key(relay: u32) -> SigningKey {
    let seed = RELAYS.iter().find(|(id, _)| *id == relay).unwrap().1;
    SigningKey::from_bytes(&seed)
}

/// A plausible reading of `meter`, number `seq` of `epoch` (10 s interval;
/// `bump` Wh more on the energy register for an equivocating copy).
fn reading(meter: u32, epoch: u32, seq: u32, bump: u64) -> Reading {
    let current_ma = 2_000 + (meter * 37 + seq * 11) % 3_000;
    let voltage_cv = 23_000 + (seq % 20) as u16;
    let power_dw = (f64::from(voltage_cv) / 100.0 * f64::from(current_ma) / 1000.0 * 0.95 * 10.0)
        .round() as i32;
    Reading {
        timestamp_ms: T0 + u64::from(epoch) * 86_400_000 + u64::from(seq) * 10_000,
        voltage_cv,
        current_ma,
        active_power_dw: power_dw,
        power_factor_e4: 9_500,
        frequency_mhz: 50_000,
        energy_mwh: 1_000_000 + u64::from(epoch) * 100_000 + u64::from(seq) * 5_000 + bump * 1000,
        flags: 0,
    }
}

/// A frame of `meter` (counter unique per meter and epoch across the vector)
/// carrying `seqs`; readings in `bumped` carry a different energy value.
fn frame(
    meter: u32,
    epoch: u32,
    counter: u32,
    seqs: std::ops::Range<u32>,
    bumped: &[u32],
) -> Vec<u8> {
    let secret = derive_meter_secret(&RustCrypto, &SiteSecret(SITE_SECRET), KEY_ID, meter);
    let keys = MeterKeys::new(&RustCrypto, KEY_ID, &secret);
    let header = UplinkHeader {
        key_id: KEY_ID,
        meter_id: meter,
        boot_epoch: epoch,
        counter,
    };
    let readings: Vec<Reading> = seqs
        .clone()
        .map(|s| reading(meter, epoch, s, u64::from(bumped.contains(&s))))
        .collect();
    let mut out = [0u8; 250];
    let n = seal(&RustCrypto, &keys, &header, seqs.start, &readings, &mut out).unwrap();
    out[..n].to_vec()
}

/// A block of `relay` at `height` on `prev`, PoW solved, signed.
fn block(relay: u32, height: u64, prev: Hash, frames: &[Vec<u8>]) -> (Vec<u8>, Hash) {
    let mut buf = vec![0u8; 1 << 14];
    let mut b = BlockBuilder::new(&mut buf).unwrap();
    for f in frames {
        b.push_leaf(&RustCrypto, f).unwrap();
    }
    let mut header: BlockHeaderRepr = b.header(
        &RustCrypto,
        relay,
        height,
        prev,
        T0 + height * 1000 + u64::from(relay),
        DIFFICULTY,
    );
    solve_blocking(&mut header);
    let len = b.finish(&header, &relay_key(relay)).unwrap();
    buf.truncate(len);
    (buf, header.hash(&RustCrypto))
}

/// One step: a name, the block, and the verdict.
struct Step {
    name: &'static str,
    block: Vec<u8>,
    expect: Value,
}

fn stored(linked: bool, new: u64, repeated: u64, equivocations: Value) -> Value {
    json!({"outcome": "stored", "reason": null, "receipt_status": 0, "linked": linked,
           "new_readings": new, "repeated_readings": repeated, "equivocations": equivocations})
}

fn refused(reason: &str, status: u8) -> Value {
    json!({"outcome": "refused", "reason": reason, "receipt_status": status})
}

fn steps() -> Vec<Step> {
    let zero = [0u8; 32];
    let (b0, h0) = block(
        1,
        0,
        zero,
        &[frame(7, 1, 0, 0..3, &[]), frame(8, 1, 0, 0..2, &[])],
    );
    let (b1, h1) = block(1, 1, h0, &[frame(7, 1, 1, 3..5, &[])]);
    let (b2, h2) = block(1, 2, h1, &[frame(7, 1, 2, 5..6, &[])]);
    // Relay 2 heard meter 7's frame 1 too (the same bytes).
    let (r0, _) = block(2, 0, zero, &[frame(7, 1, 1, 3..5, &[])]);
    // A frame of meter 7's older boot epoch 0, delivered late.
    let (b3, h3) = block(1, 3, h2, &[frame(7, 0, 9, 0..2, &[])]);
    // Meter 8's frame 0 replayed in a later block.
    let (b4, h4) = block(1, 4, h3, &[frame(8, 1, 0, 0..2, &[])]);
    // Meter 8 re-sends seq 1 with another energy value, and seq 2.
    let (b5, h5) = block(1, 5, h4, &[frame(8, 1, 1, 1..3, &[1])]);
    let (fork5, _) = block(1, 5, h4, &[frame(8, 1, 2, 3..4, &[])]);
    let (badlink6, _) = block(1, 6, h4, &[frame(8, 1, 3, 4..5, &[])]);
    let (orphan7, _) = block(1, 7, [0x77; 32], &[frame(8, 1, 4, 5..6, &[])]);
    let (genesis3, _) = block(3, 0, [0x01; 32], &[frame(8, 1, 5, 6..7, &[])]);
    // The relay's highest stored block is now 7.
    let (far, _) = block(1, 7 + 100_001, h5, &[frame(8, 1, 6, 7..8, &[])]);
    vec![
        Step {
            name: "genesis of relay 1",
            block: b0.clone(),
            expect: stored(true, 5, 0, json!([])),
        },
        Step {
            name: "the same block again (a QoS 1 redelivery)",
            block: b0,
            expect: json!({"outcome": "already_stored", "reason": null, "receipt_status": 1}),
        },
        Step {
            name: "height 2 before its parent: an orphan, stored, gap 1-1",
            block: b2,
            expect: stored(false, 1, 0, json!([])),
        },
        Step {
            name: "height 1, the missing parent: linked, the gap closes",
            block: b1,
            expect: stored(true, 2, 0, json!([])),
        },
        Step {
            name: "relay 2 heard the same frame: stored, its readings not again",
            block: r0,
            expect: stored(true, 0, 2, json!([])),
        },
        Step {
            name: "a frame of an older boot epoch, late: stored (no window at the server)",
            block: b3,
            expect: stored(true, 2, 0, json!([])),
        },
        Step {
            name: "a replayed frame: stored, its readings not again",
            block: b4,
            expect: stored(true, 0, 2, json!([])),
        },
        Step {
            name: "meter 8 equivocates on seq 1: stored, the first reading stays",
            block: b5,
            expect: stored(true, 1, 1, json!([[8, 1, 1]])),
        },
        Step {
            name: "a second block at height 5: fork",
            block: fork5,
            expect: refused("fork", 3),
        },
        Step {
            name: "height 6 naming another parent than the stored height 5: fork",
            block: badlink6,
            expect: refused("fork", 3),
        },
        Step {
            name: "height 7 with height 6 missing: an orphan behind a gap that stays open",
            block: orphan7,
            expect: stored(false, 1, 0, json!([])),
        },
        Step {
            name: "a genesis block with a non-zero previous hash",
            block: genesis3,
            expect: refused("bad_genesis", 3),
        },
        Step {
            name: "more than max_height_ahead (100000) above the relay's head",
            block: far,
            expect: refused("too_far_ahead", 2),
        },
    ]
}

/// The verifier's key directory: site secret, meters and relays' public keys.
fn key_dir(root: &std::path::Path) -> KeyDir {
    let dir = KeyDir::new(root);
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        dir.site_path(),
        format!(
            "current_key_id = {KEY_ID}\n[[key]]\nid = {KEY_ID}\nsecret = \"{}\"\n",
            hex::encode(SITE_SECRET)
        ),
    )
    .unwrap();
    let meters: String = METERS
        .iter()
        .map(|m| format!("[[meter]]\nid = {m}\nkey_id = {KEY_ID}\n"))
        .collect();
    std::fs::write(dir.meters_path(), meters).unwrap();
    let relays: String = RELAYS
        .iter()
        .map(|(id, _)| {
            format!(
                "[[relay]]\nid = {id}\npublic_key = \"{}\"\n",
                hex::encode(relay_key(*id).verifying_key().as_bytes())
            )
        })
        .collect();
    std::fs::write(dir.relays_path(), relays).unwrap();
    dir
}

/// What the server did with one step, in the vector's terms.
fn judge(store: &mut dyn Store, keys: &mut Keyring, payload: &[u8]) -> Value {
    let item = match verify_payload(keys, DIFFICULTY, payload) {
        Ok(block) => Ingest::Block {
            arrival: Arrival::default(),
            block,
        },
        Err(rej) => Ingest::Quarantine(QuarantineItem {
            arrival: Arrival::default(),
            kind: rej.kind,
            detail: rej.detail,
            header: rej.header,
            raw: payload.to_vec(),
        }),
    };
    let outcome = store.commit(&[item], T0).unwrap().outcomes.remove(0);
    let status = outcome.receipt_status() as u8;
    match outcome {
        Outcome::Stored {
            new_readings,
            repeated,
            linked,
            ..
        } => {
            let found = gridpow_store::equivocation::find(store, &repeated).unwrap();
            let eq: Vec<Value> = found
                .iter()
                .map(|q| json!([q.meter_id, q.epoch, q.seq]))
                .collect();
            json!({"outcome": "stored", "reason": null, "receipt_status": status, "linked": linked,
                   "new_readings": new_readings, "repeated_readings": repeated.len(),
                   "equivocations": eq})
        }
        Outcome::AlreadyStored { .. } => {
            json!({"outcome": "already_stored", "reason": null, "receipt_status": status})
        }
        Outcome::Quarantined { kind, .. } => {
            json!({"outcome": "refused", "reason": kind.as_str(), "receipt_status": status})
        }
    }
}

fn vector() -> Value {
    let relays: Vec<Value> = RELAYS
        .iter()
        .map(|(id, _)| {
            json!({"relay_id": id,
                   "public_key": hex::encode(relay_key(*id).verifying_key().as_bytes())})
        })
        .collect();
    let steps: Vec<Value> = steps()
        .into_iter()
        .map(|s| json!({"name": s.name, "block": hex::encode(&s.block), "expect": s.expect}))
        .collect();
    json!({
        "description": "docs/protocol.md §9.5 (chain position, replay policy, equivocation) and §10 (receipt status): blocks delivered in this order to an empty server; each step's verdict depends on the steps before it. Test keys, public on purpose.",
        "site_secret": hex::encode(SITE_SECRET),
        "key_id": KEY_ID,
        "meters": METERS,
        "relays": relays,
        "min_difficulty": DIFFICULTY,
        "max_height_ahead": 100_000,
        "steps": steps,
        "ledger": {
            "ok": false,
            "forks": [{"relay_id": 1, "heights": [5, 6]}],
            "gaps": [[1, 6, 6]],
            "equivocations": [{"relay_id": 1, "height": 5, "meter_id": 8, "epoch": 1, "seq": 1}],
            "readings": 12
        }
    })
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors/chain_policy.json")
}

#[test]
fn the_server_reaches_every_verdict_of_the_chain_policy_vector() {
    let v = vector();
    let path = path();
    if std::env::var_os("GRIDPOW_REGEN_VECTORS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with GRIDPOW_REGEN_VECTORS=1)", path.display())
        }))
        .unwrap();
    assert_eq!(stored, v, "{} is stale", path.display());

    let dir = tempfile::tempdir().unwrap();
    let keys_dir = key_dir(&dir.path().join("keys"));
    let mut keys = Keyring::load(&keys_dir).unwrap();
    let db = dir.path().join("ledger.db");
    let mut store = SqliteStore::open(&db, gridpow_store::StoreOptions::default()).unwrap();
    for step in stored["steps"].as_array().unwrap() {
        let payload = hex::decode(step["block"].as_str().unwrap()).unwrap();
        let got = judge(&mut store, &mut keys, &payload);
        assert_eq!(got, step["expect"], "step {:?}", step["name"]);
    }
    drop(store);

    let report = gridpow_server::verify_ledger(&db.display().to_string(), &keys_dir).unwrap();
    let expect = &stored["ledger"];
    assert_eq!(report.is_ok(), expect["ok"].as_bool().unwrap(), "{report}");
    let forks: Vec<Value> = report
        .forks
        .iter()
        .map(|f| json!({"relay_id": f.relay_id, "heights": f.heights}))
        .collect();
    assert_eq!(Value::from(forks), expect["forks"], "{report}");
    let gaps: Vec<Value> = report.gaps.iter().map(|g| json!([g.0, g.1, g.2])).collect();
    assert_eq!(Value::from(gaps), expect["gaps"], "{report}");
    let eq: Vec<Value> = report
        .equivocations
        .iter()
        .map(|q| {
            json!({"relay_id": q.relay_id, "height": q.height, "meter_id": q.meter_id,
                   "epoch": q.epoch, "seq": q.seq})
        })
        .collect();
    assert_eq!(Value::from(eq), expect["equivocations"], "{report}");
    assert_eq!(
        report.readings,
        expect["readings"].as_u64().unwrap(),
        "{report}"
    );
    assert!(
        report.to_string().contains("WARNING meter 8 equivocated"),
        "{report}"
    );
}
