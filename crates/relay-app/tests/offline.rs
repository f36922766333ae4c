//! The application without a broker, on tokio's paused clock: meters' frames
//! are ACKed and sealed into blocks while every connection attempt fails,
//! the attempts back off 1 s, 2 s, 4 s … up to 30 s, and nothing leaves the
//! outbox without a receipt.
#![allow(clippy::unwrap_used)] // test setup panics on failure by design

use std::cell::RefCell;
use std::rc::Rc;

use embedded_io_adapters::tokio_1::FromTokio;
use gridpow_firmware_logic::provisioning::RelayMeter;
use gridpow_firmware_logic::standalone::{
    RamStore, RelayStorage, StandaloneConfig, StandaloneRelay,
};
use gridpow_proto::crypto::{MeterSecret, RustCrypto};
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry};
use gridpow_proto::sender::{Sender, SenderConfig};
use gridpow_proto::wire::uplink::MAX_LEN;
use gridpow_proto::wire::Reading;
use gridpow_proto::{Duration, MacAddr};
use gridpow_relay_app::host::StdClock;
use gridpow_relay_app::{App, AppConfig, Clock, Connector, NetBuffers, NoLog, Parts, Radio};
use tokio::sync::mpsc;

fn secret(id: u32) -> MeterSecret {
    MeterSecret::from_bytes(&[id as u8; 48])
}

/// Frames in from a channel, ACKs out to another.
struct ChanRadio {
    frames: mpsc::Receiver<(MacAddr, Vec<u8>)>,
    acks: mpsc::UnboundedSender<Vec<u8>>,
}

impl Radio for ChanRadio {
    type Error = std::convert::Infallible;
    async fn receive(&mut self, buf: &mut [u8]) -> (MacAddr, usize) {
        match self.frames.recv().await {
            Some((src, d)) => {
                buf[..d.len()].copy_from_slice(&d);
                (src, d.len())
            }
            None => std::future::pending().await,
        }
    }
    async fn send(&mut self, _dst: &MacAddr, data: &[u8]) -> Result<(), Self::Error> {
        let _ = self.acks.send(data.to_vec());
        Ok(())
    }
}

/// A broker that is never there; remembers when it was asked.
struct Unreachable {
    attempts: Rc<RefCell<Vec<tokio::time::Instant>>>,
}

impl Connector for Unreachable {
    type Socket = FromTokio<tokio::net::TcpStream>;
    type Error = &'static str;
    async fn connect(&mut self) -> Result<Self::Socket, Self::Error> {
        self.attempts.borrow_mut().push(tokio::time::Instant::now());
        Err("connection refused")
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn frames_are_acked_and_sealed_while_offline_and_reconnects_back_off_to_30_s() {
    let mut blocks = vec![0u8; 2 * 4096];
    let mut slots = vec![0u8; 4 * 4096];
    let mut outbox = [OutboxEntry::FREE; 4];
    let relay = StandaloneRelay::<_, _, 8>::new(
        StandaloneConfig {
            relay_id: 3,
            channel: 6,
            difficulty: 8,
            require_registered_mac: false,
            block_interval: Duration::from_secs(1),
            republish_after: Duration::from_secs(30),
            max_inflight: 2,
        },
        RustCrypto,
        (1..=2).map(|id| RelayMeter {
            meter_id: id,
            key_id: 1,
            mac: None,
            secret: secret(id).hop,
        }),
        &[5; 32],
        &[6; 32],
        ChainTip::default(),
        RamStore::<4>::new(&mut slots),
        RelayStorage {
            blocks: &mut blocks,
            outbox: &mut outbox,
        },
    )
    .unwrap();
    let relay = RefCell::new(relay);
    let (frames_tx, frames) = mpsc::channel(1);
    let (acks, mut acks_rx) = mpsc::unbounded_channel();
    let attempts = Rc::new(RefCell::new(Vec::new()));
    let clock = StdClock::default();
    let t0 = tokio::time::Instant::now();
    let (mut rx, mut tx, mut arena, mut block) = (
        vec![0u8; 4608],
        vec![0u8; 4096],
        vec![0u8; 8192],
        vec![0u8; 4096],
    );
    let mut app = App::new(
        &relay,
        Parts {
            radio: ChanRadio { frames, acks },
            clock,
            connector: Unreachable {
                attempts: attempts.clone(),
            },
            rng: rand::rngs::OsRng,
            log: NoLog,
        },
        AppConfig {
            drain_timeout: Duration::from_secs(5),
            ..AppConfig::default()
        },
        gridpow_relay_net::Config {
            relay_id: 3,
            client_id: "relay-3",
            server_name: "localhost",
            ca_der: &[],
            identity: None,
            keep_alive_s: 30,
            session_expiry_s: 3600,
        },
        NetBuffers {
            tls_read: &mut rx,
            tls_write: &mut tx,
            arena: &mut arena,
            block: &mut block,
        },
    );
    let meter = async {
        let mut s =
            Sender::<_, 8>::new(RustCrypto, SenderConfig::new(1, 1), &secret(1), 1, 0).unwrap();
        for _ in 0..20 {
            s.push_reading(Reading::default());
            let mut buf = [0u8; MAX_LEN];
            let n = s.poll_transmit(clock.now(), 0, &mut buf).unwrap().unwrap();
            frames_tx.send(([1; 6], buf[..n].to_vec())).await.unwrap();
            let ack = acks_rx.recv().await.unwrap();
            s.handle_ack(clock.now(), &ack).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        s.stats().readings_acked
    };
    let stop = tokio::time::sleep(std::time::Duration::from_secs(70));
    let (acked, ()) = tokio::join!(meter, app.run(stop));

    assert_eq!(acked, 20, "every reading ACKed while offline");
    let r = relay.borrow();
    assert_eq!(r.ingress_stats().frames_accepted, 20);
    assert!(
        r.lifecycle_stats().blocks_sealed >= 2,
        "blocks sealed offline"
    );
    assert_eq!(r.pending_frames(), 0, "the stop sealed the rest");
    assert_eq!(
        r.outbox().count() as u64,
        r.lifecycle_stats().blocks_sealed,
        "no receipt, so every block is still held"
    );
    assert_eq!(r.lifecycle_stats().blocks_published, 0);
    drop(r);
    let gaps: Vec<u64> = attempts
        .borrow()
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    assert_eq!(gaps, [1, 2, 4, 8, 16, 30], "back-off between attempts");
    assert!(attempts.borrow()[0] - t0 < std::time::Duration::from_millis(10));
    assert_eq!(app.stats().connect_failures, 7);
    assert_eq!(app.stats().acks_sent, 20);
}
