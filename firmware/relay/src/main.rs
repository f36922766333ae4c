//! gridpow relay firmware (ESP32-C3 / ESP32-C6), two modes chosen by the
//! provisioning blob in the `gp_config` partition:
//!
//! - **Bridge**: ESP-NOW ⇄ USB-serial-JTAG with the protocol's serial
//!   framing (COBS, CRC-32). Frames heard go to the Linux relay
//!   (`gridpow relay` with its serial adapter); the ACKs it returns are
//!   transmitted. Logic: `gridpow_firmware_logic::bridge`.
//! - **Standalone**: the relay application of `gridpow-relay-app` (ingress,
//!   batching, proof of work on the SHA accelerator, Ed25519 signing, outbox
//!   until a commit receipt, MQTT 5 over TLS 1.3 to the broker) over this
//!   crate's adapters: ESP-NOW ([`radio`]), the Wi-Fi station, embassy-net,
//!   SNTP and the broker connection ([`net`]), the TRNG and the SHA
//!   accelerator. Built for both chips; not yet run on a board
//!   (docs/hardware.md).
//!
//! Logs go to UART0 (GPIO21 on the C3, GPIO16 on the C6) because USB carries
//! the bridge protocol.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../../common/hw.rs"]
mod hw;
mod net;
mod radio;

use core::cell::RefCell;
use core::fmt::Write as _;

use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_net::tcp::client::TcpClientState;
use embassy_net::StackResources;
use embassy_sync::mutex::Mutex;
use embassy_time::{with_timeout, Duration, Timer};
use embedded_io_async::{Read, Write};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::Trng;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;
use esp_println::println;
use esp_radio::esp_now::{EspNowManager, EspNowReceiver, EspNowSender};
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{AuthenticationMethodConfig, Interface, WifiController};
use esp_storage::FlashStorage;
use gridpow_firmware_logic::bridge::{Bridge, FixedWriter, HostCommand};
use gridpow_firmware_logic::crypto::Accelerated;
use gridpow_firmware_logic::journal::Journal;
use gridpow_firmware_logic::layout::{
    CONFIG_OFFSET, CONFIG_SIZE, JOURNAL_OFFSET, JOURNAL_SIZE, STATE_OFFSET, STATE_SIZE,
};
use gridpow_firmware_logic::provisioning::{RelayConfig, RelayMode, RelayTls, MAX_RELAY_METERS};
use gridpow_firmware_logic::standalone::{RelayStorage, StandaloneConfig, StandaloneRelay};
use gridpow_firmware_logic::state::{RelayState, StateLog, KIND_RELAY};
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry};
use gridpow_proto::wire::serial::MAX_ENCODED;
use gridpow_proto::{Instant, MacAddr};
use gridpow_relay_app::{App, AppConfig, Level, Log, NetBuffers, Parts};
use gridpow_relay_net::{Identity, ARENA_LEN, TLS_READ_BUF, TLS_WRITE_BUF};

use crate::hw::{EspAes, EspSha, Partition};
use crate::net::{BrokerConnector, ChannelHandoff, Controller, EspClock, WallClock};
use crate::radio::EspNowRadio;

esp_bootloader_esp_idf::esp_app_desc!();

const CHIP: &str = if cfg!(feature = "esp32c6") {
    "esp32c6"
} else {
    "esp32c3"
};

/// Outbox slots of the standalone relay (plus one pending batch).
const OUTBOX: usize = 4;
/// Bytes per block: ~50 full frames.
const BLOCK_BYTES: usize = 12 * 1024;
/// PoW tries per chunk: a few milliseconds on the accelerator.
const POW_CHUNK: u32 = 256;
/// Sockets of the IP stack: DHCP, DNS, SNTP (UDP) and the broker (TCP).
const SOCKETS: usize = 4;

macro_rules! mk_static {
    ($t:ty, $val:expr) => {{
        static STATIC_CELL: static_cell::StaticCell<$t> = static_cell::StaticCell::new();
        STATIC_CELL.uninit().write($val)
    }};
}

type Provider = &'static Accelerated<EspAes, EspSha>;

/// Stops here, logging why, when the relay cannot run.
async fn halt(why: &dyn core::fmt::Display) -> ! {
    loop {
        println!("relay: halted: {why}");
        Timer::after(Duration::from_secs(10)).await;
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // The radio's buffers and the standalone relay's block and TLS buffers
    // (about 57 KiB) live on the heap.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: HEAP_KIB * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
    println!(
        "relay: gridpow relay {} on {CHIP} starting",
        env!("CARGO_PKG_VERSION")
    );

    let mut flash = FlashStorage::new(peripherals.FLASH);
    let blob: &'static mut [u8] = alloc::vec![0u8; CONFIG_SIZE as usize].leak();
    if let Err(e) = flash.read_nor(CONFIG_OFFSET, blob) {
        halt(&format_args!("reading configuration failed: {e:?}")).await;
    }
    let blob: &'static [u8] = blob;
    let cfg = match RelayConfig::decode(blob) {
        Ok(c) => mk_static!(RelayConfig, c),
        Err(e) => {
            halt(&format_args!(
            "{e}; flash a relay blob with espflash write-bin {CONFIG_OFFSET:#x} (docs/hardware.md)"
        ))
            .await
        }
    };
    println!(
        "relay: configured relay_id={} mode={:?} channel={} meters={}",
        cfg.relay_id, cfg.mode, cfg.channel, cfg.meter_count
    );

    let mut controller = match WifiController::new(peripherals.WIFI, Default::default()) {
        Ok(c) => c,
        Err(e) => halt(&format_args!("Wi-Fi init failed: {e:?}")).await,
    };

    match cfg.mode {
        RelayMode::Bridge => {
            let own_mac = Interface::try_station()
                .map(|s| s.mac_address())
                .unwrap_or([0; 6]);
            let controller = mk_static!(WifiController<'static>, controller);
            let esp_now = controller.esp_now();
            // No station connection in bridge mode: ESP-NOW sets the channel.
            if let Err(e) = esp_now.set_channel(cfg.channel) {
                println!("relay: set_channel failed error={e:?}");
            }
            let (manager, sender, receiver) = esp_now.split();
            let usb = UsbSerialJtag::new(peripherals.USB_DEVICE).into_async();
            run_bridge(cfg, own_mac, usb, manager, sender, receiver).await
        }
        RelayMode::Standalone => {
            let Some(tls) = cfg.tls(blob) else {
                halt(&"standalone mode needs the TLS section (layout 3): write the blob with `gridpow keys relay-blob`").await
            };
            if cfg.wifi_ssid.as_str().is_empty() || cfg.broker_host.as_str().is_empty() {
                halt(&"standalone mode needs a Wi-Fi SSID and a broker host in the blob").await;
            }
            // The station joins on the provisioned channel; the access
            // point's real channel is read after association (net.rs).
            let password = cfg.wifi_password.as_str();
            let auth = if password.is_empty() {
                AuthenticationMethodConfig::Open
            } else {
                match password.try_into() {
                    Ok(p) => AuthenticationMethodConfig::Wpa2Personal(p),
                    Err(e) => halt(&format_args!("Wi-Fi passphrase refused: {e:?}")).await,
                }
            };
            let ssid = match cfg.wifi_ssid.as_str().try_into() {
                Ok(s) => s,
                Err(e) => halt(&format_args!("Wi-Fi SSID refused: {e:?}")).await,
            };
            let station = StationConfig::default()
                .with_ssid(ssid)
                .with_authentication(auth)
                .with_channel(cfg.channel);
            if let Err(e) = controller.set_config(&esp_radio::wifi::Config::Station(station)) {
                halt(&format_args!("Wi-Fi station configuration refused: {e:?}")).await;
            }
            // The radio is on, so the TRNG has its entropy source.
            let rng = match Trng::try_new() {
                Ok(r) => r,
                Err(e) => halt(&format_args!("TRNG unavailable: {e:?}")).await,
            };
            let provider: Provider = mk_static!(
                Accelerated<EspAes, EspSha>,
                Accelerated::new(EspAes::new(peripherals.AES), EspSha::new(peripherals.SHA))
            );
            // The chain tip of firmware before the journal lives in gp_state;
            // it only seeds a blank journal.
            let (old_tip, flash) =
                match StateLog::open(Partition::new(flash, STATE_OFFSET, STATE_SIZE), KIND_RELAY) {
                    Ok(log) => (
                        log.latest()
                            .map(RelayState::from_payload)
                            .unwrap_or_default(),
                        log.into_inner().into_inner(),
                    ),
                    Err(e) => halt(&format_args!("state partition: {e:?}")).await,
                };
            let journal = match Journal::<Partition, OUTBOX>::open(
                provider,
                Partition::new(flash, JOURNAL_OFFSET, JOURNAL_SIZE),
                old_tip,
            ) {
                Ok(j) => j,
                Err(e) => halt(&format_args!("journal partition: {e:?}")).await,
            };
            run_standalone(spawner, cfg, blob, tls, controller, rng, provider, journal).await
        }
    }
}

/// Heap besides the 64 KiB reclaimed from the bootloader: the radio's
/// buffers and tasks (tens of KiB), the standalone relay's block buffers
/// (24 KiB) and TLS/MQTT buffers (about 29 KiB). Sealed blocks wait in the
/// flash journal, not in RAM.
const HEAP_KIB: usize = 112;

// ---------------------------------------------------------------- bridge mode

async fn write_host(
    tx: &mut esp_hal::usb::usb_serial_jtag::UsbSerialJtagTx<'static, esp_hal::Async>,
    bytes: &[u8],
) -> bool {
    // A host that stopped reading must not stall the radio: give up after 50 ms.
    matches!(
        with_timeout(Duration::from_millis(50), tx.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

fn hello_text<'b>(buf: &'b mut [u8; 160], cfg: &RelayConfig, bridge: &Bridge) -> &'b [u8] {
    let s = bridge.stats();
    let mut w = FixedWriter::new(buf);
    // Truncation is harmless: the text is informational.
    let _ = write!(
        w,
        "gridpow bridge {} chip={CHIP} relay_id={} channel={} forwarded={} foreign={} tx={} bad={} overruns={} radio_errors={}",
        env!("CARGO_PKG_VERSION"),
        cfg.relay_id,
        cfg.channel,
        s.forwarded,
        s.foreign,
        s.transmit_requests,
        s.bad_host_messages,
        s.serial_overruns,
        s.radio_errors,
    );
    let n = w.len();
    &buf[..n]
}

async fn run_bridge(
    cfg: &RelayConfig,
    own_mac: MacAddr,
    usb: UsbSerialJtag<'static, esp_hal::Async>,
    manager: EspNowManager,
    mut sender: EspNowSender,
    mut receiver: EspNowReceiver,
) -> ! {
    let (mut rx, mut tx) = usb.split();
    let mut bridge = Bridge::new(own_mac);
    let mut out = [0u8; MAX_ENCODED];
    let mut text = [0u8; 160];
    let mut inbuf = [0u8; 64];
    // A lone delimiter first: the host discards whatever boot noise preceded it.
    let _ = write_host(&mut tx, &[0]).await;
    if let Ok(n) = bridge.hello(hello_text(&mut text, cfg, &bridge), &mut out) {
        let _ = write_host(&mut tx, &out[..n]).await;
    }
    println!("relay: bridge mode mac={own_mac:02x?}");
    let mut next_status = embassy_time::Instant::now() + Duration::from_secs(60);
    loop {
        let status_timer = Timer::at(next_status);
        let ev = select(
            select(receiver.receive_async(), rx.read(&mut inbuf)),
            status_timer,
        )
        .await;
        match ev {
            Either::First(Either::First(frame)) => {
                let rssi = frame.info.rx_control.rssi.clamp(-128, 127) as i8;
                match bridge.heard(&frame.info.src_address, rssi, frame.data(), &mut out) {
                    Ok(Some(n)) => {
                        if !write_host(&mut tx, &out[..n]).await {
                            bridge.count_overrun();
                        }
                    }
                    Ok(None) => {}
                    Err(e) => println!("relay: encode failed error={e:?}"),
                }
            }
            Either::First(Either::Second(Ok(n))) => {
                for &b in &inbuf[..n] {
                    let mut reply_hello = false;
                    match bridge.push_host_byte(b) {
                        Some(HostCommand::Transmit { dst, data }) => {
                            let mut frame = [0u8; 250];
                            let len = data.len().min(250);
                            frame[..len].copy_from_slice(&data[..len]);
                            if radio::ensure_peer(&manager, &dst).is_err()
                                || sender.send_async(&dst, &frame[..len]).await.is_err()
                            {
                                bridge.count_radio_error();
                            }
                        }
                        Some(HostCommand::Hello(_)) => reply_hello = true,
                        None => {}
                    }
                    if reply_hello {
                        if let Ok(m) = bridge.hello(hello_text(&mut text, cfg, &bridge), &mut out) {
                            let _ = write_host(&mut tx, &out[..m]).await;
                        }
                    }
                }
            }
            Either::First(Either::Second(Err(e))) => {
                println!("relay: usb read failed error={e:?}");
            }
            Either::Second(()) => {
                next_status += Duration::from_secs(60);
                let s = *bridge.stats();
                println!(
                    "relay: stats forwarded={} foreign={} tx={} bad={} overruns={} radio_errors={}",
                    s.forwarded,
                    s.foreign,
                    s.transmit_requests,
                    s.bad_host_messages,
                    s.serial_overruns,
                    s.radio_errors
                );
                if let Ok(n) = bridge.hello(hello_text(&mut text, cfg, &bridge), &mut out) {
                    let _ = write_host(&mut tx, &out[..n]).await;
                }
            }
        }
    }
}

// ------------------------------------------------------------ standalone mode

type Relay = StandaloneRelay<'static, Provider, Journal<Partition, OUTBOX>, MAX_RELAY_METERS>;

/// The application's log lines on UART0 (per-frame detail is left out: the
/// UART is slow and the counters say it).
struct SerialLog;

impl Log for SerialLog {
    fn log(&self, level: Level, line: core::fmt::Arguments<'_>) {
        match level {
            Level::Warn => println!("relay: warn: {line}"),
            Level::Info => println!("relay: {line}"),
            Level::Debug => {}
        }
    }
}

/// Spawns a task or stops the relay saying which one failed.
macro_rules! spawn_or_halt {
    ($spawner:expr, $task:expr, $name:literal) => {
        match $task {
            Ok(t) => $spawner.spawn(t),
            Err(e) => halt(&format_args!("{} task: {e:?}", $name)).await,
        }
    };
}

#[allow(clippy::too_many_arguments)]
async fn run_standalone(
    spawner: Spawner,
    cfg: &'static RelayConfig,
    blob: &'static [u8],
    tls: RelayTls<'static>,
    controller: WifiController<'static>,
    rng: Trng,
    provider: Provider,
    journal: Journal<Partition, OUTBOX>,
) -> ! {
    let meters = (0..cfg.meter_count.min(MAX_RELAY_METERS)).filter_map(|i| cfg.meter(blob, i));
    let blocks: &'static mut [u8] = alloc::vec![0u8; 2 * BLOCK_BYTES].leak();
    let outbox = mk_static!([OutboxEntry; OUTBOX], [OutboxEntry::FREE; OUTBOX]);
    let tip = journal.tip();
    let mut relay: Relay = match StandaloneRelay::new(
        StandaloneConfig::from_relay_config(cfg),
        provider,
        meters,
        &cfg.signing_seed,
        &cfg.server_public_key,
        ChainTip::from(tip),
        journal,
        RelayStorage { blocks, outbox },
    ) {
        Ok(r) => r,
        Err(e) => halt(&format_args!("relay storage: {e}")).await,
    };
    // Unconfirmed blocks and ACKed frames come back from the journal.
    let now = Instant::from_micros(embassy_time::Instant::now().as_micros());
    match relay.recover(now) {
        Ok(f) => println!(
            "relay: journal recovered blocks={} frames={} unsealed={} refused_now={}",
            f.blocks, f.frames, f.unsealed, f.refused_now
        ),
        Err(e) => halt(&format_args!("journal recovery: {e:?}")).await,
    }
    println!(
        "relay: standalone chain next_height={} public_key={:02x?}",
        relay.chain().next_height,
        relay.public_key()
    );
    let relay: &'static RefCell<Relay> = mk_static!(RefCell<Relay>, RefCell::new(relay));

    // Wi-Fi station, IP stack (DHCP), SNTP.
    let iface = Interface::station();
    println!(
        "relay: standalone mode mac={:02x?} ssid={:?} broker={}:{}",
        iface.mac_address(),
        cfg.wifi_ssid.as_str(),
        cfg.broker_host.as_str(),
        broker_port(cfg)
    );
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    let resources = mk_static!(StackResources<SOCKETS>, StackResources::new());
    let (stack, runner) = embassy_net::new(
        iface,
        embassy_net::Config::dhcpv4(Default::default()),
        resources,
        seed,
    );
    let ctrl: &'static Controller = mk_static!(Controller, Mutex::new(controller));
    let handoff: &'static ChannelHandoff = mk_static!(ChannelHandoff, ChannelHandoff::new());
    let wall: &'static WallClock = mk_static!(WallClock, WallClock::new());
    spawn_or_halt!(spawner, net::net_task(runner), "ip stack");
    spawn_or_halt!(
        spawner,
        net::wifi_task(ctrl, handoff, cfg.wifi_ssid.as_str(), cfg.channel),
        "wi-fi"
    );
    spawn_or_halt!(spawner, net::sntp_task(stack, wall), "sntp");

    // The broker connection and the application.
    let tcp_state =
        mk_static!(TcpClientState<1, { net::TCP_TX }, { net::TCP_RX }>, TcpClientState::new());
    let tcp: &'static net::Tcp = mk_static!(net::Tcp, net::tcp_client(stack, tcp_state));
    let connector = BrokerConnector {
        stack,
        tcp,
        host: cfg.broker_host.as_str(),
        port: broker_port(cfg),
    };
    let client_id: &'static str = alloc::format!("relay-{}", cfg.relay_id).leak();
    let net_cfg = gridpow_relay_net::Config {
        relay_id: cfg.relay_id,
        client_id,
        server_name: cfg.broker_host.as_str(),
        ca_der: tls.ca_der,
        identity: Some(Identity {
            cert_der: tls.cert_der,
            key_der: tls.key_der,
        }),
        keep_alive_s: 30,
        session_expiry_s: 7 * 24 * 3600,
    };
    let bufs = NetBuffers {
        tls_read: alloc::vec![0u8; TLS_READ_BUF].leak(),
        tls_write: alloc::vec![0u8; TLS_WRITE_BUF].leak(),
        arena: alloc::vec![0u8; ARENA_LEN].leak(),
        block: alloc::vec![0u8; BLOCK_BYTES].leak(),
    };
    let parts = Parts {
        radio: EspNowRadio::new(ctrl, handoff, relay),
        clock: EspClock { wall },
        connector,
        rng,
        log: SerialLog,
    };
    let app_cfg = AppConfig {
        pow_chunk: POW_CHUNK,
        ..AppConfig::default()
    };
    println!("relay: waiting for the access point, then DHCP and SNTP; frames are refused until the clock is set");
    let mut app = App::new(relay, parts, app_cfg, net_cfg, bufs);
    app.run(core::future::pending()).await;
    halt(&"the relay application returned").await
}

/// The broker port in use (0 in the blob selects 8883).
fn broker_port(cfg: &RelayConfig) -> u16 {
    if cfg.broker_port == 0 {
        8883
    } else {
        cfg.broker_port
    }
}
