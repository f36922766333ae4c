//! The standalone relay on its flash journal, with the power cut at a chosen
//! byte of the run (a RAM NOR flash with a write budget): two meters send 100
//! readings each, the relay seals, publishes and takes receipts while the
//! journal's sectors wrap; after the cut it recovers from the journal and
//! carries on. Every reading a meter had ACKed ends up in exactly one stored
//! block, whatever byte the power was cut at.

use ed25519_dalek::{SigningKey, VerifyingKey};
use gridpow_firmware_logic::journal::Journal;
use gridpow_firmware_logic::provisioning::RelayMeter;
use gridpow_firmware_logic::standalone::{
    RelayError, RelayStorage, StandaloneConfig, StandaloneRelay,
};
use gridpow_firmware_logic::state::{MemFlash, RelayState};
use gridpow_proto::block::{verify_block, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::receipt::ReceiptStatus;
use gridpow_proto::wire::uplink::MAX_LEN;
use gridpow_proto::wire::{LogPosition, Reading, ReceiptRepr};
use gridpow_proto::{Duration, Hash, Instant};

use crate::harness::Outcome;

tests![
    no_cut_carries_every_reading_once,
    cut_early_in_the_first_sector,
    cut_in_a_frame_record_after_sectors_wrapped,
    cut_late_in_the_run,
    cut_at_many_bytes_loses_nothing_acknowledged,
];

const READINGS: u32 = 100;
const SECTORS: usize = 3;
type Flash = MemFlash<{ SECTORS * 4096 }>;
const SERVER_SEED: [u8; 32] = [6; 32];

fn secret(id: u32) -> MeterSecret {
    MeterSecret::from_bytes(&[id as u8 + 40; 48])
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

/// The grid server's part: verifies each block, stores it once, answers.
struct Server {
    stored: [Hash; 128],
    n_stored: usize,
    /// Times each (meter, seq) reading was stored.
    seen: [[u8; READINGS as usize]; 2],
    keys: Keys,
}

impl Server {
    fn take(&mut self, relay_key: &VerifyingKey, block: &[u8]) -> Result<ReceiptRepr, &'static str> {
        let policy = VerifyPolicy {
            relay_id: 3,
            min_difficulty: 6,
        };
        let mut leaves = [(0u32, 0u32, 0usize); 128];
        let mut n = 0;
        let v = verify_block(&RustCrypto, block, relay_key, &policy, &self.keys, |leaf| {
            if n < leaves.len() {
                leaves[n] = (
                    leaf.frame.meter_id(),
                    leaf.body.first_seq(),
                    leaf.frame.reading_count(),
                );
                n += 1;
            }
            Ok(())
        })
        .map_err(|_| "block refused by the verifier")?;
        let known = self.stored[..self.n_stored].contains(&v.hash);
        if !known {
            if self.n_stored == self.stored.len() {
                return Err("too many blocks");
            }
            self.stored[self.n_stored] = v.hash;
            self.n_stored += 1;
            for &(meter, first, count) in &leaves[..n] {
                for s in first..first + count as u32 {
                    let slot = self
                        .seen
                        .get_mut(meter as usize - 1)
                        .and_then(|m| m.get_mut(s as usize))
                        .ok_or("reading out of range")?;
                    *slot += 1;
                }
            }
        }
        Ok(ReceiptRepr {
            status: if known {
                ReceiptStatus::AlreadyStored
            } else {
                ReceiptStatus::Stored
            },
            relay_id: 3,
            height: v.header.height,
            block_hash: v.hash,
            server_id: 1,
            time_ms: 1,
            log: Some(LogPosition { index: v.header.height, tree_size: v.header.height + 1 }),
        })
    }
}

type Relay<'a> = StandaloneRelay<'a, RustCrypto, Journal<&'a mut Flash, 2>, 4>;

fn open<'a>(flash: &'a mut Flash, blocks: &'a mut [u8], outbox: &'a mut [OutboxEntry]) -> Result<Relay<'a>, &'static str> {
    let journal = Journal::<_, 2>::open(&RustCrypto, flash, RelayState::default())
        .map_err(|_| "journal open")?;
    let t = journal.tip();
    let meters = (1..=2).map(|id| RelayMeter {
        meter_id: id,
        key_id: 1,
        mac: None,
        secret: secret(id).hop,
    });
    let mut r = StandaloneRelay::new(
        StandaloneConfig {
            relay_id: 3,
            channel: 1,
            difficulty: 6,
            require_registered_mac: false,
            block_interval: Duration::from_secs(3),
            republish_after: Duration::from_secs(5),
            max_inflight: 2,
        },
        RustCrypto,
        meters,
        &[5; 32],
        &SigningKey::from_bytes(&SERVER_SEED).verifying_key().to_bytes(),
        ChainTip::from(t),
        journal,
        RelayStorage { blocks, outbox },
    )
    .map_err(|_| "relay storage")?;
    r.recover(Instant::ZERO).map_err(|_| "journal recovery")?;
    Ok(r)
}

/// Runs the whole scenario with the power cut after `cut` bytes written
/// (`None`: no cut). Returns the number of power cuts that happened and the
/// bytes written before the first boot ended.
fn run(cut: Option<usize>) -> Result<(u32, usize), &'static str> {
    const UNCUT: usize = usize::MAX;
    let mut flash = Flash::new();
    flash.write_budget = Some(cut.unwrap_or(UNCUT));
    let mut written = 0;
    let server_key = SigningKey::from_bytes(&SERVER_SEED);
    let mut server = Server {
        stored: [[0; 32]; 128],
        n_stored: 0,
        seen: [[0; READINGS as usize]; 2],
        keys: Keys([
            (1, MeterKeys::new(&RustCrypto, 1, &secret(1))),
            (2, MeterKeys::new(&RustCrypto, 1, &secret(2))),
        ]),
    };
    let mut meters = [
        Sender::<_, 64>::new(RustCrypto, SenderConfig::new(1, 1), &secret(1), 1, 0).map_err(|_| "sender")?,
        Sender::<_, 64>::new(RustCrypto, SenderConfig::new(2, 1), &secret(2), 1, 0).map_err(|_| "sender")?,
    ];
    let mut pushed = 0u32;
    let mut cuts = 0;
    let mut blocks = [0u8; 2 * 4096];
    let mut outbox = [OutboxEntry::FREE; 2];
    let mut t_ms = 0u64;
    'boot: loop {
        if cuts == 1 {
            // Power back: the flash writes again.
            written = cut.unwrap_or(0);
            flash.write_budget = None;
        }
        if cuts > 3 {
            return Err("more reboots than power cuts");
        }
        let mut relay = open(&mut flash, &mut blocks, &mut outbox)?;
        relay.handle_connected();
        let relay_key = VerifyingKey::from_bytes(&relay.public_key()).map_err(|_| "relay key")?;
        for _round in 0..2000 {
            t_ms += 250;
            let now = Instant::from_millis(t_ms);
            let wall = Some(1_700_000_000_000 + t_ms);
            if pushed < READINGS && t_ms.is_multiple_of(1000) {
                for m in meters.iter_mut() {
                    m.push_reading(Reading::default());
                }
                pushed += 1;
            }
            for (i, m) in meters.iter_mut().enumerate() {
                let mut frame = [0u8; MAX_LEN];
                let Ok(Some(len)) = m.poll_transmit(now, 0, &mut frame) else {
                    continue;
                };
                let mut ack = [0u8; 48];
                match relay.handle_frame(now, wall, &[i as u8 + 1; 6], &frame[..len], &mut ack) {
                    Ok(a) => {
                        let _ = m.handle_ack(now, &ack[..a]);
                    }
                    Err(RelayError::JournalFailed) => {
                        cuts += 1;
                        continue 'boot;
                    }
                    Err(_) => {}
                }
            }
            relay.poll_seal(now, wall);
            while relay.poll_pow(4096).is_some() {}
            if relay.stats().store_errors > 0 {
                cuts += 1;
                continue 'boot;
            }
            while let Some(order) = relay.poll_publish(now) {
                let mut bytes = [0u8; 4096];
                let n = relay.read_block(order.height, &mut bytes).ok_or("published block unreadable")?;
                relay.handle_published(order.height, now);
                let receipt = server
                    .take(&relay_key, &bytes[..n])?
                    .to_signed_bytes(&RustCrypto, &server_key)
                    .map_err(|_| "receipt not signable")?;
                relay.handle_receipt(now, &receipt).map_err(|_| "receipt refused")?;
                if relay.stats().store_errors > 0 {
                    cuts += 1;
                    continue 'boot;
                }
            }
            let acked = meters.iter().all(|m| m.stats().readings_acked == u64::from(READINGS));
            if acked && relay.pending_frames() == 0 && relay.outbox().count() == 0 && !relay.is_solving() {
                break 'boot;
            }
        }
        return Err("the run did not finish");
    }
    for m in &server.seen {
        if m.iter().any(|&c| c != 1) {
            return Err("a reading was stored zero times or twice");
        }
    }
    if cuts == 0 {
        written = UNCUT - flash.write_budget.unwrap_or(UNCUT);
    }
    if flash.erase_counts.iter().take(SECTORS).any(|&e| e < 2) {
        return Err("the journal's sectors did not all wrap");
    }
    Ok((cuts, written))
}

fn no_cut_carries_every_reading_once() -> Outcome {
    let (cuts, written) = check_ok!(run(None));
    check_eq!(cuts, 0);
    semihosting::println!("    {written} bytes written to the journal");
    Ok(())
}

/// Bytes the uncut run writes.
fn total() -> Result<usize, &'static str> {
    run(None).map(|(_, w)| w)
}

fn cut_early_in_the_first_sector() -> Outcome {
    check_eq!(check_ok!(run(Some(1_000))).0, 1);
    Ok(())
}

fn cut_in_a_frame_record_after_sectors_wrapped() -> Outcome {
    let total = check_ok!(total());
    check_eq!(check_ok!(run(Some(total * 2 / 3 + 1))).0, 1);
    Ok(())
}

fn cut_late_in_the_run() -> Outcome {
    let total = check_ok!(total());
    check_eq!(check_ok!(run(Some(total - 3))).0, 1);
    Ok(())
}

fn cut_at_many_bytes_loses_nothing_acknowledged() -> Outcome {
    // 40 points spread over the run: frame records, seals, confirmations,
    // sector headers and retirements are all hit somewhere.
    let total = check_ok!(total());
    let mut at = 7;
    let step = total / 40;
    let mut runs = 0;
    while at < total {
        match run(Some(at)) {
            Ok((1, _)) => runs += 1,
            Ok((n, _)) => {
                semihosting::println!("    cut after {at} bytes: {n} power cuts");
                check!(false, "cut after {at} bytes");
            }
            Err(e) => {
                semihosting::println!("    cut after {at} bytes: {e}");
                check!(false, "cut after {at} bytes");
            }
        }
        at += step;
    }
    semihosting::println!("    {runs} runs, each cut once, nothing lost");
    Ok(())
}
