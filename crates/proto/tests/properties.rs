//! Property tests: every message round-trips, no input panics a parser, every
//! flipped byte of a sealed frame or block is rejected with the right error,
//! and the replay window agrees with a naive model.

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use gridpow_proto::block::{verify_block, BlockBuilder, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::merkle::{
    inclusion_proof, leaf_hash, root_of_hashes, verify_inclusion, MAX_PROOF_LEN,
};
use gridpow_proto::pow::PowSolver;
use gridpow_proto::replay::{ReplayCheck, ReplayWindow, WINDOW_BITS};
use gridpow_proto::wire::ack::{AckPacket, AckRepr};
use gridpow_proto::wire::block::{BlockHeaderRepr, BlockPacket, HEADER_LEN, LEAVES_OFFSET};
use gridpow_proto::wire::receipt::ReceiptRepr;
use gridpow_proto::wire::serial::{SerialDecoder, SerialKind, SerialRepr, MAX_ENCODED};
use gridpow_proto::wire::uplink::{self, UplinkHeader, UplinkPacket, MAX_BODY_LEN, MAX_READINGS};
use gridpow_proto::wire::Reading;
use gridpow_proto::{Error, LeafFault, Malformed, Rejected};
use proptest::prelude::*;

fn reading() -> impl Strategy<Value = Reading> {
    (
        any::<u64>(),
        any::<u16>(),
        any::<u32>(),
        any::<i32>(),
        -10000i16..=10000,
        any::<u16>(),
        any::<u64>(),
        any::<u16>(),
    )
        .prop_map(
            |(
                timestamp_ms,
                voltage_cv,
                current_ma,
                active_power_dw,
                power_factor_e4,
                frequency_mhz,
                energy_mwh,
                flags,
            )| Reading {
                timestamp_ms,
                voltage_cv,
                current_ma,
                active_power_dw,
                power_factor_e4,
                frequency_mhz,
                energy_mwh,
                flags,
            },
        )
}

/// A meter's keys from 32 seed bytes: the hop secret is the seed, the
/// end-to-end key its reversed first half (independent enough for tests).
fn keys(secret: [u8; 32]) -> MeterKeys<RustCrypto> {
    let mut b = [0u8; 48];
    b[..32].copy_from_slice(&secret);
    b[32..].copy_from_slice(&secret[..16]);
    b[32..].reverse();
    MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&b))
}

fn seal(secret: [u8; 32], h: UplinkHeader, first_seq: u32, rs: &[Reading]) -> Vec<u8> {
    let mut buf = [0u8; 250];
    let n = uplink::seal(&RustCrypto, &keys(secret), &h, first_seq, rs, &mut buf).expect("seal");
    buf[..n].to_vec()
}

struct Keyring(Vec<(u32, MeterKeys<RustCrypto>)>);
impl KeyLookup<RustCrypto> for Keyring {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.0
            .iter()
            .find(|(id, k)| *id == meter_id && k.key_id() == key_id)
            .map(|(_, k)| k)
    }
}

fn meter_secret(id: u32) -> [u8; 32] {
    let mut s = [0x77u8; 32];
    s[..4].copy_from_slice(&id.to_le_bytes());
    s
}

fn build_block(frames: &[Vec<u8>], difficulty: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut b = BlockBuilder::new(&mut buf).expect("buffer");
    for f in frames {
        b.push_leaf(&RustCrypto, f).expect("room");
    }
    let mut hd = b.header(&RustCrypto, 9, 4, [3; 32], 1_700_000_000_000, difficulty);
    let mut s = PowSolver::new(&RustCrypto, &hd, 0, 1);
    hd.nonce = loop {
        if let Some(n) = s.solve_for(&RustCrypto, 1 << 16) {
            break n;
        }
    };
    let n = b
        .finish(&hd, &SigningKey::from_bytes(&[1; 32]))
        .expect("finish");
    buf.truncate(n);
    buf
}

fn sample_block() -> (Vec<u8>, Keyring) {
    let frames: Vec<Vec<u8>> = (1..=3u32)
        .map(|m| {
            let h = UplinkHeader {
                key_id: 1,
                meter_id: m,
                boot_epoch: 1,
                counter: m,
            };
            seal(
                meter_secret(m),
                h,
                10 * m,
                &[Reading {
                    voltage_cv: 23000,
                    ..Reading::default()
                }; 2],
            )
        })
        .collect();
    let ring = Keyring((1..=3).map(|m| (m, keys(meter_secret(m)))).collect());
    (build_block(&frames, 6), ring)
}

fn verify(block: &[u8], ring: &Keyring) -> Result<(), Error> {
    let policy = VerifyPolicy {
        relay_id: 9,
        min_difficulty: 6,
    };
    verify_block(
        &RustCrypto,
        block,
        &SigningKey::from_bytes(&[1; 32]).verifying_key(),
        &policy,
        ring,
        |_| Ok(()),
    )
    .map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn readings_round_trip(r in reading()) {
        prop_assert_eq!(Reading::parse(&r.to_bytes()), Some(r));
    }

    #[test]
    fn sealed_uplinks_round_trip(rs in prop::collection::vec(reading(), 1..=MAX_READINGS), meter_id: u32, boot_epoch: u32, counter: u32, first_seq: u32, secret: [u8; 32]) {
        let h = UplinkHeader { key_id: 1, meter_id, boot_epoch, counter };
        let frame = seal(secret, h, first_seq, &rs);
        let p = UplinkPacket::new_checked(&frame[..]).expect("checked");
        prop_assert_eq!(p.header(), h);
        let mut scratch = [0u8; MAX_BODY_LEN];
        let body = p.open(&RustCrypto, &keys(secret), &mut scratch).expect("opens");
        let got: Vec<(u32, Reading)> = body.readings().collect();
        let want: Vec<(u32, Reading)> = rs.iter().enumerate().map(|(i, r)| (first_seq.wrapping_add(i as u32), *r)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn acks_round_trip(flags in 0u8..2, meter_id: u32, boot_epoch: u32, counter: u32, relay_time_ms: u64, relay_id: u32, channel: u8, key: [u8; 16]) {
        let a = AckRepr { key_id: 1, flags, meter_id, boot_epoch, counter, relay_time_ms, relay_id, channel };
        let mut buf = [0u8; 48];
        a.emit(&RustCrypto, &key, &mut buf).expect("emit");
        prop_assert_eq!(AckPacket::new_checked(&buf[..]).expect("checked").verify(&RustCrypto, &key), Ok(a));
    }

    #[test]
    fn block_headers_round_trip(difficulty: u8, relay_id: u32, height: u64, prev_hash: [u8; 32], merkle_root: [u8; 32], leaf_count in 0u32..=65535, time_ms: u64, nonce: u64) {
        let h = BlockHeaderRepr { difficulty, relay_id, height, prev_hash, merkle_root, leaf_count, time_ms, nonce };
        prop_assert_eq!(BlockHeaderRepr::parse(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn serial_messages_round_trip(data in prop::collection::vec(any::<u8>(), 0..=250), mac: [u8; 6], rssi: i8) {
        let m = SerialRepr { kind: SerialKind::AirRx, mac, rssi, data: &data };
        let mut out = [0u8; MAX_ENCODED];
        let n = m.emit(&mut out).expect("encode");
        let mut d = SerialDecoder::new();
        let mut got = None;
        for &b in &out[..n] {
            if let Some(r) = d.push(b) {
                got = Some(r.map(|r| (r.mac, r.rssi, r.data.to_vec())));
            }
        }
        prop_assert_eq!(got, Some(Ok((mac, rssi, data.clone()))));
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_parser(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = UplinkPacket::new_checked(&bytes[..]);
        let _ = AckPacket::new_checked(&bytes[..]).map(|p| p.verify(&RustCrypto, &[0; 16]));
        let _ = BlockHeaderRepr::parse(&bytes);
        let _ = BlockPacket::new_checked(&bytes[..]).map(|p| p.leaves().count());
        let _ = ReceiptRepr::parse_verified(&RustCrypto, &bytes, &SigningKey::from_bytes(&[1; 32]).verifying_key());
        let _ = SerialRepr::parse(&bytes);
        let mut d = SerialDecoder::new();
        for &b in &bytes {
            let _ = d.push(b);
        }
        let (_, ring) = sample_block();
        let _ = verify(&bytes, &ring);
    }

    #[test]
    fn arbitrary_uplink_shaped_bytes_are_rejected_not_panicked(mut bytes in prop::collection::vec(any::<u8>(), 84..=244)) {
        bytes[0] = 2;
        bytes[1] = 1;
        bytes[3] = 0;
        if let Ok(p) = UplinkPacket::new_checked(&bytes[..]) {
            let mut scratch = [0u8; MAX_BODY_LEN];
            prop_assert!(p.open(&RustCrypto, &keys([1; 32]), &mut scratch).is_err());
        }
    }

    #[test]
    fn replay_window_agrees_with_a_naive_model(ops in prop::collection::vec((0u32..3, 0u32..300), 1..400)) {
        let mut w = ReplayWindow::new();
        let mut accepted: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (epoch, counter) in ops {
            let newest = accepted.iter().next_back().copied();
            let expect = match newest {
                None => ReplayCheck::New,
                Some((e, _)) if epoch > e => ReplayCheck::New,
                Some((e, _)) if epoch < e => ReplayCheck::StaleEpoch,
                Some((_, top)) if counter > top => ReplayCheck::New,
                Some((_, top)) if top - counter >= WINDOW_BITS => ReplayCheck::TooOld,
                Some(_) if accepted.contains(&(epoch, counter)) => ReplayCheck::Duplicate,
                Some(_) => ReplayCheck::New,
            };
            prop_assert_eq!(w.check(epoch, counter), expect, "({}, {})", epoch, counter);
            if expect == ReplayCheck::New {
                prop_assert!(w.accept(epoch, counter));
                accepted.insert((epoch, counter));
                // The model forgets older epochs, as the window does.
                accepted.retain(|&(e, _)| e == epoch);
            } else {
                prop_assert!(!w.accept(epoch, counter));
            }
        }
    }

    #[test]
    fn inclusion_proofs_verify_for_any_tree(n in 1usize..200, pick: prop::sample::Index) {
        let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&RustCrypto, &(i as u32).to_le_bytes())).collect();
        let root = root_of_hashes(&RustCrypto, &leaves);
        let i = pick.index(n);
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let len = inclusion_proof(&RustCrypto, &leaves, i, &mut path).expect("proof");
        prop_assert!(verify_inclusion(&RustCrypto, &leaves[i], i as u64, n as u64, &path[..len], &root));
        let wrong = leaf_hash(&RustCrypto, b"not in the tree");
        prop_assert!(!verify_inclusion(&RustCrypto, &wrong, i as u64, n as u64, &path[..len], &root));
    }
}

#[test]
fn every_flipped_byte_of_a_sealed_frame_is_rejected_with_the_right_error() {
    let secret = [0x42; 32];
    let h = UplinkHeader {
        key_id: 1,
        meter_id: 5,
        boot_epoch: 2,
        counter: 3,
    };
    let frame = seal(secret, h, 0, &[Reading::default(); 3]);
    for i in 0..frame.len() {
        for bit in 0..8 {
            let mut f = frame.clone();
            f[i] ^= 1 << bit;
            let err = UplinkPacket::new_checked(&f[..])
                .map_err(Error::from)
                .and_then(|p| {
                    let mut scratch = [0u8; MAX_BODY_LEN];
                    p.open(&RustCrypto, &keys(secret), &mut scratch)
                        .map(|_| ())
                        .map_err(Error::from)
                });
            let expected: Error = match i {
                0 => Malformed::UnsupportedVersion(f[0]).into(),
                1 => Malformed::WrongType(f[1]).into(),
                2 => Rejected::UnknownKeyId.into(),
                3 => Malformed::NonZeroReserved.into(),
                _ => Rejected::BadTag.into(),
            };
            assert_eq!(err, Err(expected), "byte {i} bit {bit}");
        }
    }
}

#[test]
fn every_flipped_byte_of_a_sealed_block_is_rejected_with_the_right_error() {
    let (block, ring) = sample_block();
    assert_eq!(verify(&block, &ring), Ok(()));
    for i in 0..block.len() {
        let mut b = block.clone();
        b[i] ^= 0x01;
        let err = verify(&b, &ring).expect_err("a flipped byte must not verify");
        let ok = match i {
            0 => matches!(err, Error::Malformed(Malformed::UnsupportedVersion(_))),
            1 => matches!(err, Error::Malformed(Malformed::WrongType(_))),
            // Difficulty 6 → 7 claims more work than the hash has; 6 → 7 or lower fails PoW or policy.
            2 => matches!(
                err,
                Error::Rejected(
                    Rejected::InsufficientWork { .. } | Rejected::DifficultyTooLow { .. }
                )
            ),
            3 => matches!(err, Error::Malformed(Malformed::NonZeroReserved)),
            4..=7 => matches!(err, Error::Rejected(Rejected::WrongRelay)),
            80..=83 => matches!(
                err,
                Error::Malformed(Malformed::BadLeafFraming | Malformed::TooManyLeaves)
            ),
            // Any other header byte changes the hash: the PoW (usually) or the signature fails.
            _ if i < HEADER_LEN => matches!(
                err,
                Error::Rejected(Rejected::InsufficientWork { .. } | Rejected::BadSignature)
            ),
            _ if i < LEAVES_OFFSET => matches!(err, Error::Rejected(Rejected::BadSignature)),
            _ => matches!(
                err,
                Error::Malformed(Malformed::BadLeafFraming | Malformed::BadLeafLength)
                    | Error::Rejected(Rejected::MerkleRootMismatch)
            ),
        };
        assert!(ok, "byte {i}: unexpected error {err:?}");
    }
}

#[test]
fn a_relay_cannot_alter_or_invent_a_reading_in_a_block_it_signs() {
    // The relay signs a block whose second frame it forged: the meter's tag gives it away.
    let h = UplinkHeader {
        key_id: 1,
        meter_id: 2,
        boot_epoch: 1,
        counter: 9,
    };
    let genuine = seal(meter_secret(2), h, 0, &[Reading::default()]);
    let mut forged = genuine.clone();
    forged[20] ^= 0xff;
    let ring = Keyring((1..=3).map(|m| (m, keys(meter_secret(m)))).collect());
    let block = build_block(&[genuine.clone(), forged.clone()], 6);
    assert_eq!(
        verify(&block, &ring),
        Err(Error::Rejected(Rejected::Leaf {
            index: 1,
            fault: LeafFault::BadHopTag
        }))
    );
    // The relay holds the hop key and re-tags the hop: the end-to-end tag still gives it away.
    uplink::write_hop_tag(&RustCrypto, &keys(meter_secret(2)).hop, &mut forged).unwrap();
    let block = build_block(&[genuine.clone(), forged], 6);
    assert_eq!(
        verify(&block, &ring),
        Err(Error::Rejected(Rejected::Leaf {
            index: 1,
            fault: LeafFault::BadTag
        }))
    );
    let unknown = seal(
        meter_secret(99),
        UplinkHeader { meter_id: 99, ..h },
        0,
        &[Reading::default()],
    );
    let block = build_block(&[unknown], 6);
    assert_eq!(
        verify(&block, &ring),
        Err(Error::Rejected(Rejected::Leaf {
            index: 0,
            fault: LeafFault::UnknownMeter
        }))
    );
    let block = build_block(&[genuine], 6);
    let replay_policy = |_: &gridpow_proto::block::VerifiedLeaf<'_>| Err(LeafFault::Replay);
    let policy = VerifyPolicy {
        relay_id: 9,
        min_difficulty: 6,
    };
    let err = verify_block(
        &RustCrypto,
        &block,
        &SigningKey::from_bytes(&[1; 32]).verifying_key(),
        &policy,
        &ring,
        replay_policy,
    );
    assert_eq!(
        err,
        Err(Error::Rejected(Rejected::Leaf {
            index: 0,
            fault: LeafFault::Replay
        }))
    );
}

#[test]
fn blocks_below_the_required_difficulty_or_from_another_key_are_rejected() {
    let (block, ring) = sample_block();
    let strict = VerifyPolicy {
        relay_id: 9,
        min_difficulty: 20,
    };
    let vk = SigningKey::from_bytes(&[1; 32]).verifying_key();
    assert!(matches!(
        verify_block(&RustCrypto, &block, &vk, &strict, &ring, |_| Ok(())),
        Err(Error::Rejected(Rejected::DifficultyTooLow {
            required: 20,
            claimed: 6
        }))
    ));
    let other = SigningKey::from_bytes(&[2; 32]).verifying_key();
    let policy = VerifyPolicy {
        relay_id: 9,
        min_difficulty: 6,
    };
    assert_eq!(
        verify_block(&RustCrypto, &block, &other, &policy, &ring, |_| Ok(())).map(|_| ()),
        Err(Error::Rejected(Rejected::BadSignature))
    );
}

#[test]
fn chain_links_check_height_and_previous_hash() {
    use gridpow_proto::block::check_link;
    let genesis = BlockHeaderRepr {
        difficulty: 0,
        relay_id: 1,
        height: 0,
        prev_hash: [0; 32],
        merkle_root: [0; 32],
        leaf_count: 0,
        time_ms: 0,
        nonce: 0,
    };
    assert_eq!(check_link(&genesis, None), Ok(()));
    let next = BlockHeaderRepr {
        height: 1,
        prev_hash: genesis.hash(&RustCrypto),
        ..genesis
    };
    assert_eq!(
        check_link(&next, Some((0, &genesis.hash(&RustCrypto)))),
        Ok(())
    );
    assert_eq!(
        check_link(&next, Some((1, &genesis.hash(&RustCrypto)))),
        Err(Rejected::HeightMismatch)
    );
    assert_eq!(
        check_link(&next, Some((0, &[9; 32]))),
        Err(Rejected::PrevHashMismatch)
    );
    assert_eq!(check_link(&next, None), Err(Rejected::HeightMismatch));
}
