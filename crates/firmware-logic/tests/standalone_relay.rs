//! The standalone relay logic: meters' frames in, ACKs out, blocks sealed with
//! PoW and signature that the grid server's verifier accepts, outbox kept
//! until a verified receipt, and back-pressure instead of loss when the
//! transport is missing.

// Test helpers panic on broken fixtures; that is what a test should do.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_firmware_logic::pow::SoftPowHasher;
use gridpow_firmware_logic::provisioning::RelayMeter;
use gridpow_firmware_logic::standalone::{
    NoTransport, Publisher, RelayError, StandaloneConfig, StandaloneRelay,
};
use gridpow_firmware_logic::state::MemFlash;
use gridpow_proto::block::{verify_block, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::receipt::ReceiptStatus;
use gridpow_proto::wire::uplink::MAX_LEN;
use gridpow_proto::wire::{Reading, ReceiptRepr};
use gridpow_proto::{Duration, Instant};

const SEED: [u8; 32] = [5; 32];
const SERVER_SEED: [u8; 32] = [6; 32];

fn secret(id: u32) -> MeterSecret {
    MeterSecret::from_bytes(&[id as u8; 48])
}

fn cfg() -> StandaloneConfig {
    StandaloneConfig {
        relay_id: 3,
        channel: 6,
        difficulty: 8,
        require_registered_mac: false,
        block_interval: Duration::from_secs(10),
        republish_after: Duration::from_secs(30),
    }
}

type Relay<'a> = StandaloneRelay<'a, RustCrypto, &'a mut MemFlash<8192>, 8, 2>;

fn relay<'a>(flash: &'a mut MemFlash<8192>, storage: &'a mut [u8]) -> Relay<'a> {
    let meters = (1..=3).map(|id| RelayMeter {
        meter_id: id,
        key_id: 1,
        mac: None,
        secret: secret(id).hop,
    });
    let server = SigningKey::from_bytes(&SERVER_SEED)
        .verifying_key()
        .to_bytes();
    StandaloneRelay::new(cfg(), RustCrypto, meters, &SEED, &server, flash, storage).unwrap()
}

struct Keys(Vec<(u32, MeterKeys<RustCrypto>)>);
impl KeyLookup<RustCrypto> for Keys {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.0
            .iter()
            .find(|(id, k)| *id == meter_id && k.key_id() == key_id)
            .map(|(_, k)| k)
    }
}

/// Records what the transport took.
#[derive(Default)]
struct Recorder(Vec<(String, Vec<u8>)>);
impl Publisher for Recorder {
    type Error = ();
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ()> {
        self.0.push((topic.to_string(), payload.to_vec()));
        Ok(())
    }
}

/// Meter `id` sends `n` readings, one frame each, all ACKed by the relay.
fn feed(relay: &mut Relay<'_>, id: u32, n: u64, t0: u64) -> Result<(), RelayError> {
    let mut s =
        Sender::<_, 8>::new(RustCrypto, SenderConfig::new(id, 1), &secret(id), 1, 0).unwrap();
    for k in 0..n {
        let now = Instant::from_millis(t0 + k);
        s.push_reading(Reading::default());
        let mut buf = [0u8; MAX_LEN];
        let len = s.poll_transmit(now, 0, &mut buf).unwrap().unwrap();
        let mut ack = [0u8; 48];
        let a = relay.handle_frame(
            now,
            Some(1_000_000 + k),
            &[id as u8; 6],
            &buf[..len],
            &mut ack,
        )?;
        s.handle_ack(now, &ack[..a]).unwrap();
    }
    Ok(())
}

#[test]
fn sealed_blocks_verify_and_a_receipt_frees_the_outbox() {
    let mut flash = MemFlash::new();
    let mut storage = vec![0u8; 3 * 4096];
    let mut r = relay(&mut flash, &mut storage);
    for id in 1..=3 {
        feed(&mut r, id, 4, 0).unwrap();
    }
    assert_eq!(r.pending_frames(), 12);
    r.poll_seal(Instant::from_secs_for_test(11), Some(2_000_000));
    assert!(r.is_solving());
    let mut hasher = SoftPowHasher::default();
    let sealed = loop {
        // Small chunks, as the firmware interleaves reception.
        if let Some(b) = r.poll_pow(&mut hasher, 64) {
            break b;
        }
    };
    assert_eq!(sealed.height, 0);
    assert_eq!(r.chain().next_height, 1);
    let mut transport = Recorder::default();
    assert_eq!(
        r.poll_publish(Instant::from_secs_for_test(12), &mut transport),
        1
    );
    let (topic, bytes) = &transport.0[0];
    assert_eq!(topic, "gridpow/v1/relays/3/blocks");

    let relay_key = VerifyingKey::from_bytes(&r.public_key()).unwrap();
    let keys = Keys(
        (1..=3)
            .map(|id| (id, MeterKeys::new(&RustCrypto, 1, &secret(id))))
            .collect(),
    );
    let policy = VerifyPolicy {
        relay_id: 3,
        min_difficulty: 8,
    };
    let v = verify_block(&RustCrypto, bytes, &relay_key, &policy, &keys, |_| Ok(())).unwrap();
    assert_eq!(v.header.leaf_count, 12);
    assert_eq!(v.hash, sealed.hash);

    // No receipt yet: republished after the timeout, not before.
    assert_eq!(
        r.poll_publish(Instant::from_secs_for_test(20), &mut transport),
        0
    );
    assert_eq!(
        r.poll_publish(Instant::from_secs_for_test(43), &mut transport),
        1
    );

    // A receipt signed by another key is refused; the real one frees the block.
    let receipt = ReceiptRepr {
        status: ReceiptStatus::Stored,
        relay_id: 3,
        height: 0,
        block_hash: sealed.hash,
        server_id: 1,
        time_ms: 5,
    };
    let forged = receipt.to_signed_bytes(&SigningKey::from_bytes(&[9; 32]));
    assert!(r.handle_receipt(&forged).is_err());
    assert_eq!(r.outbox().count(), 1);
    let real = receipt.to_signed_bytes(&SigningKey::from_bytes(&SERVER_SEED));
    r.handle_receipt(&real).unwrap();
    assert_eq!(r.outbox().count(), 0);
    assert_eq!(r.stats().receipts_accepted, 1);
}

#[test]
fn chain_tip_survives_a_restart() {
    let mut flash = MemFlash::new();
    let hash;
    {
        let mut storage = vec![0u8; 3 * 4096];
        let mut r = relay(&mut flash, &mut storage);
        feed(&mut r, 1, 2, 0).unwrap();
        r.poll_seal(Instant::from_secs_for_test(11), Some(1));
        let mut h = SoftPowHasher::default();
        hash = loop {
            if let Some(b) = r.poll_pow(&mut h, 1000) {
                break b.hash;
            }
        };
    }
    let mut storage = vec![0u8; 3 * 4096];
    let r = relay(&mut flash, &mut storage);
    assert_eq!(r.chain().next_height, 1);
    assert_eq!(r.chain().prev_hash, hash);
}

#[test]
fn without_a_transport_blocks_stay_and_new_frames_are_refused_not_lost() {
    let mut flash = MemFlash::new();
    // Blocks of 1 KiB: 10 one-reading frames (86 bytes with prefix) fill one.
    let mut storage = vec![0u8; 3 * 1024];
    let mut r = relay(&mut flash, &mut storage);
    let mut h = SoftPowHasher::default();
    let mut s =
        Sender::<_, 64>::new(RustCrypto, SenderConfig::new(1, 1), &secret(1), 1, 0).unwrap();
    let mut refused = None;
    for k in 0..100u64 {
        let now = Instant::from_millis(k);
        s.push_reading(Reading::default());
        let mut buf = [0u8; MAX_LEN];
        let Some(len) = s.poll_transmit(now, 0, &mut buf).unwrap() else {
            break;
        };
        let mut ack = [0u8; 48];
        match r.handle_frame(now, Some(k), &[1; 6], &buf[..len], &mut ack) {
            Ok(a) => {
                s.handle_ack(now, &ack[..a]).unwrap();
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        while r.poll_pow(&mut h, 10_000).is_some() {}
        assert_eq!(r.poll_publish(now, &mut NoTransport), 0);
    }
    assert_eq!(refused, Some(RelayError::Full));
    // Two sealed blocks wait in the outbox, a full batch is pending, nothing was dropped.
    assert_eq!(r.outbox().count(), 2);
    assert_eq!(r.pending_frames(), 10);
    assert_eq!(r.ingress_stats().frames_accepted, 30);
    assert_eq!(s.stats().readings_acked, 30);
    assert!(r.stats().publish_errors > 0);
    assert_eq!(r.stats().refused_full, 1);
}

#[test]
fn frames_are_refused_while_the_wall_clock_is_unknown() {
    let mut flash = MemFlash::new();
    let mut storage = vec![0u8; 3 * 4096];
    let mut r = relay(&mut flash, &mut storage);
    let mut s = Sender::<_, 8>::new(RustCrypto, SenderConfig::new(1, 1), &secret(1), 1, 0).unwrap();
    s.push_reading(Reading::default());
    let mut buf = [0u8; MAX_LEN];
    let n = s
        .poll_transmit(Instant::ZERO, 0, &mut buf)
        .unwrap()
        .unwrap();
    let mut ack = [0u8; 48];
    assert_eq!(
        r.handle_frame(Instant::ZERO, None, &[1; 6], &buf[..n], &mut ack),
        Err(RelayError::NoWallClock)
    );
    // The ingress never saw it, so the same frame is accepted once time is known.
    assert!(r
        .handle_frame(Instant::ZERO, Some(1), &[1; 6], &buf[..n], &mut ack)
        .is_ok());
    assert_eq!(r.ingress_stats().frames_duplicate, 0);
}

trait ForTest {
    fn from_secs_for_test(s: u64) -> Instant;
}
impl ForTest for Instant {
    fn from_secs_for_test(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }
}
