//! Radio adapters: what stands in for ESP-NOW on a Linux host.
//!
//! - [`Medium`]: an in-process air shared by the demo's meters and relay, with
//!   injectable loss.
//! - [`UdpAir`]: frames as UDP datagrams between processes (`gridpow meters`
//!   and `gridpow relay`), with injectable loss.
//!
//! Anyone on the network can send a UDP datagram claiming any MAC, so a port
//! never routes to an address it merely heard from: the caller confirms the
//! sender of a frame ([`RadioPort::confirm_peer`]) once the protocol core has
//! authenticated it, and only confirmed addresses are used.
//!
//! A port may own many MAC addresses (a fleet of virtual meters is one port).
//! The serial bridge to an ESP32 lives with the relay.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gridpow_proto::MacAddr;
use rand::{Rng, SeedableRng};

/// A frame on the air.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RadioFrame {
    /// Sender's MAC.
    pub src: MacAddr,
    /// Addressee's MAC.
    pub dst: MacAddr,
    /// ESP-NOW payload (at most 250 bytes).
    pub data: Vec<u8>,
}

/// Why a radio operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RadioError {
    /// The socket or device failed.
    #[error("radio I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The UDP air address cannot be bound (in use, not local, no permission).
    #[error(
        "cannot listen on UDP {addr} (setting `[radio] udp_listen`): {error}; \
         if another gridpow relay or meters process uses it, stop that one or set another address"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (not a `source`: the text already carries it).
        error: std::io::Error,
    },
    /// The other side of the medium is gone.
    #[error("radio medium closed")]
    Closed,
    /// The payload exceeds 250 bytes.
    #[error("payload of {0} bytes exceeds the 250-byte ESP-NOW limit")]
    TooLong(usize),
    /// No route to the destination MAC is known yet.
    #[error("no route to {0}")]
    NoRoute(String),
}

/// A radio as the relay and the virtual meters use it.
pub trait RadioPort: Send {
    /// Sends `data` from `src` to `dst`. Loss on the air is not an error.
    fn send(&mut self, src: MacAddr, dst: MacAddr, data: &[u8]) -> Result<(), RadioError>;
    /// Waits up to `timeout` for a frame addressed to one of this port's MACs.
    fn recv(&mut self, timeout: Duration) -> Result<Option<RadioFrame>, RadioError>;
    /// Vouches for the sender of the frame [`RadioPort::recv`] returned last:
    /// the protocol core authenticated it as coming from `mac`. Ports that
    /// learn return routes (UDP air) learn them only here; call it before the
    /// next `recv`. Ports whose medium routes by MAC do nothing.
    fn confirm_peer(&mut self, mac: MacAddr, how: Confirmation);
}

/// How far an authenticated frame proves where its sender is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Authentic and new (an accepted uplink, an ACK for the frame in flight):
    /// the sender is where this frame came from, even if it moved.
    Fresh,
    /// Authentic but possibly replayed by someone else (a duplicate uplink):
    /// learns the address of a peer that has none yet, never moves one.
    Replayed,
}

/// Counters of a medium.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediumStats {
    /// Frames offered.
    pub sent: u64,
    /// Frames dropped by injected loss.
    pub lost: u64,
    /// Frames to a MAC nobody owns.
    pub unroutable: u64,
}

struct MediumInner {
    routes: HashMap<MacAddr, Sender<RadioFrame>>,
    loss: f64,
    rng: rand::rngs::StdRng,
    stats: MediumStats,
}

/// An in-process air. Clone it freely; all clones are the same medium.
#[derive(Clone)]
pub struct Medium {
    inner: Arc<Mutex<MediumInner>>,
}

impl Medium {
    /// A medium that drops each frame with probability `loss` (seeded, so runs repeat).
    pub fn new(loss: f64, seed: u64) -> Self {
        Medium {
            inner: Arc::new(Mutex::new(MediumInner {
                routes: HashMap::new(),
                loss: loss.clamp(0.0, 1.0),
                rng: rand::rngs::StdRng::seed_from_u64(seed),
                stats: MediumStats::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MediumInner> {
        // A panicking holder cannot leave the routing table inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A port receiving frames addressed to any of `macs`.
    pub fn port(&self, macs: &[MacAddr]) -> InProcPort {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut inner = self.lock();
        for m in macs {
            inner.routes.insert(*m, tx.clone());
        }
        InProcPort {
            medium: self.clone(),
            rx,
        }
    }

    /// Changes the loss probability.
    pub fn set_loss(&self, loss: f64) {
        self.lock().loss = loss.clamp(0.0, 1.0);
    }

    /// Counters.
    pub fn stats(&self) -> MediumStats {
        self.lock().stats
    }
}

/// One endpoint of a [`Medium`].
pub struct InProcPort {
    medium: Medium,
    rx: Receiver<RadioFrame>,
}

impl RadioPort for InProcPort {
    fn send(&mut self, src: MacAddr, dst: MacAddr, data: &[u8]) -> Result<(), RadioError> {
        if data.len() > gridpow_proto::wire::ESPNOW_MAX_PAYLOAD {
            return Err(RadioError::TooLong(data.len()));
        }
        let mut inner = self.medium.lock();
        inner.stats.sent += 1;
        let loss = inner.loss;
        if loss > 0.0 && inner.rng.gen_bool(loss) {
            inner.stats.lost += 1;
            return Ok(());
        }
        match inner.routes.get(&dst) {
            Some(tx) => {
                // A receiver that went away is like a radio switched off: the frame is lost.
                let _ = tx.send(RadioFrame {
                    src,
                    dst,
                    data: data.to_vec(),
                });
            }
            None => inner.stats.unroutable += 1,
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Result<Option<RadioFrame>, RadioError> {
        match self.rx.recv_timeout(timeout) {
            Ok(f) => Ok(Some(f)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(RadioError::Closed),
        }
    }

    fn confirm_peer(&mut self, _mac: MacAddr, _how: Confirmation) {}
}

/// Magic prefix of a UDP air datagram: `"GPA1" ‖ src MAC ‖ dst MAC ‖ payload`
/// (docs/protocol.md §14).
pub const UDP_MAGIC: &[u8; 4] = b"GPA1";
/// Bytes before the payload of a UDP air datagram.
pub const UDP_HEADER: usize = 16;

/// Why a datagram is not a UDP air frame (§14); the receiver drops and counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AirMalformed {
    /// Shorter than the 16-byte header.
    #[error("datagram of {0} bytes is shorter than the 16-byte air header")]
    Short(usize),
    /// The first four bytes are not "GPA1".
    #[error("datagram does not start with \"GPA1\"")]
    BadMagic,
    /// The payload is longer than an ESP-NOW frame (250 bytes).
    #[error("payload of {0} bytes exceeds an ESP-NOW frame (250)")]
    TooLong(usize),
}

/// A UDP air datagram: `"GPA1" ‖ src ‖ dst ‖ payload` (§14).
pub fn encode_air(src: &MacAddr, dst: &MacAddr, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(UDP_HEADER + payload.len());
    d.extend_from_slice(UDP_MAGIC);
    d.extend_from_slice(src);
    d.extend_from_slice(dst);
    d.extend_from_slice(payload);
    d
}

/// Splits a UDP air datagram into source MAC, destination MAC and payload (§14).
pub fn decode_air(d: &[u8]) -> Result<(MacAddr, MacAddr, &[u8]), AirMalformed> {
    if d.len() < UDP_HEADER {
        return Err(AirMalformed::Short(d.len()));
    }
    if &d[..4] != UDP_MAGIC {
        return Err(AirMalformed::BadMagic);
    }
    let payload = &d[UDP_HEADER..];
    if payload.len() > gridpow_proto::wire::ESPNOW_MAX_PAYLOAD {
        return Err(AirMalformed::TooLong(payload.len()));
    }
    let mut src = [0u8; 6];
    src.copy_from_slice(&d[4..10]);
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&d[10..16]);
    Ok((src, dst, payload))
}

/// Frames as UDP datagrams. The relay binds a known address; meters send to it
/// and the relay answers to the address a MAC was last *confirmed* at
/// ([`RadioPort::confirm_peer`]): a datagram with a forged source MAC or
/// address is delivered to the caller (who refuses it) but never moves a route.
pub struct UdpAir {
    socket: UdpSocket,
    /// Confirmed return routes.
    peers: HashMap<MacAddr, SocketAddr>,
    /// Source of the frame `recv` returned last, until the caller confirms it.
    last_from: Option<(MacAddr, SocketAddr)>,
    default_peer: Option<SocketAddr>,
    /// Further receivers in range: each sent frame also goes to each of them.
    also_heard_by: Vec<SocketAddr>,
    loss: f64,
    rng: rand::rngs::StdRng,
    /// Datagrams dropped because they were not gridpow air frames.
    pub malformed: u64,
    buf: Vec<u8>,
}

impl UdpAir {
    /// Binds `local`; frames to unknown MACs go to `default_peer`. Each sent frame is
    /// dropped with probability `loss`.
    pub fn bind(
        local: SocketAddr,
        default_peer: Option<SocketAddr>,
        loss: f64,
        seed: u64,
    ) -> Result<Self, RadioError> {
        let socket =
            UdpSocket::bind(local).map_err(|error| RadioError::Bind { addr: local, error })?;
        Ok(UdpAir {
            socket,
            peers: HashMap::new(),
            last_from: None,
            default_peer,
            also_heard_by: Vec::new(),
            loss: loss.clamp(0.0, 1.0),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            malformed: 0,
            buf: vec![0; 2048],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, RadioError> {
        Ok(self.socket.local_addr()?)
    }

    /// Every frame sent also reaches `receivers` (besides its route), each
    /// copy lost on its own: a meter at the edge of two cells is heard by
    /// both relays. Each receiver gets one copy, the route's included.
    pub fn also_heard_by(mut self, mut receivers: Vec<SocketAddr>) -> Self {
        receivers.sort_unstable();
        receivers.dedup();
        self.also_heard_by = receivers;
        self
    }

    /// Sends one datagram to `to`, unless the air loses it.
    fn send_one(&mut self, datagram: &[u8], to: SocketAddr) -> Result<(), RadioError> {
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            return Ok(());
        }
        match self.socket.send_to(datagram, to) {
            Ok(_) => Ok(()),
            // The peer's port is closed (ICMP refused): like a radio nobody listens to.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl RadioPort for UdpAir {
    fn send(&mut self, src: MacAddr, dst: MacAddr, data: &[u8]) -> Result<(), RadioError> {
        if data.len() > gridpow_proto::wire::ESPNOW_MAX_PAYLOAD {
            return Err(RadioError::TooLong(data.len()));
        }
        let to = self
            .peers
            .get(&dst)
            .copied()
            .or(self.default_peer)
            .ok_or_else(|| RadioError::NoRoute(gridpow_common::format_mac(&dst)))?;
        let d = encode_air(&src, &dst, data);
        self.send_one(&d, to)?;
        for k in 0..self.also_heard_by.len() {
            let other = self.also_heard_by[k];
            if other != to {
                self.send_one(&d, other)?;
            }
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> Result<Option<RadioFrame>, RadioError> {
        self.last_from = None;
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e.into()),
            };
            let Ok((src, dst, payload)) = decode_air(&self.buf[..n]) else {
                self.malformed += 1;
                continue;
            };
            self.last_from = Some((src, from));
            return Ok(Some(RadioFrame {
                src,
                dst,
                data: payload.to_vec(),
            }));
        }
    }

    fn confirm_peer(&mut self, mac: MacAddr, how: Confirmation) {
        let Some((src, from)) = self.last_from else {
            return;
        };
        if src != mac {
            return;
        }
        match how {
            Confirmation::Fresh => {
                self.peers.insert(mac, from);
            }
            Confirmation::Replayed => {
                self.peers.entry(mac).or_insert(from);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_medium_routes_by_mac_and_drops_with_the_set_loss() {
        let m = Medium::new(0.0, 1);
        let mut a = m.port(&[[1; 6]]);
        let mut b = m.port(&[[2; 6], [3; 6]]);
        a.send([1; 6], [3; 6], b"hi").unwrap();
        let f = b.recv(Duration::from_millis(100)).unwrap().unwrap();
        assert_eq!(
            (f.src, f.dst, f.data.as_slice()),
            ([1; 6], [3; 6], &b"hi"[..])
        );
        a.send([1; 6], [9; 6], b"nobody").unwrap();
        assert_eq!(m.stats().unroutable, 1);
        m.set_loss(0.5);
        for _ in 0..1000 {
            a.send([1; 6], [2; 6], b"x").unwrap();
        }
        let lost = m.stats().lost;
        assert!((400..600).contains(&lost), "lost {lost} of 1000");
    }

    #[test]
    fn udp_air_routes_never_move_to_an_unconfirmed_or_replayed_source() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut relay = UdpAir::bind(any, None, 0.0, 1).unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let mut meter = UdpAir::bind(any, Some(relay_addr), 0.0, 2).unwrap();
        let mut attacker = UdpAir::bind(any, Some(relay_addr), 0.0, 3).unwrap();
        let wait = Duration::from_secs(2);
        meter.send([5; 6], [9; 6], b"genuine").unwrap();
        relay.recv(wait).unwrap().unwrap();
        relay.confirm_peer([5; 6], Confirmation::Fresh);
        // Spoofed (never confirmed), then replayed (authentic but possibly someone else's).
        attacker.send([5; 6], [9; 6], b"forged").unwrap();
        relay.recv(wait).unwrap().unwrap();
        attacker.send([5; 6], [9; 6], b"replayed").unwrap();
        relay.recv(wait).unwrap().unwrap();
        relay.confirm_peer([5; 6], Confirmation::Replayed);
        // A confirmation names the sender of the last frame only.
        attacker.send([6; 6], [9; 6], b"other").unwrap();
        relay.recv(wait).unwrap().unwrap();
        relay.confirm_peer([5; 6], Confirmation::Fresh);
        relay.send([9; 6], [5; 6], b"ack").unwrap();
        let got = meter.recv(wait).unwrap().unwrap();
        assert_eq!(got.data, b"ack");
        assert_eq!(attacker.recv(Duration::from_millis(200)).unwrap(), None);
        // A fresh confirmation moves the route (a meter that changed address).
        attacker.send([5; 6], [9; 6], b"moved").unwrap();
        relay.recv(wait).unwrap().unwrap();
        relay.confirm_peer([5; 6], Confirmation::Fresh);
        relay.send([9; 6], [5; 6], b"ack2").unwrap();
        assert_eq!(attacker.recv(wait).unwrap().unwrap().data, b"ack2");
    }

    #[test]
    fn a_udp_address_in_use_is_refused_naming_it_and_the_setting() {
        let first = UdpAir::bind("127.0.0.1:0".parse().unwrap(), None, 0.0, 1).unwrap();
        let addr = first.local_addr().unwrap();
        let Err(err) = UdpAir::bind(addr, None, 0.0, 2) else {
            panic!("a second bind of {addr} succeeded");
        };
        assert!(matches!(err, RadioError::Bind { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&addr.to_string()) && text.contains("udp_listen"),
            "{text}"
        );
    }

    #[test]
    fn udp_air_learns_the_return_route_from_confirmed_frames() {
        let mut relay = UdpAir::bind("127.0.0.1:0".parse().unwrap(), None, 0.0, 1).unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let mut meters =
            UdpAir::bind("127.0.0.1:0".parse().unwrap(), Some(relay_addr), 0.0, 2).unwrap();
        assert!(matches!(
            relay.send([9; 6], [5; 6], b"ack"),
            Err(RadioError::NoRoute(_))
        ));
        meters.send([5; 6], [9; 6], b"uplink").unwrap();
        let f = relay.recv(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!(f.data, b"uplink");
        assert!(
            matches!(
                relay.send([9; 6], [5; 6], b"ack"),
                Err(RadioError::NoRoute(_))
            ),
            "a frame nobody vouched for teaches no route"
        );
        relay.confirm_peer(f.src, Confirmation::Fresh);
        relay.send([9; 6], [5; 6], b"ack").unwrap();
        let back = meters.recv(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!((back.src, back.data.as_slice()), ([9; 6], &b"ack"[..]));
        assert!(matches!(
            relay.send([9; 6], [5; 6], &[0u8; 251]),
            Err(RadioError::TooLong(251))
        ));
    }

    #[test]
    fn a_frame_is_heard_by_every_relay_in_range_and_both_answers_come_back() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut a = UdpAir::bind(any, None, 0.0, 1).unwrap();
        let mut b = UdpAir::bind(any, None, 0.0, 2).unwrap();
        let (a_at, b_at) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // The route is relay a; relay b is also in range (listed twice, and a
        // listed again, to show each receiver gets one copy).
        let mut meter = UdpAir::bind(any, Some(a_at), 0.0, 3)
            .unwrap()
            .also_heard_by(vec![b_at, a_at, b_at]);
        let wait = Duration::from_secs(2);
        meter.send([5; 6], [1; 6], b"uplink").unwrap();
        for relay in [&mut a, &mut b] {
            let f = relay.recv(wait).unwrap().unwrap();
            assert_eq!((f.src, f.data.as_slice()), ([5; 6], &b"uplink"[..]));
            relay.confirm_peer([5; 6], Confirmation::Fresh);
        }
        for relay in [&mut a, &mut b] {
            assert_eq!(relay.recv(Duration::from_millis(100)).unwrap(), None);
        }
        a.send([1; 6], [5; 6], b"ack a").unwrap();
        b.send([2; 6], [5; 6], b"ack b").unwrap();
        let mut got: Vec<_> = (0..2)
            .map(|_| meter.recv(wait).unwrap().unwrap().data)
            .collect();
        got.sort();
        assert_eq!(got, vec![b"ack a".to_vec(), b"ack b".to_vec()]);
    }
}
