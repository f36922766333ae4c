//! The standalone relay logic: meters' frames in, ACKs out, blocks sealed with
//! PoW and signature that the grid server's verifier accepts, outbox kept
//! until a verified receipt with status stored (a quarantine keeps it), and
//! back-pressure instead of loss when nothing is published.

// Test helpers panic on broken fixtures; that is what a test should do.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_firmware_logic::journal::Journal;
use gridpow_firmware_logic::provisioning::RelayMeter;
use gridpow_firmware_logic::standalone::{
    RamStore, RelayError, RelayStorage, RelayStore, StandaloneConfig, StandaloneRelay,
};
use gridpow_firmware_logic::state::{MemFlash, RelayState};
use gridpow_proto::block::{verify_block, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry, ReceiptOutcome};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::receipt::{ReceiptStatus, RECEIPT_LEN};
use gridpow_proto::wire::uplink::MAX_LEN;
use gridpow_proto::wire::{LogPosition, Reading, ReceiptRepr};
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
        max_inflight: 2,
    }
}

type Relay<'a, S = RamStore<'a, 2>> = StandaloneRelay<'a, RustCrypto, S, 8>;

/// Caller storage: two block buffers, two outbox slots and their bytes.
struct Storage {
    blocks: Vec<u8>,
    outbox: [OutboxEntry; 2],
    slots: Vec<u8>,
}

impl Storage {
    /// Blocks of at most `block` bytes.
    fn new(block: usize) -> Self {
        Storage {
            blocks: vec![0; 2 * block],
            outbox: [OutboxEntry::FREE; 2],
            slots: vec![0; 2 * block],
        }
    }
}

fn relay<'a>(storage: &'a mut Storage) -> Relay<'a> {
    let store = RamStore::new(&mut storage.slots);
    relay_on(
        store,
        ChainTip::default(),
        &mut storage.blocks,
        &mut storage.outbox,
    )
}

fn relay_on<'a, S: RelayStore>(
    store: S,
    tip: ChainTip,
    blocks: &'a mut [u8],
    outbox: &'a mut [OutboxEntry],
) -> Relay<'a, S> {
    let meters = (1..=3).map(|id| RelayMeter {
        meter_id: id,
        key_id: 1,
        mac: None,
        secret: secret(id).hop,
    });
    relay_with(meters, store, tip, blocks, outbox)
}

/// A relay over `meters` (as its blob lists them).
fn relay_with<'a, S: RelayStore>(
    meters: impl IntoIterator<Item = RelayMeter>,
    store: S,
    tip: ChainTip,
    blocks: &'a mut [u8],
    outbox: &'a mut [OutboxEntry],
) -> Relay<'a, S> {
    let server = SigningKey::from_bytes(&SERVER_SEED)
        .verifying_key()
        .to_bytes();
    StandaloneRelay::new(
        cfg(),
        RustCrypto,
        meters,
        &SEED,
        &server,
        tip,
        store,
        RelayStorage { blocks, outbox },
    )
    .unwrap()
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

type Flash = MemFlash<{ 16 * 4096 }>;

/// A relay journaling to `flash` from its chain's start, with meter 2's
/// first three frames ACKed (and journaled).
fn journaled_relay_fed<'a>(
    flash: &'a mut Flash,
    storage: &'a mut Storage,
) -> Relay<'a, Journal<&'a mut Flash, 2>> {
    let journal = Journal::<_, 2>::open(&RustCrypto, flash, RelayState::default()).unwrap();
    let mut r = relay_on(
        journal,
        ChainTip::default(),
        &mut storage.blocks,
        &mut storage.outbox,
    );
    feed(&mut r, 2, 3, 0).unwrap();
    r
}

/// Publishes every due block as a transport would; returns their bytes.
fn publish_due<S: RelayStore>(r: &mut Relay<'_, S>, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(o) = r.poll_publish(now) {
        let mut buf = vec![0u8; 8192];
        let n = r.read_block(o.height, &mut buf).unwrap();
        buf.truncate(n);
        out.push(buf);
        r.handle_published(o.height, now);
    }
    out
}

/// Meter `id` sends `n` readings, one frame each, all ACKed by the relay.
fn feed<S: RelayStore>(
    relay: &mut Relay<'_, S>,
    id: u32,
    n: u64,
    t0: u64,
) -> Result<(), RelayError> {
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
    let mut storage = Storage::new(4096);
    let mut r = relay(&mut storage);
    for id in 1..=3 {
        feed(&mut r, id, 4, 0).unwrap();
    }
    assert_eq!(r.pending_frames(), 12);
    r.poll_seal(Instant::from_secs_for_test(11), Some(2_000_000));
    assert!(r.is_solving());
    let sealed = loop {
        // Small chunks, as the firmware interleaves reception.
        if let Some(b) = r.poll_pow(64) {
            break b;
        }
    };
    assert_eq!(sealed.height, 0);
    assert_eq!(r.chain().next_height, 1);
    r.handle_connected();
    let published = publish_due(&mut r, Instant::from_secs_for_test(12));
    assert_eq!(published.len(), 1);
    let bytes = &published[0];

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
    assert!(publish_due(&mut r, Instant::from_secs_for_test(20)).is_empty());
    assert_eq!(
        publish_due(&mut r, Instant::from_secs_for_test(43)).len(),
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
        log: Some(LogPosition {
            index: 0,
            tree_size: 1,
        }),
    };
    let now = Instant::from_secs_for_test(44);
    let forged = receipt
        .to_signed_bytes(&RustCrypto, &SigningKey::from_bytes(&[9; 32]))
        .unwrap();
    assert!(r.handle_receipt(now, &forged).is_err());
    assert_eq!(r.outbox().count(), 1);
    let real = receipt
        .to_signed_bytes(&RustCrypto, &SigningKey::from_bytes(&SERVER_SEED))
        .unwrap();
    r.handle_receipt(now, &real).unwrap();
    assert_eq!(r.outbox().count(), 0);
    assert_eq!(r.lifecycle_stats().blocks_confirmed, 1);
    assert!(
        r.read_block(0, &mut [0u8; 8192]).is_none(),
        "the store forgot it"
    );
}

/// Feeds two readings of meter 1, seals them into block 0, solves it and
/// hands it to a connected transport (published at t = 12 s).
fn one_block_published(r: &mut Relay<'_>) -> OutboxEntry {
    feed(r, 1, 2, 0).unwrap();
    r.poll_seal(Instant::from_secs_for_test(11), Some(1));
    let sealed = loop {
        if let Some(b) = r.poll_pow(1000) {
            break b;
        }
    };
    r.handle_connected();
    assert_eq!(publish_due(r, Instant::from_secs_for_test(12)).len(), 1);
    sealed
}

/// The server's signed receipt with `status` for `sealed`.
fn receipt(status: ReceiptStatus, sealed: &OutboxEntry) -> [u8; RECEIPT_LEN] {
    let log = matches!(status, ReceiptStatus::Stored | ReceiptStatus::AlreadyStored).then_some(
        LogPosition {
            index: sealed.height,
            tree_size: sealed.height + 1,
        },
    );
    ReceiptRepr {
        status,
        relay_id: 3,
        height: sealed.height,
        block_hash: sealed.hash,
        server_id: 1,
        time_ms: 5,
        log,
    }
    .to_signed_bytes(&RustCrypto, &SigningKey::from_bytes(&SERVER_SEED))
    .unwrap()
}

/// docs/protocol.md §10: a quarantined receipt does not release the block
/// (the Linux relay's test of the same rule is in crates/relay/tests).
#[test]
fn a_quarantined_receipt_keeps_the_block_and_it_is_offered_again() {
    let mut storage = Storage::new(4096);
    let mut r = relay(&mut storage);
    let sealed = one_block_published(&mut r);
    let quarantined = receipt(ReceiptStatus::Quarantined, &sealed);
    let outcome = r
        .handle_receipt(Instant::from_secs_for_test(13), &quarantined)
        .unwrap();
    assert!(matches!(
        outcome,
        ReceiptOutcome::Quarantined { height: 0, .. }
    ));
    assert_eq!(r.outbox().count(), 1, "kept");
    assert!(r.read_block(0, &mut [0u8; 8192]).is_some(), "bytes kept");
    assert!(publish_due(&mut r, Instant::from_secs_for_test(50)).is_empty());
    assert_eq!(
        publish_due(&mut r, Instant::from_secs_for_test(73)).len(),
        1,
        "offered again after the back-off (60 s)"
    );
}

/// §10: a receipt refused for good frees the block's flash slot; it is never offered again.
#[test]
fn a_block_refused_for_good_is_freed_and_never_offered_again() {
    let mut storage = Storage::new(4096);
    let mut r = relay(&mut storage);
    let sealed = one_block_published(&mut r);
    let refused = receipt(ReceiptStatus::Refused, &sealed);
    let outcome = r
        .handle_receipt(Instant::from_secs_for_test(13), &refused)
        .unwrap();
    assert!(
        matches!(outcome, ReceiptOutcome::Refused { height: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(r.outbox().count(), 0, "the slot is free");
    assert!(
        r.read_block(0, &mut [0u8; 8192]).is_none(),
        "bytes released"
    );
    assert!(publish_due(&mut r, Instant::from_secs_for_test(1_000)).is_empty());
}

/// The flash journal: what was ACKed survives a power cut (unsealed frames
/// are batched again, sealed blocks wait in the outbox with the chain tip),
/// and a retransmission after the reboot is a duplicate, not a second copy.
#[test]
fn acked_frames_blocks_and_the_chain_tip_survive_a_power_cut() {
    let mut flash = Flash::new();
    let mut storage = Storage::new(4096);
    let sealed;
    let mut sender =
        Sender::<_, 8>::new(RustCrypto, SenderConfig::new(1, 1), &secret(1), 1, 0).unwrap();
    let mut last_frame = Vec::new();
    {
        let mut r = journaled_relay_fed(&mut flash, &mut storage);
        r.request_flush();
        r.poll_seal(Instant::from_secs_for_test(1), Some(1));
        sealed = loop {
            if let Some(b) = r.poll_pow(1000) {
                break b;
            }
        };
        // Two more frames are ACKed and not sealed; then the power goes.
        for k in 0..2u64 {
            let now = Instant::from_millis(k);
            sender.push_reading(Reading::default());
            let mut buf = [0u8; MAX_LEN];
            let len = sender.poll_transmit(now, 0, &mut buf).unwrap().unwrap();
            let mut ack = [0u8; 48];
            let a = r
                .handle_frame(now, Some(5 + k), &[1; 6], &buf[..len], &mut ack)
                .unwrap();
            if k == 1 {
                // This ACK is lost on air: the meter will retransmit.
                last_frame = buf[..len].to_vec();
            } else {
                sender.handle_ack(now, &ack[..a]).unwrap();
            }
        }
    }
    let journal = Journal::<_, 2>::open(&RustCrypto, &mut flash, RelayState::default()).unwrap();
    let tip = journal.tip();
    assert_eq!((tip.next_height, tip.prev_hash), (1, sealed.hash));
    let tip = ChainTip::from(tip);
    let mut r = relay_on(journal, tip, &mut storage.blocks, &mut storage.outbox);
    let found = r.recover(Instant::ZERO).unwrap();
    assert_eq!((found.blocks, found.frames, found.unsealed), (1, 5, 2));
    assert_eq!(r.outbox().count(), 1);
    assert_eq!(r.pending_frames(), 2);
    let mut ack = [0u8; 48];
    r.handle_frame(Instant::ZERO, Some(9), &[1; 6], &last_frame, &mut ack)
        .unwrap();
    assert_eq!(
        r.ingress_stats().frames_duplicate,
        1,
        "the retransmission is recognised after the reboot"
    );
    assert_eq!(r.pending_frames(), 2, "and not batched twice");
    r.handle_connected();
    let published = publish_due(&mut r, Instant::from_secs_for_test(2));
    assert_eq!(published.len(), 1, "the sealed block is offered again");
    let p = gridpow_proto::wire::BlockPacket::new_checked(&published[0][..]).unwrap();
    assert_eq!(
        p.header().hash(&RustCrypto),
        sealed.hash,
        "rebuilt byte for byte"
    );
}

#[test]
fn without_a_transport_blocks_stay_and_new_frames_are_refused_not_lost() {
    // Blocks of 1 KiB: 10 one-reading frames (86 bytes with prefix) fill one.
    let mut storage = Storage::new(1024);
    let mut r = relay(&mut storage);
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
        while r.poll_pow(10_000).is_some() {}
        assert_eq!(r.poll_publish(now), None, "never connected");
    }
    assert_eq!(refused, Some(RelayError::Full));
    // Two sealed blocks fill the outbox, so no third is started; a full
    // batch is pending, nothing was dropped.
    assert_eq!(r.outbox().count(), 2);
    assert_eq!(r.pending_frames(), 10);
    assert_eq!(r.ingress_stats().frames_accepted, 30);
    assert_eq!(s.stats().readings_acked, 30);
    assert_eq!(r.stats().refused_full, 1);
}

#[test]
fn frames_are_refused_while_the_wall_clock_is_unknown() {
    let mut storage = Storage::new(4096);
    let mut r = relay(&mut storage);
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

#[test]
fn acks_state_the_access_points_channel_once_the_relay_learns_it() {
    let mut storage = Storage::new(4096);
    let mut r = relay(&mut storage);
    let mut s = Sender::<_, 8>::new(RustCrypto, SenderConfig::new(1, 1), &secret(1), 1, 0).unwrap();
    let mut ack = [0u8; 48];
    let mut send = |r: &mut Relay<'_>, s: &mut Sender<RustCrypto, 8>, t: u64| {
        let now = Instant::from_millis(t);
        s.push_reading(Reading::default());
        let mut buf = [0u8; MAX_LEN];
        let n = s.poll_transmit(now, 0, &mut buf).unwrap().unwrap();
        let a = r
            .handle_frame(now, Some(1_000 + t), &[1; 6], &buf[..n], &mut ack)
            .unwrap();
        s.handle_ack(now, &ack[..a]).unwrap().channel
    };
    assert_eq!(send(&mut r, &mut s, 0), 6);
    // The station associated and the access point is on channel 11.
    r.set_channel(11);
    assert_eq!(r.channel(), 11);
    assert_eq!(send(&mut r, &mut s, 1), 11);
}

#[test]
fn a_meter_listed_under_two_key_ids_is_taken_under_both_during_a_site_rotation() {
    let mut storage = Storage::new(4096);
    let new_secret = MeterSecret::from_bytes(&[0x42; 48]);
    // The blob lists meter 1 twice (key ids 1 and 2), and meter 2 once.
    let meters = [
        (1, 1, secret(1)),
        (1, 2, new_secret.clone()),
        (2, 1, secret(2)),
    ]
    .map(|(meter_id, key_id, s)| RelayMeter {
        meter_id,
        key_id,
        mac: None,
        secret: s.hop,
    });
    let mut r: Relay<'_> = relay_with(
        meters,
        RamStore::new(&mut storage.slots),
        ChainTip::default(),
        &mut storage.blocks,
        &mut storage.outbox,
    );
    for (n, (key_id, s)) in [(1u8, secret(1)), (2, new_secret)].into_iter().enumerate() {
        let mut sender = Sender::<_, 8>::new(
            RustCrypto,
            SenderConfig::new(1, key_id),
            &s,
            1 + n as u32,
            0,
        )
        .unwrap();
        let now = Instant::from_millis(n as u64);
        sender.push_reading(Reading::default());
        let mut buf = [0u8; MAX_LEN];
        let len = sender.poll_transmit(now, 0, &mut buf).unwrap().unwrap();
        let mut ack = [0u8; 48];
        let a = r
            .handle_frame(now, Some(1_000_000), &[1; 6], &buf[..len], &mut ack)
            .unwrap();
        sender
            .handle_ack(now, &ack[..a])
            .expect("the ACK is made with the frame's key id");
    }
    assert_eq!(r.pending_frames(), 2);
    // Meter 2 under a key id the blob does not list is refused.
    assert!(feed_under(&mut r, 2, 2).is_err());
}

/// One frame of meter `id` under `key_id` (with the key-id-1 secret).
fn feed_under<S: RelayStore>(
    r: &mut Relay<'_, S>,
    id: u32,
    key_id: u8,
) -> Result<usize, RelayError> {
    let mut s =
        Sender::<_, 8>::new(RustCrypto, SenderConfig::new(id, key_id), &secret(id), 1, 0).unwrap();
    s.push_reading(Reading::default());
    let mut buf = [0u8; MAX_LEN];
    let len = s
        .poll_transmit(Instant::ZERO, 0, &mut buf)
        .unwrap()
        .unwrap();
    let mut ack = [0u8; 48];
    r.handle_frame(
        Instant::ZERO,
        Some(1_000_000),
        &[id as u8; 6],
        &buf[..len],
        &mut ack,
    )
}

#[test]
fn acked_frames_are_still_sealed_after_a_reboot_into_a_blob_without_their_key() {
    let mut flash = Flash::new();
    let mut storage = Storage::new(4096);
    // The relay runs, then loses power.
    drop(journaled_relay_fed(&mut flash, &mut storage));
    // The relay is flashed with a blob listing meter 2 under key id 2 only
    // (key id 1 retired) and boots: meter 2's three ACKed frames stay.
    let journal = Journal::<_, 2>::open(&RustCrypto, &mut flash, RelayState::default()).unwrap();
    let tip = ChainTip::from(journal.tip());
    let meters = [RelayMeter {
        meter_id: 2,
        key_id: 2,
        mac: None,
        secret: MeterSecret::from_bytes(&[0x42; 48]).hop,
    }];
    let mut r = relay_with(
        meters,
        journal,
        tip,
        &mut storage.blocks,
        &mut storage.outbox,
    );
    let found = r.recover(Instant::ZERO).unwrap();
    assert_eq!(
        (found.frames, found.unsealed, found.refused_now),
        (3, 3, 3),
        "recovered, still to be sealed, refused by today's blob"
    );
    assert_eq!(r.pending_frames(), 3);
}
