use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use gridpow_proto::MacAddr;
use gridpow_radio::{Confirmation, RadioError, RadioFrame, RadioPort, UdpAir};
use tokio::sync::{mpsc, oneshot};

use crate::traits::{Radio, Vouch};

/// The UDP air (`gridpow_radio::UdpAir`, the radio of `gridpow
/// relay` and `gridpow meters`) as an async [`Radio`].
///
/// `UdpAir` is blocking and learns a return route only from a frame it
/// returned last, before the next receive; so one thread owns it and
/// handles one frame at a time: it hands a frame over, then waits until the
/// application has vouched for it and sent its ACK (or asked for the next
/// frame) before it receives again.
pub struct UdpRadio {
    own_mac: MacAddr,
    local: SocketAddr,
    frames: mpsc::Receiver<RadioFrame>,
    cmds: std::sync::mpsc::Sender<Cmd>,
    /// A frame was handed over and the thread waits for `Cmd::Next`.
    holding: bool,
    thread: Option<JoinHandle<()>>,
}

/// Why the UDP air could not send.
#[derive(Debug, thiserror::Error)]
pub enum UdpRadioError {
    /// The air refused (no route, socket error).
    #[error(transparent)]
    Air(#[from] RadioError),
    /// The radio thread is gone.
    #[error("the UDP air thread stopped")]
    Gone,
}

enum Cmd {
    Vouch(MacAddr, Confirmation),
    Send {
        dst: MacAddr,
        data: Vec<u8>,
        done: oneshot::Sender<Result<(), RadioError>>,
    },
    Next,
}

impl UdpRadio {
    /// Binds the relay's UDP air at `listen`; ACKs go out from `own_mac`.
    pub fn bind(listen: SocketAddr, own_mac: MacAddr) -> Result<Self, RadioError> {
        let mut air = UdpAir::bind(listen, None, 0.0, 1)?;
        let local = air.local_addr()?;
        let (frame_tx, frames) = mpsc::channel(1);
        let (cmds, cmd_rx) = std::sync::mpsc::channel::<Cmd>();
        let thread = std::thread::Builder::new()
            .name("udp-air".into())
            .spawn(move || {
                let apply = |air: &mut UdpAir, c: Cmd| match c {
                    Cmd::Vouch(mac, how) => air.confirm_peer(mac, how),
                    Cmd::Send { dst, data, done } => {
                        let _ = done.send(air.send(own_mac, dst, &data));
                    }
                    Cmd::Next => {}
                };
                loop {
                    // Commands first (an ACK waiting to go out).
                    loop {
                        match cmd_rx.try_recv() {
                            Ok(c) => apply(&mut air, c),
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        }
                    }
                    match air.recv(Duration::from_millis(20)) {
                        Ok(Some(f)) => {
                            if frame_tx.blocking_send(f).is_err() {
                                return;
                            }
                            // Hold the next receive until the app is done
                            // with this frame (vouch and ACK, or refusal).
                            loop {
                                match cmd_rx.recv() {
                                    Ok(Cmd::Next) => break,
                                    Ok(c) => apply(&mut air, c),
                                    Err(_) => return,
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "UDP air receive failed");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
            })
            .map_err(RadioError::Io)?;
        Ok(UdpRadio {
            own_mac,
            local,
            frames,
            cmds,
            holding: false,
            thread: Some(thread),
        })
    }

    /// The bound address (meters send here).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The MAC ACKs are sent from.
    pub fn mac(&self) -> MacAddr {
        self.own_mac
    }
}

impl Drop for UdpRadio {
    fn drop(&mut self) {
        // Closing the channels ends the thread within one receive timeout.
        let (tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.cmds, tx));
        self.frames.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Radio for UdpRadio {
    type Error = UdpRadioError;

    async fn receive(&mut self, buf: &mut [u8]) -> (MacAddr, usize) {
        if std::mem::take(&mut self.holding) {
            let _ = self.cmds.send(Cmd::Next);
        }
        loop {
            let Some(f) = self.frames.recv().await else {
                // The thread is gone: no more frames, ever.
                std::future::pending::<()>().await;
                continue;
            };
            self.holding = true;
            if f.data.len() > buf.len() {
                let _ = self.cmds.send(Cmd::Next);
                self.holding = false;
                continue;
            }
            buf[..f.data.len()].copy_from_slice(&f.data);
            return (f.src, f.data.len());
        }
    }

    async fn send(&mut self, dst: &MacAddr, data: &[u8]) -> Result<(), Self::Error> {
        let (done, result) = oneshot::channel();
        self.cmds
            .send(Cmd::Send {
                dst: *dst,
                data: data.to_vec(),
                done,
            })
            .map_err(|_| UdpRadioError::Gone)?;
        result.await.map_err(|_| UdpRadioError::Gone)??;
        Ok(())
    }

    fn vouch(&mut self, src: &MacAddr, how: Vouch) {
        let how = match how {
            Vouch::Fresh => Confirmation::Fresh,
            Vouch::Replayed => Confirmation::Replayed,
        };
        let _ = self.cmds.send(Cmd::Vouch(*src, how));
    }
}
