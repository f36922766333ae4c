//! `gridpow_relay_app::Radio` on ESP-NOW, sharing the Wi-Fi station's radio.
//!
//! The ESP-NOW instance is created only once the station has associated
//! (before that the relay has no wall clock and refuses frames anyway, so
//! meters keep them), and re-created whenever the Wi-Fi task reports a new
//! channel: ESP-NOW then runs on the access point's channel without ever
//! calling its `set_channel`, and the relay's ACKs state that channel.

use core::cell::RefCell;

use embassy_futures::select::{select, Either};
use esp_println::println;
use esp_radio::esp_now::{
    EspNowError, EspNowManager, EspNowReceiver, EspNowSender, EspNowWifiInterface, PeerInfo,
};
use gridpow_proto::MacAddr;

use crate::net::{ChannelHandoff, Controller};
use crate::Relay;

/// ESP-NOW's three parts.
type Parts = (EspNowManager, EspNowSender, EspNowReceiver);

/// Why an ACK was not sent.
// The fields are read by the Debug output in log lines.
#[allow(dead_code)]
#[derive(Debug)]
pub enum RadioError {
    /// ESP-NOW is not running yet (no association so far).
    NotRunning,
    /// The destination could not be added as a peer (peer table full?).
    Peer(EspNowError),
    /// The driver refused or did not confirm the transmission.
    Send(EspNowError),
}

/// The relay's radio.
pub struct EspNowRadio<'r> {
    ctrl: &'static Controller,
    handoff: &'static ChannelHandoff,
    relay: &'r RefCell<Relay>,
    parts: Option<Parts>,
}

impl<'r> EspNowRadio<'r> {
    /// A radio that starts when the Wi-Fi task hands over the first channel.
    pub fn new(
        ctrl: &'static Controller,
        handoff: &'static ChannelHandoff,
        relay: &'r RefCell<Relay>,
    ) -> Self {
        EspNowRadio {
            ctrl,
            handoff,
            relay,
            parts: None,
        }
    }

    async fn restart_on(&mut self, channel: u8) {
        // Only one ESP-NOW instance may exist: drop the old one first.
        self.parts = None;
        let parts = self.ctrl.lock().await.esp_now().split();
        self.parts = Some(parts);
        self.relay.borrow_mut().set_channel(channel);
        println!("relay: esp-now running channel={channel}");
        self.handoff.done.signal(());
    }
}

/// Registers `dst` as an ESP-NOW peer on the current channel unless it is
/// one already (bridge and standalone modes both send through this).
pub fn ensure_peer(manager: &EspNowManager, dst: &MacAddr) -> Result<(), EspNowError> {
    if manager.peer_exists(dst) {
        return Ok(());
    }
    manager.add_peer(PeerInfo {
        interface: EspNowWifiInterface::Station,
        peer_address: *dst,
        lmk: None,
        // The current channel: the access point's.
        channel: None,
        encrypt: false,
    })
}

impl gridpow_relay_app::Radio for EspNowRadio<'_> {
    type Error = RadioError;

    async fn receive(&mut self, buf: &mut [u8]) -> (MacAddr, usize) {
        loop {
            let got = match &mut self.parts {
                None => Either::Second(self.handoff.channel.wait().await),
                Some((_, _, rx)) => select(rx.receive_async(), self.handoff.channel.wait()).await,
            };
            match got {
                Either::First(frame) => {
                    let data = frame.data();
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    return (frame.info.src_address, n);
                }
                Either::Second(channel) => self.restart_on(channel).await,
            }
        }
    }

    async fn send(&mut self, dst: &MacAddr, data: &[u8]) -> Result<(), RadioError> {
        let Some((manager, tx, _)) = &mut self.parts else {
            return Err(RadioError::NotRunning);
        };
        ensure_peer(manager, dst).map_err(RadioError::Peer)?;
        tx.send_async(dst, data).await.map_err(RadioError::Send)
    }
}
