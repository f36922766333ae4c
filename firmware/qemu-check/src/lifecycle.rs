//! The relay's block lifecycle on the RV32IMC CPU: the protocol core's
//! machine (`gridpow_proto::lifecycle`) and the firmware's standalone relay
//! driving it with real meters' frames kept in the flash journal, the proof of work searched in chunks,
//! the sealed block checked by the grid server's verifier, and the receipt
//! rules of docs/protocol.md §10 (stored frees the block, quarantined keeps it).

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_firmware_logic::provisioning::RelayMeter;
use gridpow_firmware_logic::journal::Journal;
use gridpow_firmware_logic::standalone::{RelayStorage, StandaloneConfig, StandaloneRelay};
use gridpow_firmware_logic::state::{MemFlash, RelayState};
use gridpow_proto::block::{verify_block, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry, ReceiptOutcome};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::receipt::{ReceiptStatus, RECEIPT_LEN};
use gridpow_proto::wire::uplink::MAX_LEN;
use gridpow_proto::wire::{LogPosition, Reading, ReceiptRepr};
use gridpow_proto::{Duration, Instant};

use crate::harness::Outcome;

tests![
    frames_become_a_verified_block_and_only_a_stored_receipt_frees_it,
];

const SEED: [u8; 32] = [5; 32];
const SERVER_SEED: [u8; 32] = [6; 32];
const BLOCK: usize = 4096;

fn secret(id: u32) -> MeterSecret {
    MeterSecret::from_bytes(&[id as u8; 48])
}

struct Keys([(u32, MeterKeys<RustCrypto>); 2]);
impl KeyLookup<RustCrypto> for Keys {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.0
            .iter()
            .find(|(id, k)| *id == meter_id && k.key_id() == key_id)
            .map(|(_, k)| k)
    }
}

fn frames_become_a_verified_block_and_only_a_stored_receipt_frees_it() -> Outcome {
    // The flash journal on a RAM flash of eight 4 KiB sectors.
    let mut flash = MemFlash::<{ 8 * 4096 }>::new();
    let journal = check_ok!(Journal::<_, 2>::open(&RustCrypto, &mut flash, RelayState::default()));
    let mut blocks = [0u8; 2 * BLOCK];
    let mut outbox = [OutboxEntry::FREE; 2];
    let meters = (1..=2).map(|id| RelayMeter {
        meter_id: id,
        key_id: 1,
        mac: None,
        secret: secret(id).hop,
    });
    let server = SigningKey::from_bytes(&SERVER_SEED);
    let mut relay: StandaloneRelay<'_, _, _, 4> = check_ok!(StandaloneRelay::new(
        StandaloneConfig {
            relay_id: 3,
            channel: 6,
            difficulty: 8,
            require_registered_mac: false,
            block_interval: Duration::from_secs(10),
            republish_after: Duration::from_secs(30),
            max_inflight: 2,
        },
        RustCrypto,
        meters,
        &SEED,
        &server.verifying_key().to_bytes(),
        ChainTip::default(),
        journal,
        RelayStorage {
            blocks: &mut blocks,
            outbox: &mut outbox,
        },
    ));
    for id in 1..=2u32 {
        let mut s = check_ok!(Sender::<_, 8>::new(
            RustCrypto,
            SenderConfig::new(id, 1),
            &secret(id),
            1,
            0
        ));
        for k in 0..5u64 {
            let now = Instant::from_millis(k);
            s.push_reading(Reading::default());
            let mut frame = [0u8; MAX_LEN];
            let len = check_ok!(check_ok!(s.poll_transmit(now, 0, &mut frame)));
            let mut ack = [0u8; 48];
            let a = check_ok!(relay.handle_frame(now, Some(1_000 + k), &[id as u8; 6], &frame[..len], &mut ack));
            check_ok!(s.handle_ack(now, &ack[..a]));
        }
    }
    check_eq!(relay.pending_frames(), 10);
    relay.poll_seal(Instant::from_millis(10_000), Some(2_000));
    let sealed = loop {
        if let Some(b) = relay.poll_pow(64) {
            break b;
        }
    };
    check_eq!(relay.chain().next_height, 1);
    relay.handle_connected();
    let order = check_ok!(relay.poll_publish(Instant::from_millis(10_001)));
    let mut bytes = [0u8; BLOCK];
    let n = check_ok!(relay.read_block(order.height, &mut bytes));
    relay.handle_published(order.height, Instant::from_millis(10_001));
    let relay_key = check_ok!(VerifyingKey::from_bytes(&relay.public_key()));
    let keys = Keys([
        (1, MeterKeys::new(&RustCrypto, 1, &secret(1))),
        (2, MeterKeys::new(&RustCrypto, 1, &secret(2))),
    ]);
    let policy = VerifyPolicy {
        relay_id: 3,
        min_difficulty: 8,
    };
    let v = check_ok!(verify_block(&RustCrypto, &bytes[..n], &relay_key, &policy, &keys, |_| Ok(())));
    check_eq!(v.header.leaf_count, 10);
    check_eq!(v.hash, sealed.hash);

    let receipt = |status| {
        let log = matches!(status, ReceiptStatus::Stored | ReceiptStatus::AlreadyStored)
            .then_some(LogPosition { index: 0, tree_size: 1 });
        ReceiptRepr {
            status,
            relay_id: 3,
            height: 0,
            block_hash: sealed.hash,
            server_id: 1,
            time_ms: 5,
            log,
        }
        .to_signed_bytes(&RustCrypto, &server)
        .unwrap_or([0; RECEIPT_LEN])
    };
    let q = check_ok!(relay.handle_receipt(Instant::from_millis(10_002), &receipt(ReceiptStatus::Quarantined)));
    check!(matches!(q, ReceiptOutcome::Quarantined { height: 0, .. }), "{q:?}");
    check_eq!(relay.outbox().count(), 1);
    let forged = ReceiptRepr {
        status: ReceiptStatus::Stored,
        relay_id: 3,
        height: 0,
        block_hash: sealed.hash,
        server_id: 1,
        time_ms: 5,
        log: Some(LogPosition { index: 0, tree_size: 1 }),
    }
    .to_signed_bytes(&RustCrypto, &SigningKey::from_bytes(&[9; 32]))
    .unwrap_or([0; RECEIPT_LEN]);
    check!(relay.handle_receipt(Instant::from_millis(10_003), &forged).is_err(), "forged receipt taken");
    check_eq!(relay.outbox().count(), 1);
    let ok = check_ok!(relay.handle_receipt(Instant::from_millis(10_004), &receipt(ReceiptStatus::Stored)));
    check!(matches!(ok, ReceiptOutcome::Confirmed { height: 0, .. }), "{ok:?}");
    check_eq!(relay.outbox().count(), 0);
    Ok(())
}
