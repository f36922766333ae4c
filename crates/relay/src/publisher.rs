//! Publishing over MQTT: two tokio tasks.
//!
//! - The **network task** polls rumqttc's event loop (which reconnects when
//!   polled after an error), verifies receipts (server signature, relay id)
//!   and reports connection changes.
//! - The **outbox task** publishes QoS 1 what the core's block lifecycle
//!   says is due (lowest heights first, at most `max_inflight_blocks`
//!   awaiting receipts, again after every reconnect and whenever a receipt
//!   is `republish_after_s` late) and applies receipts to it; a broker that
//!   drops messages (queue limits, restarts without persistence) therefore
//!   costs time, never data.
//!
//! The session is persistent (clean session off), the status topic is
//! retained, and the last will marks the relay offline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Sender;
use ed25519_dalek::VerifyingKey;
use gridpow_common::topics;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::lifecycle::ReceiptOutcome;
use gridpow_proto::wire::ReceiptRepr;
use gridpow_relay_net::{RadioCounts, Status};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use gridpow_common::tls_reload::{self, MqttTls, ReloadLines, ReloadReason, ReloadRecord};

use crate::config::RelayConfig;
use crate::logwatch::LogWatcher;
use crate::stats::{add, Shared};
use crate::threads::{proto_now, ChainEvent, NetEvent, PubCmd, SharedLifecycle};
use crate::RelayError;

/// Block bytes kept in memory for republishing; beyond this they are read
/// back from the outbox file when needed.
const CACHE_BYTES: usize = 64 << 20;

/// The relay's status message (docs/protocol.md §11; retained, and with
/// `online` false also the last will), written by the one writer of the
/// format the ESP32 relay uses too.
pub fn status_json(status: &Status) -> String {
    status.to_json().as_str().to_owned()
}

/// The broker connection's settings from the configuration.
fn client_settings(cfg: &RelayConfig) -> gridpow_common::mqtt::ClientSettings {
    let (ca, cert, key) = cfg.tls_paths();
    gridpow_common::mqtt::ClientSettings {
        client_id: cfg.client_id(),
        host: cfg.mqtt.host.clone(),
        port: cfg.mqtt.port,
        keep_alive_s: cfg.mqtt.keep_alive_s,
        tls: cfg.mqtt.tls.then_some(gridpow_common::mqtt::ClientTls {
            ca,
            cert,
            key,
            identity_configured: false,
        }),
    }
}

/// MQTT options from the configuration: TLS with the site CA (and the relay's
/// client certificate when present), persistent session, last will.
pub(crate) fn mqtt_options(
    cfg: &RelayConfig,
    height: Option<u64>,
) -> Result<MqttOptions, RelayError> {
    let mut o = client_settings(cfg).v311()?;
    o.set_clean_session(false);
    let max_block = gridpow_proto::wire::block::block_len(
        cfg.block.max_frames,
        cfg.block.max_frames * gridpow_proto::wire::uplink::MAX_LEN,
    );
    let max_packet = (max_block + 4096).max(1 << 20);
    o.set_max_packet_size(max_packet, max_packet);
    let inflight = (cfg.mqtt.max_inflight_blocks + 16).min(u16::MAX as usize) as u16;
    o.set_inflight(inflight);
    o.set_request_channel_capacity(cfg.mqtt.max_inflight_blocks * 2 + 16);
    o.set_last_will(LastWill::new(
        topics::status(cfg.relay_id),
        status_json(&Status {
            relay_id: cfg.relay_id,
            online: false,
            height,
            time_ms: gridpow_common::wall_ms(),
            radio: None,
            tls_expiry_days: None,
        }),
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// Reloading the TLS material while running: the material and its files,
/// and the trigger [`crate::RelayHandle::reload_tls`] pulls.
pub(crate) struct TlsReload {
    mqtt: MqttTls,
    trigger: Arc<tokio::sync::Notify>,
}

/// What the relay's reloads log.
const RELOAD_LINES: ReloadLines = ReloadLines {
    what: "relay",
    reloaded: "TLS material reloaded; reconnecting to the broker with it.",
    refused: "TLS reload refused; keeping the certificates in use.",
};

/// The files to watch (`None` without TLS), and what is in use now, recorded
/// in the stats. The client certificate is watched only if present at start
/// (otherwise the relay connects without one, as [`client_settings`] does).
pub(crate) fn tls_reload(
    cfg: &RelayConfig,
    trigger: Arc<tokio::sync::Notify>,
    shared: &Shared,
) -> Option<TlsReload> {
    // The start checked these already; a failure here only leaves the gauge empty.
    let mqtt = MqttTls::new(client_settings(cfg), &shared.certs)?;
    Some(TlsReload { mqtt, trigger })
}

/// How the relay holds the server to its word: the key its receipts must
/// verify under, and the watch over its transparency log (`log.vkey`).
pub(crate) struct ServerTrust {
    pub server_key: VerifyingKey,
    pub log: Option<LogWatcher>,
}

/// Spawns the network and outbox tasks on the current tokio runtime.
#[allow(clippy::too_many_arguments)] // each is one of the tasks' distinct inputs
pub(crate) fn spawn(
    cfg: &RelayConfig,
    options: MqttOptions,
    trust: ServerTrust,
    lifecycle: SharedLifecycle,
    chain_tx: Sender<ChainEvent>,
    cmds: mpsc::UnboundedReceiver<PubCmd>,
    shared: Arc<Shared>,
    tls: Option<TlsReload>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ServerTrust { server_key, log } = trust;
    let cap = options.request_channel_capacity();
    let (client, eventloop) = AsyncClient::new(options, cap);
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    let net = tokio::spawn(network_task(
        eventloop,
        cfg.broker_target(),
        cfg.relay_id,
        server_key,
        net_tx,
        shared.clone(),
        tls,
    ));
    let outbox = OutboxTask {
        relay_id: cfg.relay_id,
        client,
        blocks_topic: topics::blocks(cfg.relay_id),
        status_topic: topics::status(cfg.relay_id),
        receipts_topic: topics::receipts(cfg.relay_id),
        lifecycle,
        blocks: BTreeMap::new(),
        cached: 0,
        connected: false,
        chain_tx,
        shared,
        status_height: None,
        status_sent: None,
        log,
        log_requests_topic: topics::log_requests(cfg.relay_id),
        log_proofs_topic: topics::log_proofs(cfg.relay_id),
    };
    let out = tokio::spawn(outbox.run(cmds, net_rx));
    vec![net, out]
}

async fn network_task(
    mut eventloop: EventLoop,
    broker: gridpow_common::net::BrokerTarget,
    relay_id: u32,
    server_key: VerifyingKey,
    net_tx: mpsc::UnboundedSender<NetEvent>,
    shared: Arc<Shared>,
    mut tls: Option<TlsReload>,
) {
    let receipts_topic = topics::receipts(relay_id);
    let proofs_topic = topics::log_proofs(relay_id);
    let mut backoff = Duration::from_millis(100);
    let mut logged_down = false;
    // The first check one interval after the start, not at once.
    let mut check = tls_reload::reload_checks();
    let trigger = tls.as_ref().map(|t| t.trigger.clone());
    loop {
        // A reload may interrupt the poll only while connected: a poll
        // dropped between CONNECT and CONNACK leaves the broker a half-made
        // session (rumqttd 0.20 then panics on the reconnection, its issue
        // #1062), so a reload asked for meanwhile waits for the connection.
        let connected = shared.mqtt_connected.load(Ordering::Relaxed);
        let asked = async {
            match &trigger {
                Some(t) if connected => t.notified().await,
                _ => std::future::pending().await,
            }
        };
        // The poll's future borrows the event loop: the select only says
        // what woke us, the reload happens after it.
        let wake = tokio::select! {
            ev = eventloop.poll() => Wake::Net(ev),
            () = asked => Wake::Asked,
            _ = check.tick(), if tls.is_some() && connected => Wake::Check,
        };
        let ev = match wake {
            Wake::Net(ev) => ev,
            Wake::Asked | Wake::Check => {
                let asked = matches!(wake, Wake::Asked);
                if let Some(t) = tls.as_mut() {
                    if let Some(why) = t.mqtt.reload_due(asked) {
                        reload_tls(&mut eventloop, t, why, &net_tx, &shared);
                    }
                }
                continue;
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code == ConnectReturnCode::Success {
                    backoff = Duration::from_millis(100);
                    logged_down = false;
                    add(&shared.mqtt_connects, 1);
                    shared.mqtt_connected.store(true, Ordering::Relaxed);
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to the broker"
                    );
                    let _ = net_tx.send(NetEvent::Connected);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == topics::LOG_CHECKPOINT {
                    let _ = net_tx.send(NetEvent::Checkpoint(p.payload));
                    continue;
                }
                if p.topic == proofs_topic {
                    let _ = net_tx.send(NetEvent::LogProof(p.payload));
                    continue;
                }
                if p.topic != receipts_topic {
                    continue;
                }
                match ReceiptRepr::parse_verified(&RustCrypto, &p.payload, &server_key) {
                    Ok(r) if r.relay_id == relay_id => {
                        let _ = net_tx.send(NetEvent::Receipt(r));
                    }
                    Ok(r) => {
                        add(&shared.receipts_rejected, 1);
                        tracing::warn!(
                            relay = r.relay_id,
                            "receipt for another relay on our topic"
                        );
                    }
                    Err(e) => {
                        add(&shared.receipts_rejected, 1);
                        tracing::warn!(error = %e, "receipt refused");
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                shared.mqtt_connected.store(false, Ordering::Relaxed);
                // Our own disconnect (shutdown): the error that follows is expected.
                logged_down = true;
                let _ = net_tx.send(NetEvent::Disconnected);
            }
            Ok(_) => {}
            Err(e) => {
                if shared.mqtt_connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, broker = %broker, "broker connection lost; reconnecting");
                } else if !logged_down {
                    // The first failed attempt since start or since the
                    // connection was lost: where, TLS or not, what to check.
                    tracing::warn!(broker = %broker, "{}", broker.unreachable(&e.to_string()));
                    logged_down = true;
                }
                let _ = net_tx.send(NetEvent::Disconnected);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // Not connected, so no poll to interrupt: a reload asked for,
                // or files changed (renewed after they expired), act now.
                if let Some(t) = tls.as_mut() {
                    let asked = tokio::time::timeout(Duration::ZERO, t.trigger.notified())
                        .await
                        .is_ok();
                    if let Some(why) = t.mqtt.reload_due(asked) {
                        reload_tls(&mut eventloop, t, why, &net_tx, &shared);
                    }
                }
            }
        }
    }
}

/// What woke the network task.
enum Wake {
    Net(Result<Event, rumqttc::ConnectionError>),
    Asked,
    Check,
}

/// Loads the TLS material again and, if it is usable, reconnects with it:
/// the event loop drops its connection, keeps what was in flight for
/// retransmission, and connects with the new transport at its next poll; the
/// outbox task sees a disconnection and republishes every block without a
/// receipt once connected (the journal and outbox are untouched). A failure
/// keeps the connection and the material in use, and is logged naming the file.
fn reload_tls(
    eventloop: &mut EventLoop,
    tls: &mut TlsReload,
    why: ReloadReason,
    net_tx: &mpsc::UnboundedSender<NetEvent>,
    shared: &Shared,
) {
    let record = ReloadRecord {
        in_use: &shared.certs,
        reloads: &shared.tls_reloads,
        failures: &shared.tls_reload_failures,
    };
    tls.mqtt.reload(why, &RELOAD_LINES, record, |transport| {
        eventloop.mqtt_options.set_transport(transport);
        eventloop.clean();
        shared.mqtt_connected.store(false, Ordering::Relaxed);
        let _ = net_tx.send(NetEvent::Disconnected);
    });
}

struct OutboxTask {
    relay_id: u32,
    client: AsyncClient,
    blocks_topic: String,
    status_topic: String,
    receipts_topic: String,
    /// What to publish when, and which receipt frees which block: the core's rules.
    lifecycle: SharedLifecycle,
    /// Where each unconfirmed block's bytes are (in memory up to `CACHE_BYTES`).
    blocks: BTreeMap<u64, Cached>,
    cached: usize,
    connected: bool,
    chain_tx: Sender<ChainEvent>,
    shared: Arc<Shared>,
    status_height: Option<u64>,
    status_sent: Option<Instant>,
    /// The watch over the server's log, when `log.vkey` is set.
    log: Option<LogWatcher>,
    log_requests_topic: String,
    log_proofs_topic: String,
}

struct Cached {
    bytes: Option<Bytes>,
    path: PathBuf,
}

impl OutboxTask {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<PubCmd>,
        mut net: mpsc::UnboundedReceiver<NetEvent>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(PubCmd::Block { height, bytes, path }) => {
                        let bytes = bytes.filter(|b| self.cached + b.len() <= CACHE_BYTES);
                        self.cached += bytes.as_ref().map_or(0, |b| b.len());
                        self.blocks.insert(height, Cached { bytes, path });
                        self.pump();
                    }
                    Some(PubCmd::Shutdown(done)) => {
                        self.goodbye(&mut net).await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                ev = net.recv() => match ev {
                    Some(NetEvent::Connected) => {
                        self.connected = true;
                        if let Err(e) = self.client.try_subscribe(self.receipts_topic.clone(), QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "receipt subscription not queued");
                        }
                        if self.log.is_some() {
                            for (t, q) in [(topics::LOG_CHECKPOINT.to_string(), QoS::AtLeastOnce), (self.log_proofs_topic.clone(), QoS::AtMostOnce)] {
                                if let Err(e) = self.client.try_subscribe(t, q) {
                                    tracing::warn!(error = %e, "log subscription not queued");
                                }
                            }
                        }
                        self.publish_status(true);
                        // A new connection may have lost whatever was in flight.
                        self.lifecycle.lock().handle_connected();
                        self.pump();
                    }
                    Some(NetEvent::Disconnected) => {
                        self.connected = false;
                        self.lifecycle.lock().handle_disconnected();
                    }
                    Some(NetEvent::Receipt(r)) => {
                        self.on_receipt(&r);
                        self.pump();
                    }
                    Some(NetEvent::Checkpoint(note)) => {
                        if let Some(w) = &mut self.log {
                            w.on_checkpoint(&note, &self.shared);
                        }
                        self.ask_log();
                    }
                    Some(NetEvent::LogProof(p)) => {
                        if let Some(w) = &mut self.log {
                            w.on_proof(&p, &self.shared);
                        }
                        self.ask_log();
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    self.pump();
                    self.ask_log();
                    let head = self.shared.head().map(|(h, _)| h);
                    let stale = self.status_sent.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                    if self.connected && head != self.status_height && stale {
                        self.publish_status(true);
                    }
                }
            }
        }
    }

    fn publish_status(&mut self, online: bool) {
        let height = self.shared.head().map(|(h, _)| h);
        let stats = self.shared.snapshot();
        let msg = status_json(&Status {
            relay_id: self.relay_id,
            online,
            height,
            time_ms: gridpow_common::wall_ms(),
            radio: Some(RadioCounts {
                frames: stats.frames_received,
                accepted: stats.frames_accepted,
                duplicates: stats.frames_duplicate,
                rejected: stats.frames_rejected.total(),
            }),
            tls_expiry_days: self.shared.certs.min_days_left(tls_reload::now_s()),
        });
        if self
            .client
            .try_publish(self.status_topic.clone(), QoS::AtLeastOnce, true, msg)
            .is_ok()
        {
            self.status_height = height;
            self.status_sent = Some(Instant::now());
        }
    }

    /// Publishes the log proof request the watch wants now, if any.
    fn ask_log(&mut self) {
        if !self.connected {
            return;
        }
        let Some(req) = self.log.as_mut().and_then(LogWatcher::poll_request) else {
            return;
        };
        let bytes = req.to_bytes().to_vec();
        if let Err(e) = self.client.try_publish(
            self.log_requests_topic.clone(),
            QoS::AtMostOnce,
            false,
            bytes,
        ) {
            // Asked again after the core's retry delay.
            tracing::debug!(error = %e, "log proof request not queued");
        }
    }

    /// Hands a stored block's log position to the watch, with the block's
    /// header read from the cache or the outbox file.
    fn watch_receipt(&mut self, height: u64, r: &ReceiptRepr) {
        let (Some(w), Some(at)) = (&mut self.log, r.log) else {
            return;
        };
        let Some(c) = self.blocks.get(&height) else {
            return;
        };
        let bytes = match &c.bytes {
            Some(b) => b.to_vec(),
            None => match crate::outbox::read_block_file(&c.path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, height, "outbox block not readable; its log position goes unchecked");
                    return;
                }
            },
        };
        w.on_receipt(&bytes, at, &self.shared);
    }

    fn on_receipt(&mut self, r: &ReceiptRepr) {
        let outcome = self.lifecycle.lock().apply_receipt(proto_now(), r);
        match outcome {
            ReceiptOutcome::Confirmed { height, hash, .. } => {
                self.watch_receipt(height, r);
                if let Some(c) = self.blocks.remove(&height) {
                    self.cached -= c.bytes.as_ref().map_or(0, |b| b.len());
                }
                let _ = self.chain_tx.send(ChainEvent::Confirmed { height, hash });
            }
            ReceiptOutcome::Quarantined { height, retry_in } => {
                add(&self.shared.blocks_quarantined, 1);
                tracing::error!(
                    height,
                    retry_in_s = retry_in.as_millis() / 1000,
                    "the server quarantined our block; keeping it and offering it again later"
                );
            }
            ReceiptOutcome::Refused { height, hash, .. } => {
                add(&self.shared.blocks_refused, 1);
                tracing::error!(
                    height,
                    hash = %hex::encode(&hash[..8]),
                    "the server refused our block for good (receipt status 3); archiving it in refused/"
                );
                if let Some(c) = self.blocks.remove(&height) {
                    self.cached -= c.bytes.as_ref().map_or(0, |b| b.len());
                }
                let _ = self.chain_tx.send(ChainEvent::Refused { height, hash });
            }
            // A repeated receipt (QoS 1 redelivery, two servers) or one for a
            // block we no longer hold; harmless either way.
            ReceiptOutcome::NoSuchBlock => {
                tracing::debug!(height = r.height, "receipt for no waiting block")
            }
        }
    }

    /// Publishes every block the lifecycle says is due.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        loop {
            let now = proto_now();
            let Some(order) = self.lifecycle.lock().poll_publish(now) else {
                return;
            };
            let bytes = match self.blocks.get(&order.height) {
                Some(Cached { bytes: Some(b), .. }) => b.clone(),
                Some(Cached { path, .. }) => match crate::outbox::read_block_file(path) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        // Unreadable: nothing to send; try again at the next republish.
                        tracing::warn!(error = %e, height = order.height, "outbox block not readable");
                        self.lifecycle.lock().handle_published(order.height, now);
                        continue;
                    }
                },
                // Sealed but not yet handed over by the chain thread: next tick.
                None => return,
            };
            match self
                .client
                .try_publish(self.blocks_topic.clone(), QoS::AtLeastOnce, false, bytes)
            {
                Ok(()) => {
                    self.lifecycle.lock().handle_published(order.height, now);
                    if order.republish {
                        add(&self.shared.blocks_republished, 1);
                    } else {
                        add(&self.shared.blocks_published, 1);
                    }
                }
                // The request queue is full: try again at the next tick.
                Err(_) => return,
            }
        }
    }

    async fn goodbye(&mut self, net: &mut mpsc::UnboundedReceiver<NetEvent>) {
        if self.connected {
            self.publish_status(false);
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(ev) = net.recv().await {
                    if matches!(ev, NetEvent::Disconnected) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Radio counters of a `test-vectors/status.json` message.
    fn radio(v: &serde_json::Value) -> Option<RadioCounts> {
        let n = |k: &str| v[k].as_u64().unwrap_or_default();
        v.is_object().then(|| RadioCounts {
            frames: n("frames"),
            accepted: n("accepted"),
            duplicates: n("duplicates"),
            rejected: n("rejected"),
        })
    }

    #[test]
    fn status_json_is_the_vectors_text_with_and_without_radio_counters() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../test-vectors/status.json"))
                .unwrap_or_default();
        let messages = doc["messages"].as_array().cloned().unwrap_or_default();
        assert!(
            messages.len() >= 7,
            "test-vectors/status.json has no messages"
        );
        assert!(
            messages.iter().any(|m| m["tls_expiry_days"].is_i64()),
            "test-vectors/status.json has no tls_expiry_days"
        );
        for m in &messages {
            let days = &m["tls_expiry_days"];
            assert!(days.is_null() || days.is_i64(), "{m}");
            let got = status_json(&Status {
                relay_id: m["relay_id"].as_u64().unwrap_or_default() as u32,
                online: m["online"].as_bool().unwrap_or_default(),
                height: m["height"].as_u64(),
                time_ms: m["time_ms"].as_u64().unwrap_or_default(),
                radio: radio(&m["radio"]),
                tls_expiry_days: days.as_i64(),
            });
            assert_eq!(Some(got.as_str()), m["json"].as_str());
        }
    }
}
