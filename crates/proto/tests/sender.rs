//! The meter-side sender's timers, backlog and ACK handling, step by step.

use gridpow_proto::crypto::{HopKeys, MeterSecret, RustCrypto};
use gridpow_proto::ingress::{FixedMeterTable, Ingress, IngressConfig, MeterEntry, Verdict};
use gridpow_proto::sender::{PushOutcome, Sender, SenderConfig};
use gridpow_proto::wire::Reading;
use gridpow_proto::{Duration, Error, Instant, Rejected};

const SECRET: MeterSecret = MeterSecret::from_bytes(&[9; 48]);

fn sender() -> Sender<RustCrypto, 4> {
    let mut cfg = SenderConfig::new(7, 1);
    // These tests follow one frame's timers; the offsets have their own tests.
    cfg.start_spread = Duration::ZERO;
    cfg.phase_spread = Duration::ZERO;
    cfg.ack_timeout = Duration::from_millis(100);
    cfg.max_backoff = Duration::from_millis(350);
    cfg.max_retries = 3;
    cfg.retry_holdoff = Duration::from_secs(5);
    Sender::new(RustCrypto, cfg, &SECRET, 2, 0).expect("config")
}

fn ingress() -> Ingress<RustCrypto, FixedMeterTable<4>> {
    ingress_of_relay(3)
}

fn r(i: u64) -> Reading {
    Reading {
        energy_mwh: i,
        ..Reading::default()
    }
}

#[test]
fn retransmissions_back_off_exponentially_up_to_the_cap_then_the_frame_is_abandoned() {
    let mut s = sender();
    s.push_reading(r(1));
    let mut buf = [0u8; 250];
    let t0 = Instant::ZERO;
    assert!(s.poll_transmit(t0, 0, &mut buf).expect("ok").is_some());
    // Entropy 0 means no jitter: waits of 100, 200, 350 (capped), 350 ms.
    let mut now = t0;
    for wait in [100u64, 200, 350] {
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_millis(wait)));
        now = now + Duration::from_millis(wait);
        assert!(
            s.poll_transmit(now, 0, &mut buf).expect("ok").is_some(),
            "retransmission after {wait} ms"
        );
    }
    now = now + Duration::from_millis(350);
    assert_eq!(
        s.poll_transmit(now, 0, &mut buf).expect("ok"),
        None,
        "fourth retry exceeds max_retries"
    );
    assert_eq!(s.stats().frames_abandoned, 1);
    assert_eq!(s.backlog_len(), 1, "the reading went back to the backlog");
    assert_eq!(
        s.poll_timeout(),
        Some(now + Duration::from_secs(5)),
        "holdoff before the next frame"
    );
    assert_eq!(s.stats().retransmissions, 3);
}

#[test]
fn jitter_stays_within_half_the_timeout() {
    let mut s = sender();
    s.push_reading(r(1));
    let mut buf = [0u8; 250];
    s.poll_transmit(Instant::ZERO, u32::MAX, &mut buf)
        .expect("ok");
    let t = s.poll_timeout().expect("armed").as_micros();
    assert!((100_000..=150_000).contains(&t), "{t}");
}

#[test]
fn full_backlog_drops_the_oldest_and_says_so() {
    let mut s = sender();
    for i in 0..4 {
        assert_eq!(s.push_reading(r(i)), PushOutcome::Queued { seq: i as u32 });
    }
    assert_eq!(
        s.push_reading(r(4)),
        PushOutcome::QueuedDroppedOldest {
            seq: 4,
            dropped_seq: 0
        }
    );
    assert_eq!(s.stats().readings_dropped, 1);
    assert_eq!(s.backlog_len(), 4);
}

#[test]
fn an_authentic_ack_confirms_the_frame_and_sets_the_clock() {
    let mut s = sender();
    let mut relay = ingress();
    for i in 0..3 {
        s.push_reading(r(i));
    }
    assert_eq!(s.wall_clock_ms(Instant::ZERO), None);
    let mut buf = [0u8; 250];
    let n = s
        .poll_transmit(Instant::from_millis(10), 0, &mut buf)
        .expect("ok")
        .expect("frame");
    let v = relay.handle_frame(&[0; 6], &buf[..n]).expect("accepted");
    assert!(matches!(v, Verdict::Accepted(i) if i.reading_count == 3 && i.first_new == 0));
    let mut ack = [0u8; 64];
    let an = relay
        .emit_ack(&v, 1_700_000_000_000, &mut ack)
        .expect("ack");
    let acked = s
        .handle_ack(Instant::from_millis(30), &ack[..an])
        .expect("ack accepted");
    assert_eq!(
        (
            acked.readings,
            acked.relay_id,
            acked.channel,
            acked.duplicate
        ),
        (3, 3, 6, false)
    );
    assert_eq!(acked.round_trip, Duration::from_millis(20));
    assert_eq!(
        s.wall_clock_ms(Instant::from_millis(1030)),
        Some(1_700_000_001_000)
    );
    assert_eq!(s.unconfirmed(), 0);
    // The same ACK again confirms nothing: it is late, not refused.
    assert_eq!(
        s.handle_ack(Instant::from_millis(31), &ack[..an]),
        Err(Error::Rejected(Rejected::AlreadyConfirmed))
    );
    assert_eq!((s.stats().acks_late, s.stats().acks_rejected), (1, 0));
}

fn ingress_of_relay(relay_id: u32) -> Ingress<RustCrypto, FixedMeterTable<4>> {
    let mut t = FixedMeterTable::new();
    t.insert(MeterEntry::new(7, None, HopKeys::new(1, &SECRET.hop)))
        .expect("room");
    Ingress::new(
        RustCrypto,
        IngressConfig {
            relay_id,
            channel: 6,
            require_registered_mac: false,
        },
        t,
    )
}

#[test]
fn a_meter_heard_by_two_relays_takes_the_first_ack_and_counts_the_other_as_late() {
    let mut s = sender();
    let (mut a, mut b) = (ingress_of_relay(1), ingress_of_relay(2));
    let mut buf = [0u8; 250];
    let mut acks = |s: &mut Sender<RustCrypto, 4>, n: u64| {
        s.push_reading(r(n));
        let len = s
            .poll_transmit(Instant::from_millis(n * 1000), 0, &mut buf)
            .expect("ok")
            .expect("frame");
        // Both relays hear the frame, accept it as new and ACK it.
        [&mut a, &mut b].map(|relay| {
            let v = relay.handle_frame(&[0; 6], &buf[..len]).expect("accepted");
            assert!(matches!(v, Verdict::Accepted(_)), "{v:?}");
            let mut ack = [0u8; 64];
            let an = relay.emit_ack(&v, 5, &mut ack).expect("ack");
            ack[..an].to_vec()
        })
    };
    let [from_a, from_b] = acks(&mut s, 1);
    let t = Instant::from_millis(1010);
    assert_eq!(s.handle_ack(t, &from_b).expect("first ACK").relay_id, 2);
    assert_eq!(
        s.handle_ack(t, &from_a),
        Err(Error::Rejected(Rejected::AlreadyConfirmed))
    );
    // The next frame is in flight when relay 1's ACK of the last one comes
    // again: still late, and it confirms nothing.
    let [next_a, _] = acks(&mut s, 2);
    assert_eq!(
        s.handle_ack(Instant::from_millis(2005), &from_a),
        Err(Error::Rejected(Rejected::AlreadyConfirmed))
    );
    assert_eq!(s.unconfirmed(), 1);
    assert_eq!(
        s.handle_ack(Instant::from_millis(2010), &next_a)
            .expect("ACK")
            .relay_id,
        1
    );
    // Two frames back it is merely unexpected.
    assert_eq!(
        s.handle_ack(Instant::from_millis(2020), &from_b),
        Err(Error::Rejected(Rejected::UnexpectedAck))
    );
    let st = s.stats();
    assert_eq!(
        (st.acks_accepted, st.acks_late, st.acks_rejected),
        (2, 2, 1)
    );
    assert_eq!(st.readings_acked, 2);
}

#[test]
fn a_forged_or_foreign_ack_confirms_nothing() {
    let mut s = sender();
    s.push_reading(r(0));
    let mut buf = [0u8; 250];
    let n = s
        .poll_transmit(Instant::ZERO, 0, &mut buf)
        .expect("ok")
        .expect("frame");
    let mut relay = ingress();
    let v = relay.handle_frame(&[0; 6], &buf[..n]).expect("accepted");
    let mut ack = [0u8; 64];
    let an = relay.emit_ack(&v, 5, &mut ack).expect("ack");
    let mut forged = ack;
    forged[20] ^= 1;
    assert_eq!(
        s.handle_ack(Instant::ZERO, &forged[..an]),
        Err(Error::Rejected(Rejected::BadTag))
    );
    assert_eq!(s.stats().acks_rejected, 1);
    assert_eq!(s.unconfirmed(), 1);
}

#[test]
fn retransmitted_frame_is_acked_again_but_delivered_once_and_resent_readings_are_not_delivered_twice(
) {
    let mut s = sender();
    let mut relay = ingress();
    let mut buf = [0u8; 250];
    for i in 0..2 {
        s.push_reading(r(i));
    }
    let n = s
        .poll_transmit(Instant::ZERO, 0, &mut buf)
        .expect("ok")
        .expect("frame");
    let first = buf[..n].to_vec();
    assert!(matches!(
        relay.handle_frame(&[0; 6], &first),
        Ok(Verdict::Accepted(_))
    ));
    // ACK lost; the meter retransmits the same bytes: a duplicate, ACKed with the flag.
    let v = relay
        .handle_frame(&[0; 6], &first)
        .expect("duplicate is fine");
    assert!(matches!(v, Verdict::Duplicate(_)));
    // All ACKs lost until the retry limit: the readings travel again in a new frame.
    let mut now = Instant::ZERO;
    for _ in 0..4 {
        now = now + Duration::from_secs(1);
        let _ = s.poll_transmit(now, 0, &mut buf).expect("ok");
    }
    s.push_reading(r(2));
    now = now + Duration::from_secs(10);
    let n = s
        .poll_transmit(now, 0, &mut buf)
        .expect("ok")
        .expect("new frame");
    match relay.handle_frame(&[0; 6], &buf[..n]).expect("accepted") {
        Verdict::Accepted(info) => {
            assert_eq!(
                (
                    info.first_seq,
                    info.reading_count,
                    info.first_new,
                    info.new_readings()
                ),
                (0, 3, 2, 1)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(relay.stats().readings_delivered, 3);
    assert_eq!(relay.stats().readings_redundant, 2);
}

/// A sender for meter 7 under `key_id`, with its own secret (a re-provisioned
/// meter gets the secret of the new site key id).
fn sender_under(key_id: u8, secret: &MeterSecret) -> Sender<RustCrypto, 4> {
    let mut cfg = SenderConfig::new(7, key_id);
    cfg.start_spread = Duration::ZERO;
    cfg.phase_spread = Duration::ZERO;
    Sender::new(RustCrypto, cfg, secret, 2, 0).expect("config")
}

#[test]
fn during_a_site_rotation_a_relay_takes_frames_under_both_key_ids_and_acks_each_with_its_own() {
    const NEW: MeterSecret = MeterSecret::from_bytes(&[4; 48]);
    let mut t = FixedMeterTable::<4>::new();
    let mut entry = MeterEntry::new(7, None, HopKeys::new(2, &NEW.hop));
    entry
        .add_keys(HopKeys::new(1, &SECRET.hop))
        .expect("second key id");
    // Re-adding a key id replaces it; a third key id does not fit.
    entry
        .add_keys(HopKeys::new(1, &SECRET.hop))
        .expect("same key id");
    assert_eq!(
        entry.add_keys(HopKeys::new(3, &NEW.hop)),
        Err(gridpow_proto::Capacity::TooManyKeyIds)
    );
    t.insert(entry).expect("room");
    let mut relay = Ingress::new(
        RustCrypto,
        IngressConfig {
            relay_id: 3,
            channel: 6,
            require_registered_mac: false,
        },
        t,
    );
    let mut buf = [0u8; 250];
    let mut ack = [0u8; 64];
    // The meter before and after it is flashed with key id 2: each frame is
    // accepted and each ACK verifies at the sender that sent it.
    for (n, (key_id, secret)) in [(1u8, &SECRET), (2, &NEW)].into_iter().enumerate() {
        let mut s = sender_under(key_id, secret);
        s.push_reading(r(n as u64));
        let len = s
            .poll_transmit(Instant::ZERO, 0, &mut buf)
            .expect("ok")
            .expect("frame");
        let v = relay.handle_frame(&[0; 6], &buf[..len]).expect("accepted");
        assert_eq!(v.info().key_id, key_id);
        let an = relay.emit_ack(&v, 5, &mut ack).expect("ack");
        s.handle_ack(Instant::from_millis(10), &ack[..an])
            .expect("the ACK is made with the frame's key id");
    }
    // A key id the relay does not hold is refused before any tag is checked.
    let mut s = sender_under(3, &NEW);
    s.push_reading(r(9));
    let len = s
        .poll_transmit(Instant::ZERO, 0, &mut buf)
        .expect("ok")
        .expect("frame");
    assert_eq!(
        relay.handle_frame(&[0; 6], &buf[..len]).err(),
        Some(Error::Rejected(Rejected::UnknownKeyId))
    );
}
