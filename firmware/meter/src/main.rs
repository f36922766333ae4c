//! gridpow meter firmware (ESP32-C3 / ESP32-C6).
//!
//! Thin by design: the meter application (metering, intervals, energy,
//! sender, boot epoch, channel procedure) is `gridpow_firmware_logic::meter`,
//! tested on the host. This binary wires it to the hardware:
//!
//! - the sampler task, on a high-priority interrupt executor, reads the
//!   ZMPT101B (GPIO0, ADC1 channel 0) and ACS712 (GPIO1, ADC1 channel 1) as
//!   pairs at the configured rate (default 4 kHz) and sends 0.2 s blocks to
//!   the main task;
//! - the main task feeds blocks and received ESP-NOW frames to the node,
//!   sleeps until the node's next deadline, and applies channel changes;
//! - the radio task transmits what the node queued (ESP-NOW, async);
//! - AES-CCM and the ACK's HMAC-SHA256 run on the AES and SHA accelerators;
//! - configuration comes from the `gp_config` partition (0x150000), state
//!   (boot epoch, energy checkpoints) lives in `gp_state` (0x151000).
#![no_std]
#![no_main]

#[path = "../../common/hw.rs"]
mod hw;

use embassy_executor::Spawner;
use embassy_futures::select::{select3, Either3};
use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, NoopRawMutex};
use embassy_sync::channel::Channel;
use embassy_time::{Duration, Ticker, Timer};
use esp_backtrace as _;
use esp_hal::analog::adc::{Adc, AdcConfig, AdcPin, Attenuation};
use esp_hal::clock::CpuClock;
use esp_hal::interrupt::Priority;
use esp_hal::peripherals::{ADC1, GPIO0, GPIO1};
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::Blocking;
use esp_println::println;
use esp_radio::esp_now::{EspNowManager, EspNowSender, PeerInfo, BROADCAST_ADDRESS};
use esp_rtos::embassy::InterruptExecutor;
use esp_storage::FlashStorage;
use gridpow_firmware_logic::crypto::Accelerated;
use gridpow_firmware_logic::layout::{CONFIG_OFFSET, CONFIG_SIZE, STATE_OFFSET, STATE_SIZE};
use gridpow_firmware_logic::meter::{FrameOutcome, MeterNode, Radio};
use gridpow_firmware_logic::provisioning::MeterConfig;
use gridpow_proto::sender::PushOutcome;
use gridpow_proto::{Instant, MacAddr};

use crate::hw::{EspAes, EspSha, Partition};

esp_bootloader_esp_idf::esp_app_desc!();

/// Sample pairs per block: 0.2 s at the default 4 kHz.
const BLOCK: usize = 800;
/// Readings kept in RAM while the relay is unreachable (~43 min at 10 s).
const BACKLOG: usize = 256;

macro_rules! mk_static {
    ($t:ty, $val:expr) => {{
        static STATIC_CELL: static_cell::StaticCell<$t> = static_cell::StaticCell::new();
        STATIC_CELL.uninit().write($val)
    }};
}

/// One block of simultaneous samples and when its last pair was taken.
struct SampleBlock {
    voltage: [u16; BLOCK],
    current: [u16; BLOCK],
    end_us: u64,
}

/// A frame for the radio task.
struct TxFrame {
    dst: MacAddr,
    len: usize,
    data: [u8; 250],
}

static BLOCKS: Channel<CriticalSectionRawMutex, SampleBlock, 2> = Channel::new();

type Provider = &'static Accelerated<EspAes, EspSha>;
type TxQueue = Channel<NoopRawMutex, TxFrame, 4>;

/// The node's radio: peers are added here, frames go to the radio task.
struct EspRadio {
    manager: EspNowManager,
    tx: &'static TxQueue,
}

impl Radio for EspRadio {
    type Error = RadioError;

    fn send(&mut self, dst: &MacAddr, data: &[u8]) -> Result<(), RadioError> {
        if *dst != BROADCAST_ADDRESS && !self.manager.peer_exists(dst) {
            self.manager
                .add_peer(PeerInfo {
                    interface: esp_radio::esp_now::EspNowWifiInterface::Station,
                    peer_address: *dst,
                    lmk: None,
                    channel: None,
                    encrypt: false,
                })
                .map_err(|_| RadioError::Peer)?;
        }
        let mut f = TxFrame {
            dst: *dst,
            len: data.len().min(250),
            data: [0; 250],
        };
        f.data[..f.len].copy_from_slice(&data[..f.len]);
        self.tx.try_send(f).map_err(|_| RadioError::QueueFull)
    }
}

#[derive(Debug)]
enum RadioError {
    Peer,
    QueueFull,
}

fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

#[embassy_executor::task]
async fn sampler(
    mut adc: Adc<'static, ADC1<'static>, Blocking>,
    mut vpin: AdcPin<GPIO0<'static>, ADC1<'static>>,
    mut ipin: AdcPin<GPIO1<'static>, ADC1<'static>>,
    rate_hz: u32,
) {
    let mut ticker = Ticker::every(Duration::from_micros(1_000_000 / u64::from(rate_hz)));
    let mut dropped: u32 = 0;
    loop {
        let mut block = SampleBlock {
            voltage: [0; BLOCK],
            current: [0; BLOCK],
            end_us: 0,
        };
        for k in 0..BLOCK {
            ticker.next().await;
            // Voltage then current, a few µs apart: the constant skew is part
            // of the phase calibration (docs/hardware.md).
            block.voltage[k] = nb::block!(adc.read_oneshot(&mut vpin)).unwrap_or(0);
            block.current[k] = nb::block!(adc.read_oneshot(&mut ipin)).unwrap_or(0);
        }
        block.end_us = embassy_time::Instant::now().as_micros();
        if BLOCKS.try_send(block).is_err() {
            dropped = dropped.wrapping_add(1);
            println!("sampler: block dropped, main task behind (dropped={dropped})");
        }
    }
}

#[embassy_executor::task]
async fn radio_tx(mut sender: EspNowSender, tx: &'static TxQueue) {
    loop {
        let f = tx.receive().await;
        if let Err(e) = sender.send_async(&f.dst, &f.data[..f.len]).await {
            println!("radio: send failed error={e:?}");
        }
    }
}

/// Stops here, logging why, when the meter cannot run safely.
async fn halt(why: &dyn core::fmt::Display) -> ! {
    loop {
        println!("meter: halted: {why}");
        Timer::after(Duration::from_secs(10)).await;
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 24 * 1024);
    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
    println!(
        "meter: gridpow meter {} starting",
        env!("CARGO_PKG_VERSION")
    );

    // Configuration from the gp_config partition.
    let mut flash = FlashStorage::new(peripherals.FLASH);
    let mut region = [0u8; CONFIG_SIZE as usize];
    if let Err(e) = flash.read_nor(CONFIG_OFFSET, &mut region) {
        halt(&format_args!("reading configuration failed: {e:?}")).await;
    }
    let cfg = match MeterConfig::decode(&region) {
        Ok(c) => c,
        Err(e) => {
            halt(&format_args!(
                "{e}; flash the blob from `gridpow keys add-meter` with espflash write-bin {CONFIG_OFFSET:#x} (docs/hardware.md)"
            ))
            .await
        }
    };
    println!(
        "meter: configured meter_id={} key_id={} channel={} interval_s={} rate_hz={}",
        cfg.meter_id,
        cfg.key_id,
        cfg.channel,
        cfg.interval_s,
        cfg.effective_sample_rate_hz()
    );

    // Crypto accelerators.
    let provider: Provider = mk_static!(
        Accelerated<EspAes, EspSha>,
        Accelerated::new(
            EspAes::new(peripherals.AES),
            EspSha::new(peripherals.SHA)
        )
    );

    // Radio: ESP-NOW on the configured channel.
    let controller =
        match esp_radio::wifi::WifiController::new(peripherals.WIFI, Default::default()) {
            Ok(c) => mk_static!(esp_radio::wifi::WifiController<'static>, c),
            Err(e) => halt(&format_args!("Wi-Fi init failed: {e:?}")).await,
        };
    let esp_now = controller.esp_now();
    if let Err(e) = esp_now.set_channel(cfg.channel) {
        println!("meter: set_channel failed error={e:?}");
    }
    let (manager, sender, mut receiver) = esp_now.split();
    let tx: &'static TxQueue = mk_static!(TxQueue, Channel::new());
    match radio_tx(sender, tx) {
        Ok(t) => spawner.spawn(t),
        Err(e) => halt(&format_args!("radio task: {e:?}")).await,
    }

    // Boot: reserve the epoch in flash before anything can be sent.
    let state = Partition::new(flash, STATE_OFFSET, STATE_SIZE);
    let radio = EspRadio { manager, tx };
    let mut node: MeterNode<Provider, Partition, EspRadio, BACKLOG> =
        match MeterNode::boot(&cfg, provider, state, radio, now()) {
            Ok(n) => n,
            Err(e) => halt(&format_args!("boot failed: {e:?}")).await,
        };
    println!("meter: booted boot_epoch={}", node.boot_epoch());

    // Sampler on a high-priority interrupt executor: low jitter while the
    // main task seals frames and the radio works.
    let mut adc_cfg = AdcConfig::new();
    let vpin = adc_cfg.enable_pin(peripherals.GPIO0, Attenuation::_11dB);
    let ipin = adc_cfg.enable_pin(peripherals.GPIO1, Attenuation::_11dB);
    let adc = Adc::new(peripherals.ADC1, adc_cfg);
    let executor = mk_static!(
        InterruptExecutor<1>,
        InterruptExecutor::new(peripherals.FROM_CPU_INTR1)
    );
    let high = executor.start(Priority::Priority2);
    match sampler(adc, vpin, ipin, cfg.effective_sample_rate_hz()) {
        Ok(t) => high.spawn(t),
        Err(e) => halt(&format_args!("sampler task: {e:?}")).await,
    }

    let rng = Rng::new();
    let mut channel = cfg.channel;
    let mut next_report = now();
    loop {
        let deadline = embassy_time::Instant::from_micros(node.poll_timeout().as_micros());
        match select3(
            BLOCKS.receive(),
            receiver.receive_async(),
            Timer::at(deadline),
        )
        .await
        {
            Either3::First(b) => {
                let pushed =
                    node.handle_block(Instant::from_micros(b.end_us), &b.voltage, &b.current);
                if let Some(PushOutcome::QueuedDroppedOldest { dropped_seq, .. }) = pushed {
                    println!("meter: backlog full, oldest reading dropped seq={dropped_seq}");
                }
                if let (Some(_), Some((seq, r))) = (pushed, node.last_reading()) {
                    println!(
                        "meter: reading seq={seq} v_cv={} i_ma={} p_dw={} pf_e4={} f_mhz={} e_mwh={} flags={:#x}",
                        r.voltage_cv,
                        r.current_ma,
                        r.active_power_dw,
                        r.power_factor_e4,
                        r.frequency_mhz,
                        r.energy_mwh,
                        r.flags
                    );
                }
            }
            Either3::Second(rx) => {
                let src = rx.info.src_address;
                if let FrameOutcome::Acked(a) = node.handle_frame(now(), &src, rx.data()) {
                    if a.duplicate {
                        println!("meter: ack counter={} duplicate=true", a.counter);
                    }
                }
            }
            Either3::Third(()) => {}
        }
        node.poll(now(), rng.random());
        if node.channel() != channel {
            channel = node.channel();
            println!("meter: channel changed channel={channel}");
            if let Err(e) = node.radio_mut().manager.set_channel(channel) {
                println!("meter: set_channel failed error={e:?}");
            }
        }
        if now() >= next_report {
            next_report = now() + gridpow_proto::Duration::from_secs(60);
            let s = node.sender().stats();
            let n = node.stats();
            println!(
                "meter: stats readings={} acked={} dropped={} tx={} retx={} abandoned={} backlog={} epoch={} energy_mwh={} synced={} block_errors={} radio_errors={} checkpoints={}",
                n.readings,
                s.readings_acked,
                s.readings_dropped,
                s.transmissions,
                s.retransmissions,
                s.frames_abandoned,
                node.sender().unconfirmed(),
                node.boot_epoch(),
                node.energy().total_mwh(),
                node.wall_clock_ms(now()).is_some(),
                n.block_errors,
                n.radio_errors,
                n.checkpoints
            );
        }
    }
}
