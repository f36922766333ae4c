//! Standalone mode's network side, on what the esp-rs ecosystem ships: the
//! Wi-Fi station (esp-radio), the IP stack (embassy-net: DHCP, DNS, TCP,
//! UDP), the wall clock from SNTP (sntpc), and the `gridpow-relay-app`
//! adapters built on them ([`EspClock`], [`BrokerConnector`]).
//!
//! One radio, one channel: the station follows the access point, and
//! ESP-NOW shares its channel. The Wi-Fi task reads the channel after each
//! association and, when it changed, hands it to the radio adapter
//! ([`crate::radio::EspNowRadio`]), which re-creates its ESP-NOW instance and
//! has the relay state the channel in its ACKs. ESP-NOW's `set_channel` is
//! never called while the station is up (esp-radio's maintainers advise
//! against it); power saving stays off (esp-radio's default).

use core::cell::Cell;
use core::net::{IpAddr, SocketAddr};

use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::client::{TcpClient, TcpConnection};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Runner, Stack};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_sync::signal::Signal;
use embassy_time::{with_timeout, Duration, Timer};
use embedded_nal_async::TcpConnect;
use esp_println::println;
use esp_radio::wifi::{Interface, WifiController};
use gridpow_proto::Instant;
use gridpow_relay_app::Clock;
use sntpc::{NtpContext, NtpTimestampGenerator};

/// TCP buffers of the broker connection. TLS has its own record buffers
/// (`gridpow_relay_net::TLS_READ_BUF`/`TLS_WRITE_BUF`); these only need to
/// keep a window in flight.
pub const TCP_RX: usize = 4096;
/// See [`TCP_RX`].
pub const TCP_TX: usize = 4096;
/// One broker connection at a time; its buffers return to the pool when the
/// application drops the socket.
pub type Tcp = TcpClient<'static, 1, TCP_TX, TCP_RX>;
/// The Wi-Fi controller, shared by the Wi-Fi task (associating) and the
/// radio adapter (re-creating ESP-NOW after a channel change).
pub type Controller = Mutex<NoopRawMutex, WifiController<'static>>;

/// The NTP server (the blob has no field for one; see docs/hardware.md).
const NTP_SERVER: &str = "pool.ntp.org";
/// SNTP answers before 2026-01-01 are wrong: the relay refuses them.
const MIN_UNIX_MS: u64 = 1_767_225_600_000;
/// Resynchronise hourly: the crystal drifts a few ms per hour at most.
const SNTP_EVERY: Duration = Duration::from_secs(3600);
const SNTP_RETRY: Duration = Duration::from_secs(10);
const WIFI_RETRY: Duration = Duration::from_secs(5);
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A broker connection silent this long is dead (MQTT pings every 30 s).
const SOCKET_IDLE: Duration = Duration::from_secs(90);

/// The channel hand-off between the Wi-Fi task and the radio adapter.
pub struct ChannelHandoff {
    /// The access point's channel after an association that changed it.
    pub channel: Signal<NoopRawMutex, u8>,
    /// The radio adapter runs ESP-NOW on it now.
    pub done: Signal<NoopRawMutex, ()>,
}

impl ChannelHandoff {
    /// No hand-off pending.
    pub const fn new() -> Self {
        ChannelHandoff {
            channel: Signal::new(),
            done: Signal::new(),
        }
    }
}

/// Unix time: set by SNTP, read by the clock adapter and SNTP itself.
pub struct WallClock {
    /// Unix milliseconds at monotonic time zero; `None` until SNTP answered.
    unix_ms_at_zero: Cell<Option<u64>>,
}

impl WallClock {
    /// Unknown until set.
    pub const fn new() -> Self {
        WallClock {
            unix_ms_at_zero: Cell::new(None),
        }
    }

    fn mono_us() -> u64 {
        embassy_time::Instant::now().as_micros()
    }

    /// Unix milliseconds, `None` while unknown.
    pub fn now_ms(&self) -> Option<u64> {
        self.unix_ms_at_zero
            .get()
            .map(|z| z + Self::mono_us() / 1000)
    }

    fn set(&self, unix_ms: u64) {
        self.unix_ms_at_zero
            .set(Some(unix_ms.saturating_sub(Self::mono_us() / 1000)));
    }

    /// Our best guess in microseconds for SNTP's origin timestamp: before
    /// the first answer, the earliest plausible time (it only picks the NTP
    /// era, which such a guess gets right until 2104).
    fn estimate_us(&self) -> u64 {
        match self.unix_ms_at_zero.get() {
            Some(z) => z * 1000 + Self::mono_us(),
            None => MIN_UNIX_MS * 1000 + Self::mono_us(),
        }
    }
}

/// `gridpow_relay_app::Clock` on embassy-time and the SNTP wall clock.
#[derive(Clone, Copy)]
pub struct EspClock {
    /// The wall clock SNTP sets.
    pub wall: &'static WallClock,
}

impl Clock for EspClock {
    fn now(&self) -> Instant {
        Instant::from_micros(embassy_time::Instant::now().as_micros())
    }

    fn wall_ms(&self) -> Option<u64> {
        self.wall.now_ms()
    }

    async fn sleep_until(&self, at: Instant) {
        Timer::at(embassy_time::Instant::from_micros(at.as_micros())).await
    }
}

/// Why the broker could not be reached.
// The fields are read by the Debug output in log lines.
#[allow(dead_code)]
#[derive(Debug)]
pub enum ConnectError {
    /// No IP address yet (no association or no DHCP lease).
    NoIp,
    /// The DNS lookup of the broker host failed.
    Dns(embassy_net::dns::Error),
    /// The broker host has no IPv4 address.
    NoAddress,
    /// DNS or TCP took too long.
    Timeout,
    /// The TCP connection failed (refused, reset, or the one socket is in use).
    Tcp(embassy_net::tcp::Error),
}

/// `gridpow_relay_app::Connector`: a DNS lookup of the broker host, then a
/// TCP connection from the pool.
pub struct BrokerConnector {
    /// The IP stack.
    pub stack: Stack<'static>,
    /// The connection pool.
    pub tcp: &'static Tcp,
    /// Broker host name (or an IPv4 literal).
    pub host: &'static str,
    /// Broker port.
    pub port: u16,
}

impl gridpow_relay_app::Connector for BrokerConnector {
    type Socket = TcpConnection<'static, 1, TCP_TX, TCP_RX>;
    type Error = ConnectError;

    async fn connect(&mut self) -> Result<Self::Socket, ConnectError> {
        if !self.stack.is_config_up() {
            return Err(ConnectError::NoIp);
        }
        let addrs = with_timeout(
            DNS_TIMEOUT,
            self.stack.dns_query(self.host, DnsQueryType::A),
        )
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Dns)?;
        let ip: IpAddr = (*addrs.first().ok_or(ConnectError::NoAddress)?).into();
        with_timeout(
            CONNECT_TIMEOUT,
            self.tcp.connect(SocketAddr::new(ip, self.port)),
        )
        .await
        .map_err(|_| ConnectError::Timeout)?
        .map_err(ConnectError::Tcp)
    }
}

/// A pool of one broker connection over `stack`.
pub fn tcp_client(
    stack: Stack<'static>,
    state: &'static embassy_net::tcp::client::TcpClientState<1, TCP_TX, TCP_RX>,
) -> Tcp {
    let mut c = TcpClient::new(stack, state);
    c.set_timeout(Some(SOCKET_IDLE));
    c
}

/// Runs the IP stack.
#[embassy_executor::task]
pub async fn net_task(mut runner: Runner<'static, Interface>) -> ! {
    runner.run().await
}

/// Associates with the access point and stays associated; after each
/// association it reads the channel and, when it changed, hands it to the
/// radio adapter and waits until ESP-NOW runs on it.
#[embassy_executor::task]
pub async fn wifi_task(
    ctrl: &'static Controller,
    handoff: &'static ChannelHandoff,
    ssid: &'static str,
    provisioned_channel: u8,
) {
    let mut espnow_channel = 0u8;
    loop {
        let res = { ctrl.lock().await.connect_async().await };
        let info = match res {
            Ok(i) => i,
            Err(e) => {
                println!(
                    "relay: wifi association failed ssid={ssid:?} error={e:?} retry_in_s={}",
                    WIFI_RETRY.as_secs()
                );
                Timer::after(WIFI_RETRY).await;
                continue;
            }
        };
        println!(
            "relay: wifi associated ssid={ssid:?} channel={} bssid={:02x?}",
            info.channel, info.bssid
        );
        if info.channel != provisioned_channel {
            println!(
                "relay: access point is on channel {} not the provisioned {provisioned_channel}; ACKs state {} and meters follow",
                info.channel, info.channel
            );
        }
        if info.channel != espnow_channel {
            handoff.channel.signal(info.channel);
            handoff.done.wait().await;
            espnow_channel = info.channel;
        }
        let lost = { ctrl.lock().await.wait_for_disconnect_async().await };
        match lost {
            Ok(d) => println!("relay: wifi lost reason={:?} rssi={}", d.reason, d.rssi),
            Err(e) => println!("relay: wifi lost error={e:?}"),
        }
        Timer::after(Duration::from_secs(1)).await;
    }
}

/// SNTP's timestamp source: our estimate of the time.
#[derive(Clone, Copy)]
struct NtpStamp {
    wall: &'static WallClock,
    us: u64,
}

impl NtpTimestampGenerator for NtpStamp {
    fn init(&mut self) {
        self.us = self.wall.estimate_us();
    }
    fn timestamp_sec(&self) -> u64 {
        self.us / 1_000_000
    }
    fn timestamp_subsec_micros(&self) -> u32 {
        (self.us % 1_000_000) as u32
    }
}

/// Why an SNTP exchange failed.
// The fields are read by the Debug output in log lines.
#[allow(dead_code)]
#[derive(Debug)]
enum SntpError {
    Dns(embassy_net::dns::Error),
    NoAddress,
    Bind(embassy_net::udp::BindError),
    Sntp(sntpc::Error),
    Timeout,
    Implausible(u64),
}

/// Logs the DHCP lease, then sets the wall clock from SNTP and keeps it set.
#[embassy_executor::task]
pub async fn sntp_task(stack: Stack<'static>, wall: &'static WallClock) {
    let mut rx_meta = [PacketMetadata::EMPTY; 2];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    let mut rx_buf = [0u8; 128];
    let mut tx_buf = [0u8; 128];
    let mut leased = false;
    loop {
        stack.wait_config_up().await;
        if !leased {
            leased = true;
            if let Some(c) = stack.config_v4() {
                println!(
                    "relay: dhcp address={} gateway={:?} dns={:?}",
                    c.address, c.gateway, c.dns_servers
                );
            }
        }
        let socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
        let wait = match sntp_once(stack, socket, wall).await {
            Ok(ms) => {
                println!("relay: clock set unix_ms={ms} server={NTP_SERVER}");
                SNTP_EVERY
            }
            Err(e) => {
                println!(
                    "relay: sntp failed server={NTP_SERVER} error={e:?} retry_in_s={}",
                    SNTP_RETRY.as_secs()
                );
                SNTP_RETRY
            }
        };
        Timer::after(wait).await;
    }
}

async fn sntp_once(
    stack: Stack<'static>,
    mut socket: UdpSocket<'_>,
    wall: &'static WallClock,
) -> Result<u64, SntpError> {
    let addrs = with_timeout(DNS_TIMEOUT, stack.dns_query(NTP_SERVER, DnsQueryType::A))
        .await
        .map_err(|_| SntpError::Timeout)?
        .map_err(SntpError::Dns)?;
    let ip: IpAddr = (*addrs.first().ok_or(SntpError::NoAddress)?).into();
    socket.bind(50_123).map_err(SntpError::Bind)?;
    let socket = sntpc_net_embassy::UdpSocketWrapper::from(socket);
    let ctx = NtpContext::new(NtpStamp { wall, us: 0 });
    let r = with_timeout(
        Duration::from_secs(5),
        sntpc::get_time(SocketAddr::new(ip, 123), &socket, ctx),
    )
    .await
    .map_err(|_| SntpError::Timeout)?
    .map_err(SntpError::Sntp)?;
    // The server's transmit time plus half the round trip: now, at our end.
    let ms = r.sec() * 1000
        + u64::from(sntpc::fraction_to_milliseconds(r.sec_fraction()))
        + r.roundtrip() / 2000;
    if ms < MIN_UNIX_MS {
        return Err(SntpError::Implausible(ms));
    }
    wall.set(ms);
    Ok(ms)
}
