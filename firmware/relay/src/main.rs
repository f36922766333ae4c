//! gridpow relay firmware (ESP32-C3 / ESP32-C6), two modes chosen by the
//! provisioning blob in the `gp_config` partition:
//!
//! - **Bridge**: ESP-NOW ⇄ USB-serial-JTAG with the protocol's serial
//!   framing (COBS, CRC-32). Frames heard go to the Linux relay
//!   (`gridpow relay` with its serial adapter); the ACKs it returns are
//!   transmitted. Logic: `gridpow_firmware_logic::bridge`.
//! - **Standalone**: ingress, batching, proof of work on the SHA accelerator
//!   (in its own task, in bounded chunks), Ed25519 signing, chain tip in
//!   flash, outbox until a commit receipt. Logic:
//!   `gridpow_firmware_logic::standalone`. Publishing over MQTT/TLS and the
//!   wall clock (SNTP) are not implemented: see docs/hardware.md.
//!
//! Logs go to UART0 (GPIO21 on the C3, GPIO16 on the C6) because USB carries
//! the bridge protocol.
#![no_std]
#![no_main]

extern crate alloc;

#[path = "../../common/hw.rs"]
mod hw;

use core::cell::RefCell;
use core::fmt::Write as _;

use embassy_executor::Spawner;
use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embassy_time::{with_timeout, Duration, Timer};
use embedded_io_async::{Read, Write};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::usb::usb_serial_jtag::UsbSerialJtag;
use esp_println::println;
use esp_radio::esp_now::{EspNowManager, EspNowReceiver, EspNowSender, PeerInfo};
use esp_storage::FlashStorage;
use gridpow_firmware_logic::bridge::{Bridge, FixedWriter, HostCommand};
use gridpow_firmware_logic::crypto::Accelerated;
use gridpow_firmware_logic::journal::Journal;
use gridpow_firmware_logic::layout::{
    CONFIG_OFFSET, CONFIG_SIZE, JOURNAL_OFFSET, JOURNAL_SIZE, STATE_OFFSET, STATE_SIZE,
};
use gridpow_firmware_logic::pow::{PowHasher, TAIL_LEN};
use gridpow_firmware_logic::provisioning::{RelayConfig, RelayMode, MAX_RELAY_METERS};
use gridpow_firmware_logic::standalone::{RelayStorage, StandaloneConfig, StandaloneRelay};
use gridpow_firmware_logic::state::{RelayState, StateLog, KIND_RELAY};
use gridpow_proto::lifecycle::{ChainTip, OutboxEntry};
use gridpow_proto::wire::serial::MAX_ENCODED;
use gridpow_proto::{Instant, MacAddr};

use crate::hw::{feed, finish, EspAes, EspSha, Partition};

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

macro_rules! mk_static {
    ($t:ty, $val:expr) => {{
        static STATIC_CELL: static_cell::StaticCell<$t> = static_cell::StaticCell::new();
        STATIC_CELL.uninit().write($val)
    }};
}

type Provider = &'static Accelerated<EspAes, EspSha>;

/// The proof of work on the SHA accelerator: the first 64 header bytes are
/// absorbed once and the peripheral's state saved; each try restores it.
struct AccelPow<'a>(&'a mut EspSha);

impl PowHasher for AccelPow<'_> {
    fn begin(&mut self, first: &[u8; 64]) {
        let sha = &mut *self.0;
        let mut d = esp_hal::sha::ShaDigest::<esp_hal::sha::Sha256, _>::new(&mut sha.sha);
        feed(&mut d, first);
        let mut ctx = esp_hal::sha::Context::new();
        let saved: Result<(), core::convert::Infallible> = nb::block!(d.save(&mut ctx));
        if let Err(never) = saved {
            match never {}
        }
        sha.midstate = Some(ctx);
    }

    fn hash_tail(&mut self, tail: &[u8; TAIL_LEN]) -> [u8; 32] {
        let sha = &mut *self.0;
        let Some(saved) = sha.midstate.as_mut() else {
            // No midstate: a hash without leading zeros never solves.
            return [0xff; 32];
        };
        // `restore` only reads the saved context (it takes `&mut` but copies
        // the state into the peripheral), so one saved midstate serves every try.
        let mut d = esp_hal::sha::ShaDigest::restore(&mut sha.sha, saved);
        feed(&mut d, tail);
        finish(&mut d)
    }
}

fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

fn ensure_peer(manager: &EspNowManager, dst: &MacAddr) -> bool {
    manager.peer_exists(dst)
        || manager
            .add_peer(PeerInfo {
                interface: esp_radio::esp_now::EspNowWifiInterface::Station,
                peer_address: *dst,
                lmk: None,
                channel: None,
                encrypt: false,
            })
            .is_ok()
}

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
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 96 * 1024);
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
    let cfg = match RelayConfig::decode(blob) {
        Ok(c) => c,
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

    let controller =
        match esp_radio::wifi::WifiController::new(peripherals.WIFI, Default::default()) {
            Ok(c) => mk_static!(esp_radio::wifi::WifiController<'static>, c),
            Err(e) => halt(&format_args!("Wi-Fi init failed: {e:?}")).await,
        };
    let own_mac = esp_radio::wifi::Interface::try_station()
        .map(|s| s.mac_address())
        .unwrap_or([0; 6]);
    let esp_now = controller.esp_now();
    if let Err(e) = esp_now.set_channel(cfg.channel) {
        println!("relay: set_channel failed error={e:?}");
    }
    let (manager, sender, receiver) = esp_now.split();

    match cfg.mode {
        RelayMode::Bridge => {
            let usb = UsbSerialJtag::new(peripherals.USB_DEVICE).into_async();
            run_bridge(&cfg, own_mac, usb, manager, sender, receiver).await
        }
        RelayMode::Standalone => {
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
                Partition::new(flash, JOURNAL_OFFSET, JOURNAL_SIZE),
                old_tip,
            ) {
                Ok(j) => j,
                Err(e) => halt(&format_args!("journal partition: {e:?}")).await,
            };
            let tip = journal.tip();
            let meters =
                (0..cfg.meter_count.min(MAX_RELAY_METERS)).filter_map(|i| cfg.meter(blob, i));
            let blocks: &'static mut [u8] = alloc::vec![0u8; 2 * BLOCK_BYTES].leak();
            let outbox = mk_static!([OutboxEntry; OUTBOX], [OutboxEntry::FREE; OUTBOX]);
            let mut relay = match StandaloneRelay::new(
                StandaloneConfig::from_relay_config(&cfg),
                provider,
                meters,
                &cfg.signing_seed,
                &cfg.server_public_key,
                ChainTip {
                    next_height: tip.next_height,
                    prev_hash: tip.prev_hash,
                },
                journal,
                RelayStorage { blocks, outbox },
            ) {
                Ok(r) => r,
                Err(e) => halt(&format_args!("relay storage: {e}")).await,
            };
            match relay.recover(now()) {
                Ok(f) => println!(
                    "relay: journal recovered blocks={} frames={} unsealed={}",
                    f.blocks, f.frames, f.unsealed
                ),
                Err(e) => halt(&format_args!("journal recovery: {e:?}")).await,
            }
            println!(
                "relay: standalone chain next_height={} public_key={:02x?}",
                relay.chain().next_height,
                relay.public_key()
            );
            let shared: &'static SharedRelay =
                mk_static!(SharedRelay, Mutex::new(RefCell::new(relay)));
            match pow_task(shared, provider) {
                Ok(t) => spawner.spawn(t),
                Err(e) => halt(&format_args!("pow task: {e:?}")).await,
            }
            run_standalone(shared, manager, sender, receiver).await
        }
    }
}

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
                            if !ensure_peer(&manager, &dst)
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
type SharedRelay = Mutex<NoopRawMutex, RefCell<Relay>>;

/// The relay's Unix time. There is no source yet: SNTP needs the Wi-Fi
/// station and IP stack that the missing MQTT/TLS transport needs too
/// (docs/hardware.md). Until then the relay refuses frames rather than
/// state a false time in its ACKs.
fn wall_clock_ms() -> Option<u64> {
    None
}

/// Seals batches and solves their proof of work in chunks, yielding between
/// chunks so the reception task keeps ACKing; publishes sealed blocks.
#[embassy_executor::task]
async fn pow_task(relay: &'static SharedRelay, provider: Provider) {
    let mut next_publish = now();
    loop {
        let solving = relay.lock(|r| {
            let mut r = r.borrow_mut();
            r.poll_seal(now(), wall_clock_ms());
            if !r.is_solving() {
                return false;
            }
            let sealed = provider.with_sha(|sha| r.poll_pow(&mut AccelPow(sha), POW_CHUNK));
            if let Some(Some(b)) = sealed {
                println!(
                    "relay: block sealed height={} bytes={} tries={}",
                    b.height,
                    b.len,
                    r.stats().pow_tries
                );
            }
            r.is_solving()
        });
        if now() >= next_publish {
            next_publish = now() + gridpow_proto::Duration::from_secs(30);
            relay.lock(|r| {
                let r = r.borrow();
                let s = *r.stats();
                let l = *r.lifecycle_stats();
                let i = *r.ingress_stats();
                println!(
                    "relay: stats accepted={} duplicate={} refused_no_clock={} refused_full={} sealed={} outbox={} published={}",
                    i.frames_accepted,
                    i.frames_duplicate,
                    s.refused_no_clock,
                    s.refused_full,
                    l.blocks_sealed,
                    r.outbox().count(),
                    l.blocks_published
                );
            });
        }
        if solving {
            embassy_futures::yield_now().await;
        } else {
            Timer::after(Duration::from_millis(100)).await;
        }
    }
}

async fn run_standalone(
    relay: &'static SharedRelay,
    manager: EspNowManager,
    mut sender: EspNowSender,
    mut receiver: EspNowReceiver,
) -> ! {
    println!("relay: standalone mode");
    loop {
        let frame = receiver.receive_async().await;
        let src = frame.info.src_address;
        let mut ack = [0u8; 48];
        let res = relay.lock(|r| {
            r.borrow_mut()
                .handle_frame(now(), wall_clock_ms(), &src, frame.data(), &mut ack)
        });
        if let Ok(n) = res {
            if !ensure_peer(&manager, &src) || sender.send_async(&src, &ack[..n]).await.is_err() {
                println!("relay: ack send failed");
            }
        }
    }
}
