//! The transparency log's service side (docs/ledger.md). The store appends
//! every stored block to the log inside the block's transaction; this module
//! signs checkpoints of it (C2SP tlog-checkpoint, with the note key
//! `keys_dir/log-note.key`) after new blocks (at most every
//! `log.checkpoint_min_gap_ms`) and at least every `log.checkpoint_interval_s`,
//! asks the configured witnesses to cosign each one (C2SP tlog-witness),
//! keeps the newest for the HTTP API and publishes it retained on MQTT
//! (`gridpow/v1/log/checkpoint`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use gridpow_store::{ReadStore, StoreError, StoreHashReader};
use gridpow_tlog::{CosignatureVerifier, NoteSigner};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::LogConfig;
use crate::metrics::{add, get, Shared};

/// A signed checkpoint as served.
#[derive(Clone, Debug)]
pub struct SignedCheckpoint {
    /// Entries in the tree it heads.
    pub size: u64,
    /// Its root hash.
    pub root: [u8; 32],
    /// The signed note: the log's signature and the cosignatures gathered.
    pub note: String,
    /// Valid cosignatures it carries.
    pub cosignatures: usize,
    /// When it was signed, Unix ms.
    pub signed_ms: u64,
}

/// The log's state for the API, `/metrics` and the dashboard.
#[derive(Debug, Default)]
pub struct LogStatus {
    /// The log's size after this server's newest commit that appended to it.
    pub appended: AtomicU64,
    newest: RwLock<Option<Arc<SignedCheckpoint>>>,
    /// Checkpoints signed by this process.
    pub checkpoints_signed: AtomicU64,
    /// Witness requests that brought no cosignature (unreachable, refused, bad answer).
    pub witness_failures: AtomicU64,
    /// Cosignatures the configuration asks for.
    pub min_cosignatures: AtomicU64,
    /// Log proofs sent to relays over MQTT (§16).
    pub relay_proofs_sent: AtomicU64,
    /// Relay proof requests refused (malformed, another relay's id, a size
    /// beyond the log) or dropped (queue full).
    pub relay_proof_requests_refused: AtomicU64,
}

/// The log as the dashboard and `/api/v1/stats` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LogStats {
    /// Entries in the newest checkpoint's tree.
    pub size: u64,
    /// Its root hash, hex.
    pub root: String,
    /// When it was signed, Unix ms.
    pub signed_ms: u64,
    /// Valid cosignatures it carries.
    pub cosignatures: usize,
    /// Cosignatures the configuration asks for (`log.min_cosignatures`).
    pub min_cosignatures: u64,
    /// Whether it carries fewer cosignatures than asked for.
    pub under_witnessed: bool,
}

impl LogStatus {
    /// The newest signed checkpoint, if one was signed yet.
    pub fn newest(&self) -> Option<Arc<SignedCheckpoint>> {
        match self.newest.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_newest(&self, c: SignedCheckpoint) {
        let c = Some(Arc::new(c));
        match self.newest.write() {
            Ok(mut g) => *g = c,
            Err(p) => *p.into_inner() = c,
        }
    }

    /// What the dashboard shows.
    pub fn stats(&self) -> Option<LogStats> {
        let c = self.newest()?;
        let min = get(&self.min_cosignatures);
        Some(LogStats {
            size: c.size,
            root: hex::encode(c.root),
            signed_ms: c.signed_ms,
            cosignatures: c.cosignatures,
            min_cosignatures: min,
            under_witnessed: (c.cosignatures as u64) < min,
        })
    }
}

/// Why the log service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogServiceError {
    /// The note key or a witness key is unusable with the configured origin.
    #[error("transparency log key: {0}")]
    Key(#[from] gridpow_tlog::Error),
}

/// A witness and what it last cosigned.
struct WitnessPeer {
    url: String,
    verifier: CosignatureVerifier,
    /// The tree size it holds for this log, as far as we know (0: none yet).
    known_size: u64,
}

/// Signs checkpoints and gathers cosignatures; runs on its own task.
pub(crate) struct LogService {
    origin: String,
    signer: NoteSigner,
    witnesses: Vec<WitnessPeer>,
    min_gap: Duration,
    interval: Duration,
}

impl LogService {
    /// The service for `cfg`, signing with the note key seed `seed`.
    pub(crate) fn new(cfg: &LogConfig, seed: [u8; 32]) -> Result<LogService, LogServiceError> {
        let signer = NoteSigner::from_seed(&cfg.origin, seed)?;
        let mut witnesses = Vec::with_capacity(cfg.witnesses.len());
        for w in &cfg.witnesses {
            witnesses.push(WitnessPeer {
                url: w.url.trim_end_matches('/').to_string(),
                verifier: CosignatureVerifier::from_vkey(&w.vkey)?,
                known_size: 0,
            });
        }
        Ok(LogService {
            origin: cfg.origin.clone(),
            signer,
            witnesses,
            min_gap: Duration::from_millis(cfg.checkpoint_min_gap_ms),
            interval: Duration::from_secs(cfg.checkpoint_interval_s),
        })
    }

    /// The note key's verifier key (C2SP vkey): what auditors, relays and
    /// customers trust.
    pub(crate) fn vkey(&self) -> String {
        self.signer.vkey()
    }

    /// Signs a checkpoint of the log as `store` holds it now and gathers
    /// cosignatures (blocking: database reads and witness requests).
    fn checkpoint(
        &mut self,
        store: &mut dyn ReadStore,
        shared: &Shared,
    ) -> Result<SignedCheckpoint, String> {
        let size = store.log_size().map_err(|e| e.to_string())?;
        let reader = StoreHashReader::new(store);
        let root = gridpow_tlog::proofs::tree_root(&reader, size).map_err(|e| {
            reader
                .take_error()
                .map_or_else(|| e.to_string(), |s: StoreError| s.to_string())
        })?;
        let mut note = gridpow_tlog::sign_checkpoint(&self.signer, &self.origin, size, &root)
            .map_err(|e| e.to_string())?;
        add(&shared.log.checkpoints_signed, 1);
        let body = gridpow_tlog::Checkpoint::new(&self.origin, size, root)
            .body()
            .map_err(|e| e.to_string())?;
        let answers = ask_witnesses(&mut self.witnesses, &reader, &note, &body, size);
        let mut cosignatures = 0;
        for (w, answer) in self.witnesses.iter().zip(answers) {
            match answer {
                Ok(line) => match gridpow_tlog::add_cosignature(&note, &line) {
                    Ok(n) => {
                        note = n;
                        cosignatures += 1;
                    }
                    Err(e) => {
                        add(&shared.log.witness_failures, 1);
                        tracing::warn!(witness = %w.url, error = %e, "Witness cosignature could not be added.");
                    }
                },
                Err(e) => {
                    add(&shared.log.witness_failures, 1);
                    tracing::warn!(witness = %w.url, size, error = %e, "Witness did not cosign the checkpoint.");
                }
            }
        }
        Ok(SignedCheckpoint {
            size,
            root,
            note,
            cosignatures,
            signed_ms: gridpow_common::wall_ms(),
        })
    }
}

/// Asks every witness to cosign `note` (tree `size`), all at once so a slow
/// one delays the checkpoint by its own time only: per witness, the
/// cosignature line(s) it returned, checked. A witness that holds another
/// size than we thought answers 409 with its size; we ask once more with a
/// proof from there. Requests are built here (the store is not shared
/// between threads); only the HTTP exchanges run in parallel.
fn ask_witnesses(
    witnesses: &mut [WitnessPeer],
    reader: &dyn tlog_tiles::HashReader,
    note: &str,
    body: &str,
    size: u64,
) -> Vec<Result<String, String>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut answers: Vec<Result<String, String>> =
        vec![Err("it kept answering 409".into()); witnesses.len()];
    let mut pending: Vec<usize> = (0..witnesses.len()).collect();
    for _attempt in 0..2 {
        let mut requests = Vec::new();
        for &i in &pending {
            let old = witnesses[i].known_size.min(size);
            match gridpow_tlog::witness::add_checkpoint_request(reader, old, note) {
                Ok(r) => requests.push((i, r)),
                Err(e) => answers[i] = Err(format!("building the request from size {old}: {e}")),
            }
        }
        let replies: Vec<(usize, HttpReply)> = std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .iter()
                .map(|(i, request)| {
                    let (agent, url) = (agent.clone(), &witnesses[*i].url);
                    (
                        *i,
                        scope.spawn(move || post_checkpoint(&agent, url, request)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    (
                        i,
                        h.join()
                            .unwrap_or_else(|_| Err("the request thread panicked".into())),
                    )
                })
                .collect()
        });
        pending.clear();
        for (i, reply) in replies {
            let w = &mut witnesses[i];
            answers[i] = match reply {
                Err(e) => Err(e),
                Ok((200, text)) => {
                    let good: Vec<String> = text
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(|l| format!("{l}\n"))
                        .filter(|l| w.verifier.verify_line(body, l).is_ok())
                        .collect();
                    if good.is_empty() {
                        Err("answered 200 without a valid cosignature from its key".into())
                    } else {
                        w.known_size = size;
                        Ok(good.concat())
                    }
                }
                Ok((409, text)) => match gridpow_tlog::witness::parse_conflict_size(&text) {
                    Err(e) => Err(format!("409 with a bad body: {e}")),
                    Ok(theirs) if theirs > size => Err(format!(
                        "it holds a larger tree ({theirs}) than this log's {size}: was the log rolled back?"
                    )),
                    Ok(theirs) => {
                        w.known_size = theirs;
                        pending.push(i);
                        Err("it kept answering 409".into())
                    }
                },
                Ok((s, text)) => Err(format!("HTTP {s}: {}", text.trim())),
            };
        }
        if pending.is_empty() {
            break;
        }
    }
    answers
}

/// A witness's HTTP status and body, or why there is none.
type HttpReply = Result<(u16, String), String>;

/// One tlog-witness `add-checkpoint` exchange: the status and body.
fn post_checkpoint(agent: &ureq::Agent, url: &str, request: &str) -> HttpReply {
    let mut response = agent
        .post(format!("{url}/add-checkpoint"))
        .send(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, text))
}

/// Signs checkpoints until `stop` turns true: after new blocks (no sooner
/// than `min_gap` after the previous one) and every `interval` regardless.
pub(crate) async fn checkpoint_task(
    mut service: LogService,
    db: String,
    shared: Arc<Shared>,
    mqtt: AsyncClient,
    mut stop: watch::Receiver<bool>,
) {
    let mut store: Option<Box<dyn ReadStore>> = None;
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let due = match last {
            None => true,
            Some((size, at)) => {
                let appended = get(&shared.log.appended);
                (appended > size && at.elapsed() >= service.min_gap)
                    || at.elapsed() >= service.interval
            }
        };
        if due {
            let db = db.clone();
            let shared2 = shared.clone();
            let taken = store.take();
            let outcome = tokio::task::spawn_blocking(move || {
                let mut s = match taken {
                    Some(s) => s,
                    None => match gridpow_store::open_reader(&db) {
                        Ok(s) => s,
                        Err(e) => return (service, None, Err(e.to_string())),
                    },
                };
                let r = service.checkpoint(&mut *s, &shared2);
                (service, Some(s), r)
            })
            .await;
            let Ok((back, kept, result)) = outcome else {
                tracing::error!("The checkpoint signer panicked; no more checkpoints.");
                return;
            };
            service = back;
            match result {
                Ok(c) => {
                    store = kept;
                    last = Some((c.size, Instant::now()));
                    publish(&mqtt, &c).await;
                    if (c.cosignatures as u64) < get(&shared.log.min_cosignatures) {
                        tracing::warn!(
                            size = c.size,
                            cosignatures = c.cosignatures,
                            wanted = get(&shared.log.min_cosignatures),
                            "Checkpoint carries fewer cosignatures than log.min_cosignatures."
                        );
                    }
                    tracing::debug!(
                        size = c.size,
                        cosignatures = c.cosignatures,
                        "Checkpoint signed."
                    );
                    shared.log.set_newest(c);
                }
                Err(e) => {
                    // A fresh reader next time; retry after the gap.
                    tracing::warn!(error = %e, "Could not sign a checkpoint; retrying.");
                    last = Some((last.map_or(0, |l| l.0), Instant::now()));
                }
            }
        }
        let nap = service.min_gap.min(Duration::from_millis(250));
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

async fn publish(mqtt: &AsyncClient, c: &SignedCheckpoint) {
    if let Err(e) = mqtt
        .publish(
            gridpow_common::topics::LOG_CHECKPOINT,
            QoS::AtLeastOnce,
            true,
            c.note.clone().into_bytes(),
        )
        .await
    {
        tracing::warn!(error = %e, "Could not queue the checkpoint for MQTT.");
    }
}

/// Marks the log as appended to `size` by a commit of this server.
pub(crate) fn appended(status: &LogStatus, size: u64) {
    status.appended.fetch_max(size, Ordering::Relaxed);
}

/// A relay's log proof request as it came off MQTT (§16).
#[derive(Debug)]
pub(crate) struct ProofRequestMsg {
    /// The relay its topic names.
    pub relay: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Room for proof requests waiting for the prover; more are dropped and
/// counted (a relay asks one at a time, so this only fills under abuse).
pub(crate) const PROOF_QUEUE: usize = 256;

/// Answers relays' log proof requests (§16) from the stored log, one at a
/// time on a reader of its own, and publishes each proof on the relay's
/// proof topic. Requests that name another relay than their topic, parse
/// badly or reach beyond the stored log are refused, counted and logged.
pub(crate) async fn relay_proof_task(
    db: String,
    shared: Arc<Shared>,
    mqtt: AsyncClient,
    mut requests: tokio::sync::mpsc::Receiver<ProofRequestMsg>,
) {
    let mut store: Option<Box<dyn ReadStore>> = None;
    // A relay flooding bad requests is counted, and logged once a minute.
    let refusals = gridpow_common::throttle::LogThrottle::<u32>::new(Duration::from_secs(60));
    let refuse_request = |relay: u32, why: &str| {
        add(&shared.log.relay_proof_requests_refused, 1);
        if let Some(left_out) = refusals.admit(relay, Instant::now()) {
            tracing::warn!(relay, reason = why, left_out, "Log proof request refused.");
        }
    };
    while let Some(msg) = requests.recv().await {
        let req = match gridpow_proto::wire::LogProofRequest::parse(&msg.payload) {
            Ok(r) if r.relay_id == msg.relay => r,
            Ok(r) => {
                refuse_request(msg.relay, &format!("names relay {}", r.relay_id));
                continue;
            }
            Err(e) => {
                refuse_request(msg.relay, &e.to_string());
                continue;
            }
        };
        let db2 = db.clone();
        let taken = store.take();
        let answered = tokio::task::spawn_blocking(move || {
            let mut s = match taken {
                Some(s) => s,
                None => gridpow_store::open_reader(&db2).map_err(|e| e.to_string())?,
            };
            let r = prove(&mut *s, req);
            Ok::<_, String>((s, r))
        })
        .await;
        let proof = match answered {
            Ok(Ok((s, r))) => {
                store = Some(s);
                r
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the prover panicked".to_string()),
        };
        match proof {
            Ok(bytes) => {
                let topic = gridpow_common::topics::log_proofs(msg.relay);
                match mqtt.publish(topic, QoS::AtMostOnce, false, bytes).await {
                    Ok(()) => {
                        add(&shared.log.relay_proofs_sent, 1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, relay = msg.relay, "Could not queue a log proof for MQTT.")
                    }
                }
            }
            Err(e) => refuse_request(msg.relay, &e),
        }
    }
}

/// The proof message answering `req` from the stored log.
fn prove(
    store: &mut dyn ReadStore,
    req: gridpow_proto::wire::LogProofRequest,
) -> Result<Vec<u8>, String> {
    use gridpow_proto::wire::{LogProofKind, MAX_LOG_PROOF_LEN};
    let size = store.log_size().map_err(|e| e.to_string())?;
    if req.second > size {
        return Err(format!(
            "tree size {} is beyond the stored log ({size} entries)",
            req.second
        ));
    }
    let reader = gridpow_store::StoreHashReader::new(store);
    let path = match req.kind {
        LogProofKind::Inclusion => {
            gridpow_tlog::proofs::inclusion_proof(&reader, req.second, req.first)
        }
        LogProofKind::Consistency => {
            gridpow_tlog::proofs::consistency_proof(&reader, req.first, req.second)
        }
    }
    .map_err(|e| {
        reader
            .take_error()
            .map_or_else(|| e.to_string(), |e| e.to_string())
    })?;
    let mut out = vec![0u8; MAX_LOG_PROOF_LEN];
    let n = req.emit_proof(&path, &mut out).map_err(|e| e.to_string())?;
    out.truncate(n);
    Ok(out)
}
