//! The ingest pipeline: MQTT → verify → commit → receipt and broker ACK.
//!
//! ```text
//! mqtt task ──Inbound──▶ verifier thread ──Verified──▶ writer thread ──AckJob──▶ acker task
//! (polls the event loop,  (signature, PoW, Merkle,      (one transaction per     (publishes the signed
//!  never blocks)           meter tags, decryption)       batch, dedup, chain)     receipt, then ACKs the
//!                                                                                  message to the broker)
//! ```
//!
//! The MQTT task only forwards (an unbounded channel: the broker bounds what
//! is in flight through the MQTT 5 receive maximum), so it keeps polling and
//! the acker's requests always drain: no stage can wait on another in a cycle.
//! A message is acknowledged to the broker only after the transaction holding
//! its block (or its quarantine row) committed; acknowledgements of a
//! connection that has since dropped are skipped, because the broker
//! redelivers those messages and the store answers `AlreadyStored`.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gridpow_common::tls_reload::{MqttTls, ReloadReason};
use gridpow_common::topics;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::ReceiptRepr;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{mpsc, watch};

use crate::keyring::Keyring;
use crate::metrics::{add, Shared};
use crate::verify::verify_payload;
use gridpow_store::RejectKind;
use gridpow_store::{Arrival, CommitResult, Ingest, Outcome, QuarantineItem, Remedy, Store};

/// What is needed to acknowledge one message to the broker.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AckToken {
    pkid: u16,
    qos: QoS,
    generation: u64,
}

impl AckToken {
    fn publish(&self) -> Publish {
        let mut p = Publish::new("", self.qos, Vec::new(), None);
        p.pkid = self.pkid;
        p
    }
}

/// A message from the broker.
pub(crate) struct Inbound {
    token: AckToken,
    arrival: Arrival,
    payload: Vec<u8>,
}

/// A message after verification.
pub(crate) struct Verified {
    token: AckToken,
    item: Ingest,
}

/// What to do after a commit.
pub(crate) struct AckJob {
    token: AckToken,
    receipt: Option<(String, Vec<u8>)>,
}

/// Control of the MQTT task during shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Normal operation.
    Running,
    /// Stop forwarding new messages (they stay unacknowledged and are
    /// redelivered later); keep polling so pending receipts and ACKs go out.
    Draining,
    /// Disconnect and end.
    Disconnect,
}

/// What the MQTT task subscribes to besides every relay's status.
pub(crate) struct Filters {
    /// Blocks (QoS 1, acknowledged after the commit); a shared subscription
    /// when servers share the load.
    pub blocks: String,
    /// Relays' log proof requests (QoS 0, §16), shared the same way.
    pub log_requests: String,
}

/// What makes the MQTT task load its TLS material again: a moved counter
/// ([`crate::ServerHandle::reload_tls`]) or changed files.
pub(crate) struct Reload {
    pub tls: Option<MqttTls>,
    pub asks: watch::Receiver<u64>,
}

/// Polls the MQTT event loop: (re)subscribes on every connection, forwards
/// publishes, counts errors and backs off while the broker is unreachable,
/// and reconnects with new TLS material when asked or when its files change.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn mqtt_task(
    mut eventloop: EventLoop,
    broker: gridpow_common::net::BrokerTarget,
    client: AsyncClient,
    filters: Filters,
    proofs: tokio::sync::mpsc::Sender<crate::transparency::ProofRequestMsg>,
    inbound: std::sync::mpsc::Sender<Inbound>,
    mut phase: watch::Receiver<Phase>,
    shared: Arc<Shared>,
    reload: Reload,
) {
    let Reload { mut tls, mut asks } = reload;
    let mut asks_open = true;
    // The first check one interval after the start, not at once.
    let mut check = gridpow_common::tls_reload::reload_checks();
    let mut inbound = Some(inbound);
    let mut backoff = Duration::from_millis(200);
    // The long explanation once per outage; later retries in one short line.
    let mut explained = false;
    let mut disconnect_deadline: Option<tokio::time::Instant> = None;
    let filter = filters.blocks;
    let names = [
        filter.clone(),
        topics::all_status(),
        filters.log_requests.clone(),
    ];
    loop {
        if let Some(deadline) = disconnect_deadline {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // Set by a branch, done after the select: the poll's future borrows the event loop.
        let mut reload_why = None;
        tokio::select! {
            asked = asks.changed(), if asks_open && tls.is_some() => {
                if asked.is_ok() {
                    reload_why = Some(ReloadReason::Asked);
                } else {
                    asks_open = false;
                }
            }
            _ = check.tick(), if tls.is_some() => {
                reload_why = tls.as_mut().and_then(|t| t.reload_due(false));
            }
            changed = phase.changed() => {
                let p = if changed.is_ok() { *phase.borrow() } else { Phase::Disconnect };
                if p != Phase::Running {
                    inbound = None;
                }
                if p == Phase::Disconnect && disconnect_deadline.is_none() {
                    let _ = client.try_disconnect();
                    disconnect_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(250)), if disconnect_deadline.is_some() => {}
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(200);
                    explained = false;
                    let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.mqtt_connected.store(true, Ordering::Relaxed);
                    shared.mqtt_subscribed.store(false, Ordering::Relaxed);
                    add(&shared.metrics.mqtt_connects, 1);
                    tracing::info!(session_present = ack.session_present, generation, filter = %filter, "MQTT connected; subscribing.");
                    // try_subscribe: awaiting here could wait on the request channel this task drains.
                    // Blocks (QoS 1, acknowledged after the commit) and every
                    // relay's status (QoS 0: nothing to acknowledge), in one request.
                    let subscriptions = [
                        Filter::new(filter.clone(), QoS::AtLeastOnce),
                        Filter::new(topics::all_status(), QoS::AtMostOnce),
                        Filter::new(filters.log_requests.clone(), QoS::AtMostOnce),
                    ];
                    if let Err(e) = client.try_subscribe_many(subscriptions) {
                        tracing::error!(error = %e, "Subscribe request could not be queued.");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    for (i, code) in s.return_codes.iter().enumerate() {
                        let what = names.get(i).map_or("?", String::as_str);
                        match code {
                            SubscribeReasonCode::Success(qos) => {
                                if i == 0 {
                                    shared.mqtt_subscribed.store(true, Ordering::Relaxed);
                                }
                                tracing::info!(qos = ?qos, filter = %what, "Subscribed.");
                            }
                            other => tracing::error!(reason = ?other, filter = %what, "Broker refused the subscription."),
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(relay) = topics::relay_of_status_topic(&String::from_utf8_lossy(&p.topic)) {
                        record_status(&shared, relay, &p.payload);
                        if p.qos != QoS::AtMostOnce {
                            let _ = client.try_ack(&p);
                        }
                        continue;
                    }
                    if let Some(relay) = topics::relay_of_log_requests_topic(&String::from_utf8_lossy(&p.topic)) {
                        let msg = crate::transparency::ProofRequestMsg { relay, payload: p.payload.to_vec() };
                        if proofs.try_send(msg).is_err() {
                            add(&shared.log.relay_proof_requests_refused, 1);
                        }
                        if p.qos != QoS::AtMostOnce {
                            let _ = client.try_ack(&p);
                        }
                        continue;
                    }
                    add(&shared.metrics.messages_received, 1);
                    add(&shared.metrics.bytes_received, p.payload.len() as u64);
                    let Some(tx) = &inbound else { continue };
                    let msg = Inbound {
                        token: AckToken { pkid: p.pkid, qos: p.qos, generation: shared.generation.load(Ordering::SeqCst) },
                        arrival: Arrival {
                            received_ms: gridpow_common::wall_ms(),
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        },
                        payload: p.payload.to_vec(),
                    };
                    if tx.send(msg).is_err() {
                        inbound = None;
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    shared.mqtt_connected.store(false, Ordering::Relaxed);
                    shared.mqtt_subscribed.store(false, Ordering::Relaxed);
                    tracing::warn!(reason = ?d.reason_code, "Broker disconnected us.");
                }
                Ok(_) => {}
                Err(e) => {
                    shared.mqtt_connected.store(false, Ordering::Relaxed);
                    shared.mqtt_subscribed.store(false, Ordering::Relaxed);
                    if disconnect_deadline.is_some() {
                        break;
                    }
                    add(&shared.metrics.mqtt_errors, 1);
                    if explained {
                        tracing::warn!(error = %e, broker = %broker, retry_in_ms = backoff.as_millis() as u64, "MQTT connection error.");
                    } else {
                        tracing::warn!(broker = %broker, retry_in_ms = backoff.as_millis() as u64, "{}", broker.unreachable(&e.to_string()));
                        explained = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = phase.changed() => {
                            if *phase.borrow() != Phase::Running { inbound = None; }
                            if *phase.borrow() == Phase::Disconnect { break; }
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let (Some(why), Some(t)) = (reload_why, tls.as_mut()) {
            // Not while stopping: the disconnect in progress must finish.
            if disconnect_deadline.is_none() {
                // A refused reload keeps the connection, and says so.
                if crate::certs::reload_mqtt(&mut eventloop, t, why, &shared) {
                    shared.mqtt_connected.store(false, Ordering::Relaxed);
                    shared.mqtt_subscribed.store(false, Ordering::Relaxed);
                }
            }
        }
    }
    shared.mqtt_connected.store(false, Ordering::Relaxed);
    shared.mqtt_subscribed.store(false, Ordering::Relaxed);
    tracing::info!("MQTT task ended.");
}

/// Keeps a relay's status message, or counts and logs why it was dropped.
fn record_status(shared: &Shared, relay: u32, payload: &[u8]) {
    match crate::relay_status::parse(relay, payload, gridpow_common::wall_ms()) {
        Ok(status) => {
            add(&shared.metrics.status_received, 1);
            if !shared.relay_status.record(status) {
                add(&shared.metrics.status_refused, 1);
                tracing::warn!(relay, "Status of one relay too many dropped.");
            }
        }
        Err(e) => {
            add(&shared.metrics.status_refused, 1);
            tracing::warn!(relay, error = %e, "Relay status message dropped.");
        }
    }
}

/// Verifies payloads in arrival order until the inbound channel closes.
pub(crate) fn verifier_thread(
    rx: Receiver<Inbound>,
    tx: SyncSender<Verified>,
    mut keyring: Keyring,
    min_difficulty: u8,
    shared: Arc<Shared>,
) {
    while let Ok(msg) = rx.recv() {
        let started = Instant::now();
        let item = match verify_payload(&mut keyring, min_difficulty, &msg.payload) {
            Ok(block) => {
                if let Some(t) = topics::relay_of_blocks_topic(&msg.arrival.topic) {
                    if t != block.header.relay_id {
                        add(&shared.metrics.topic_mismatch, 1);
                        tracing::warn!(topic = %msg.arrival.topic, relay = block.header.relay_id, "Block signed by another relay than its topic names.");
                    }
                }
                Ingest::Block {
                    arrival: msg.arrival,
                    block,
                }
            }
            Err(rej) => {
                // The writer logs refusals once stored, rate-limited per kind.
                tracing::debug!(
                    reason = rej.kind.as_str(),
                    relay = rej.header.map(|h| h.relay_id),
                    height = rej.header.map(|h| h.height),
                    topic = %msg.arrival.topic,
                    bytes = msg.payload.len(),
                    "Payload refused: {}.", rej.detail
                );
                Ingest::Quarantine(QuarantineItem {
                    arrival: msg.arrival,
                    kind: rej.kind,
                    detail: rej.detail,
                    header: rej.header,
                    raw: msg.payload,
                })
            }
        };
        add(
            &shared.metrics.verify_micros,
            started.elapsed().as_micros() as u64,
        );
        if tx
            .send(Verified {
                token: msg.token,
                item,
            })
            .is_err()
        {
            break;
        }
    }
    tracing::debug!("Verifier ended.");
}

/// Logs refusals at most once a second per kind, with the number of lines
/// left out since the last one: a flood of junk cannot flood the log (every
/// refusal is counted in the metrics regardless).
pub(crate) type RefusalLog = gridpow_common::throttle::LogThrottle<RejectKind>;

/// Logs refusal `kind` of `item` if `log` admits it now.
fn log_refusal(log: &mut RefusalLog, item: &Ingest, kind: RejectKind, kept: bool) {
    let Some(suppressed) = log.admit(kind, Instant::now()) else {
        return;
    };
    let (relay, height) = item
        .header()
        .map_or((None, None), |h| (Some(h.relay_id), Some(h.height)));
    let (topic, bytes, detail) = match item {
        Ingest::Quarantine(q) => (q.arrival.topic.as_str(), q.raw.len(), q.detail.as_str()),
        Ingest::Block { arrival, block } => (arrival.topic.as_str(), block.raw.len(), ""),
    };
    if kind == RejectKind::Fork {
        tracing::error!(
            reason = kind.as_str(),
            relay,
            height,
            topic,
            bytes,
            kept,
            suppressed,
            "Validly signed fork refused: the relay's key signed two histories; rotate it."
        );
    } else {
        tracing::info!(
            reason = kind.as_str(),
            relay,
            height,
            topic,
            bytes,
            kept,
            suppressed,
            detail,
            "Payload refused."
        );
    }
}

/// Settings of the writer thread.
pub(crate) struct WriterSettings {
    pub max_batch_readings: usize,
    pub max_batch_blocks: usize,
    pub server_id: u32,
    pub signing_key: SigningKey,
    pub silent_after_ms: u64,
    /// The `[home_assistant]` export's queue, when enabled.
    pub export: Option<crate::export::ExportQueue>,
}

/// How often the writer prunes quarantine rows past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Commits batches until the verified channel closes; after each commit hands
/// receipts and ACKs to the acker. Prunes old quarantine rows at start and
/// every [`PRUNE_EVERY`]. Stops for good on a database fault no retry can
/// cure (see [`commit_until_done`]).
pub(crate) fn writer_thread(
    mut store: Box<dyn Store>,
    rx: Receiver<Verified>,
    acks: mpsc::UnboundedSender<AckJob>,
    settings: WriterSettings,
    shared: Arc<Shared>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut housekeeping = Housekeeping::default();
    let mut refusals = RefusalLog::default();
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                housekeeping.run(&mut *store, &settings, &shared);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let (tokens, items) = next_batch(first, &rx, &settings);
        let result = match commit_until_done(&mut *store, &items, &shared, &stopping) {
            Committed::Yes(r) => r,
            Committed::NotNow => continue,
            Committed::Never => return,
        };
        record_commit(&shared, &result);
        if let Some(export) = &settings.export {
            export.committed(items.iter().zip(&result.outcomes).filter_map(|(item, o)| {
                match (o, item) {
                    (Outcome::Stored { .. }, Ingest::Block { block, .. }) => Some(block),
                    _ => None,
                }
            }));
        }
        let mut repeats = Vec::new();
        for ((token, item), outcome) in tokens.into_iter().zip(&items).zip(&result.outcomes) {
            count_outcome(&shared, &mut refusals, item, outcome);
            if let (Outcome::Stored { repeated, .. }, Some(h)) = (outcome, item.header()) {
                if !repeated.is_empty() {
                    repeats.push((*h, repeated));
                }
            }
            let receipt = signed_receipt(item, outcome, result.log_size, &settings);
            if acks.send(AckJob { token, receipt }).is_err() {
                tracing::warn!("Acknowledgement task gone; stopping the writer.");
                return;
            }
        }
        // Compared after the receipts are on their way: they do not wait on it.
        for (h, repeated) in repeats {
            check_equivocation(&mut *store, &shared, &h, repeated);
        }
        if housekeeping.due() {
            housekeeping.run(&mut *store, &settings, &shared);
        }
    }
    tracing::debug!("Writer ended.");
}

/// The first item and whatever else waits, up to the batch bounds.
fn next_batch(
    first: Verified,
    rx: &Receiver<Verified>,
    settings: &WriterSettings,
) -> (Vec<AckToken>, Vec<Ingest>) {
    let mut readings = first.item.reading_count();
    let mut tokens = vec![first.token];
    let mut items = vec![first.item];
    while items.len() < settings.max_batch_blocks && readings < settings.max_batch_readings {
        match rx.try_recv() {
            Ok(v) => {
                readings += v.item.reading_count();
                tokens.push(v.token);
                items.push(v.item);
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    (tokens, items)
}

/// How a batch's commit ended.
enum Committed {
    /// Committed.
    Yes(CommitResult),
    /// Not committed because the server is stopping; the broker redelivers.
    NotNow,
    /// Not committed and never will be by this process: the writer stops.
    Never,
}

/// Commits `items`, retrying with back-off while the error is one a retry
/// can cure ([`Remedy::Retry`]). Any other error halts the writer loudly:
/// nothing of the batch was acknowledged, so the broker keeps it for the
/// server that restarts after the operator's fix; `/healthz` reports it.
fn commit_until_done(
    store: &mut dyn Store,
    items: &[Ingest],
    shared: &Shared,
    stopping: &std::sync::atomic::AtomicBool,
) -> Committed {
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let e = match store.commit(items, gridpow_common::wall_ms()) {
            Ok(r) => {
                add(&shared.metrics.commits, 1);
                add(
                    &shared.metrics.commit_micros,
                    started.elapsed().as_micros() as u64,
                );
                return Committed::Yes(r);
            }
            Err(e) => e,
        };
        add(&shared.metrics.commit_failures, 1);
        if stopping.load(Ordering::SeqCst) {
            tracing::error!(error = %e, blocks = items.len(), "Commit failed during shutdown; the broker will redeliver.");
            return Committed::NotNow;
        }
        if e.remedy() != Remedy::Retry {
            tracing::error!(error = %e, blocks = items.len(), "Commit failed and no retry can cure it; the writer stops. Fix the database, then restart the server.");
            let mut halted = match shared.writer_halted.lock() {
                Ok(h) => h,
                Err(p) => p.into_inner(),
            };
            *halted = Some(e.to_string());
            return Committed::Never;
        }
        tracing::warn!(error = %e, blocks = items.len(), retry_in_ms = delay.as_millis() as u64, "Commit failed; retrying.");
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Counts what a commit reports for the whole batch.
fn record_commit(shared: &Shared, result: &CommitResult) {
    shared.set_totals(result.totals);
    add(&shared.metrics.log_append_micros, result.log_micros);
    if let Some(size) = result.log_size {
        crate::transparency::appended(&shared.log, size);
    }
    add(
        &shared.metrics.quarantine_dropped,
        result.quarantine_dropped,
    );
    add(
        &shared.metrics.quarantine_truncated,
        result.quarantine_truncated,
    );
    for a in &result.alerts {
        shared.count_alert(a.kind, a.count);
    }
}

/// Counts (and for a refusal, logs) what the store did with one item.
fn count_outcome(shared: &Shared, refusals: &mut RefusalLog, item: &Ingest, outcome: &Outcome) {
    match outcome {
        Outcome::Stored {
            new_readings,
            duplicate_readings,
            ..
        } => {
            add(&shared.metrics.blocks_stored, 1);
            add(&shared.metrics.readings_stored, *new_readings);
            add(&shared.metrics.readings_duplicate, *duplicate_readings);
        }
        Outcome::AlreadyStored { .. } => add(&shared.metrics.blocks_duplicate, 1),
        Outcome::Quarantined { kind, id } => {
            shared.count_quarantine(*kind);
            log_refusal(refusals, item, *kind, *id != 0);
        }
    }
}

/// The signed commit receipt for an item whose header parsed (§10), with
/// its topic; `None` for garbage, which names no relay.
fn signed_receipt(
    item: &Ingest,
    outcome: &Outcome,
    log_size: Option<u64>,
    settings: &WriterSettings,
) -> Option<(String, Vec<u8>)> {
    let h = item.header()?;
    let repr = ReceiptRepr {
        status: outcome.receipt_status(),
        relay_id: h.relay_id,
        height: h.height,
        block_hash: match item {
            Ingest::Block { block, .. } => block.hash,
            Ingest::Quarantine(_) => h.hash(&RustCrypto),
        },
        server_id: settings.server_id,
        time_ms: gridpow_common::wall_ms(),
        log: outcome.log_position(log_size),
    };
    match repr.to_signed_bytes(&RustCrypto, &settings.signing_key) {
        Ok(bytes) => Some((topics::receipts(h.relay_id), bytes.to_vec())),
        Err(e) => {
            // The store's outcomes always fit; a receipt that cannot be
            // signed is logged, and the relay offers the block again.
            tracing::error!(error = %e, ?repr, "no receipt: the outcome has no consistent log position");
            None
        }
    }
}

/// The writer's periodic chores between commits: prune the quarantine,
/// sweep for silent meters, refresh the totals.
#[derive(Default)]
struct Housekeeping {
    last: Option<Instant>,
    last_prune: Option<Instant>,
}

impl Housekeeping {
    /// Whether a second has passed since the last run.
    fn due(&self) -> bool {
        self.last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    fn run(&mut self, store: &mut dyn Store, settings: &WriterSettings, shared: &Shared) {
        self.last = Some(Instant::now());
        let now = gridpow_common::wall_ms();
        if self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.last_prune = Some(Instant::now());
            match store.prune_quarantine(now) {
                Ok(0) => {}
                Ok(n) => {
                    add(&shared.metrics.quarantine_pruned, n);
                    tracing::info!(rows = n, "Old quarantine rows pruned.");
                }
                Err(e) => tracing::warn!(error = %e, "Pruning the quarantine failed."),
            }
        }
        match store.sweep_silent(now, settings.silent_after_ms, shared.started_ms) {
            Ok(raised) => {
                for a in raised {
                    shared.count_alert(a.kind, a.count);
                    if let (Some(export), gridpow_store::AlertKind::Silent) =
                        (&settings.export, a.kind)
                    {
                        export.silent(&a.subject);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Silent-meter sweep failed."),
        }
        match store.totals() {
            Ok(t) => shared.set_totals(t),
            Err(e) => tracing::warn!(error = %e, "Reading database totals failed."),
        }
    }
}

/// Compares the readings a just-committed block repeated with the stored
/// ones and raises an alert for each that differs (§9.5). A failure here is
/// logged, not retried: the evidence is committed, and `verify-ledger` finds
/// every equivocation again.
fn check_equivocation(
    store: &mut dyn Store,
    shared: &Shared,
    h: &gridpow_proto::wire::BlockHeaderRepr,
    repeated: &[gridpow_store::ReadingRow],
) {
    let found = match gridpow_store::equivocation::find(store, repeated) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, relay = h.relay_id, height = h.height, "Comparing repeated readings failed.");
            return;
        }
    };
    for q in found {
        let alert = q.alert(h.relay_id, h.height);
        tracing::error!(
            meter = q.meter_id,
            epoch = q.epoch,
            seq = q.seq,
            relay = h.relay_id,
            height = h.height,
            "Meter equivocates: {}",
            alert.message
        );
        match store.raise_alert(&alert, gridpow_common::wall_ms()) {
            Ok(a) => shared.count_alert(a.kind, a.count),
            Err(e) => {
                tracing::warn!(error = %e, meter = q.meter_id, "Raising the equivocation alert failed.")
            }
        }
    }
}

/// Publishes receipts and acknowledges messages, in commit order.
pub(crate) async fn acker_task(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<AckJob>,
    shared: Arc<Shared>,
) {
    while let Some(job) = rx.recv().await {
        if let Some((topic, bytes)) = job.receipt {
            match client.publish(topic, QoS::AtLeastOnce, false, bytes).await {
                Ok(()) => add(&shared.metrics.receipts_published, 1),
                Err(e) => tracing::warn!(error = %e, "Receipt could not be queued."),
            }
        }
        if job.token.qos == QoS::AtMostOnce {
            continue;
        }
        if job.token.generation != shared.generation.load(Ordering::SeqCst) {
            add(&shared.metrics.acks_stale, 1);
            continue;
        }
        match client.ack(&job.token.publish()).await {
            Ok(()) => add(&shared.metrics.acks_sent, 1),
            Err(e) => tracing::warn!(error = %e, "Acknowledgement could not be queued."),
        }
    }
    tracing::debug!("Acknowledgement task ended.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_log_admits_one_line_per_second_per_kind_and_counts_the_rest() {
        let log = RefusalLog::default();
        let t = Instant::now();
        assert_eq!(log.admit(RejectKind::BadTag, t), Some(0));
        for i in 1..=999 {
            let at = t + Duration::from_micros(i * 900);
            assert_eq!(log.admit(RejectKind::BadTag, at), None);
        }
        assert_eq!(
            log.admit(RejectKind::Fork, t + Duration::from_millis(10)),
            Some(0),
            "another kind has its own allowance"
        );
        assert_eq!(
            log.admit(RejectKind::BadTag, t + Duration::from_secs(1)),
            Some(999)
        );
        assert_eq!(
            log.admit(RejectKind::BadTag, t + Duration::from_millis(1500)),
            None
        );
        assert_eq!(
            log.admit(RejectKind::BadTag, t + Duration::from_secs(2)),
            Some(1)
        );
    }
}
