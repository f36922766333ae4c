//! Process counters and their exposition, with the database totals, through
//! `prometheus-client` (OpenMetrics text). Counters only (rates are derived by the scraper), except
//! the ledger sizes, which are read from the database after each commit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::http_error::HttpRefusal;
use gridpow_store::plausibility::AlertKind;
use gridpow_store::DbTotals;
use gridpow_store::RejectKind;

/// Counters of this server process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// MQTT publishes received on the blocks subscription.
    pub messages_received: AtomicU64,
    /// Their payload bytes.
    pub bytes_received: AtomicU64,
    /// Blocks this process stored.
    pub blocks_stored: AtomicU64,
    /// Redelivered blocks this process found already stored.
    pub blocks_duplicate: AtomicU64,
    /// Readings this process stored.
    pub readings_stored: AtomicU64,
    /// Readings this process did not store again.
    pub readings_duplicate: AtomicU64,
    /// Payloads this process quarantined, by [`RejectKind`] (index in `RejectKind::ALL`).
    pub quarantined: [AtomicU64; RejectKind::ALL.len()],
    /// Alerts raised, by [`AlertKind`] (index in `AlertKind::ALL`).
    pub alerts: [AtomicU64; AlertKind::ALL.len()],
    /// Blocks whose signed relay id differs from the topic's.
    pub topic_mismatch: AtomicU64,
    /// Refusals only counted, not kept: their relay's quarantine allowance was used up.
    pub quarantine_dropped: AtomicU64,
    /// Quarantined payloads cut to `quarantine.max_payload_bytes`.
    pub quarantine_truncated: AtomicU64,
    /// Quarantine rows pruned after `quarantine.retention_days`.
    pub quarantine_pruned: AtomicU64,
    /// Meter states published by the `[home_assistant]` export.
    pub export_states: AtomicU64,
    /// Discovery documents it published.
    pub export_discovery: AtomicU64,
    /// States and silent-meter events dropped because its queue was full.
    pub export_dropped: AtomicU64,
    /// Database transactions committed.
    pub commits: AtomicU64,
    /// Time those transactions spent on the transparency log, µs.
    pub log_append_micros: AtomicU64,
    /// Time spent in committed transactions, µs.
    pub commit_micros: AtomicU64,
    /// Transactions that failed (retried).
    pub commit_failures: AtomicU64,
    /// Time spent verifying payloads, µs.
    pub verify_micros: AtomicU64,
    /// Commit receipts handed to the MQTT client.
    pub receipts_published: AtomicU64,
    /// Broker acknowledgements sent.
    pub acks_sent: AtomicU64,
    /// Acknowledgements skipped because the connection that delivered the message is gone.
    pub acks_stale: AtomicU64,
    /// MQTT connections established.
    pub mqtt_connects: AtomicU64,
    /// MQTT connection errors.
    pub mqtt_errors: AtomicU64,
    /// Relay status messages kept.
    pub status_received: AtomicU64,
    /// Relay status messages dropped (malformed, another relay's, too many relays).
    pub status_refused: AtomicU64,
    /// HTTP connections accepted and served.
    pub http_connections: AtomicU64,
    /// HTTP connections closed at once because `http.max_connections` were open.
    pub http_connections_refused: AtomicU64,
    /// Failed `accept()` calls on the HTTP listener (e.g. out of file descriptors), retried.
    pub http_accept_errors: AtomicU64,
    /// HTTP connections closed for want of a request head in time, or a TLS handshake.
    pub http_header_timeouts: AtomicU64,
    /// HTTP connections closed after `http.idle_timeout_ms` without a byte.
    pub http_idle_closed: AtomicU64,
    /// TLS handshakes on the HTTP listener that failed.
    pub http_tls_failures: AtomicU64,
    /// HTTP requests refused with 429: the client's rate limit.
    pub http_rate_limited: AtomicU64,
    /// HTTP requests refused with 503: `http.max_concurrent_requests` in flight.
    pub http_overloaded: AtomicU64,
    /// API requests refused with 503: no database reader free in time.
    pub http_db_busy: AtomicU64,
    /// HTTP requests refused by the access rules, by [`HttpRefusal`] (index in `HttpRefusal::ALL`).
    pub http_refused: [AtomicU64; HttpRefusal::ALL.len()],
    /// TLS material reloaded (MQTT identity and CA, HTTPS certificate).
    pub tls_reloads: AtomicU64,
    /// TLS reloads refused: the material in use was kept.
    pub tls_reload_failures: AtomicU64,
}

/// State shared by the pipeline threads, the HTTP API and the handle.
#[derive(Debug, Default)]
pub struct Shared {
    /// Process counters.
    pub metrics: Metrics,
    /// Database totals as of the last commit or refresh.
    pub totals: RwLock<DbTotals>,
    /// Whether the MQTT connection is up.
    pub mqtt_connected: AtomicBool,
    /// Why the writer stopped committing, once a commit failed in a way no
    /// retry can cure (corrupt data, a full disk): see `/healthz`.
    pub writer_halted: std::sync::Mutex<Option<String>>,
    /// Whether the broker confirmed the blocks subscription on the current connection.
    pub mqtt_subscribed: AtomicBool,
    /// Incremented at every MQTT connection; acknowledgements of another generation are skipped.
    pub generation: AtomicU64,
    /// When the server started, Unix ms.
    pub started_ms: u64,
    /// Each relay's newest status message.
    pub relay_status: crate::relay_status::RelayStatuses,
    /// The transparency log: its newest checkpoint and counters.
    pub log: crate::transparency::LogStatus,
    /// The TLS certificates in use and their ends.
    pub certs: crate::certs::ServerCerts,
}

pub(crate) fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Shared {
    /// The totals snapshot.
    pub fn totals(&self) -> DbTotals {
        match self.totals.read() {
            Ok(t) => *t,
            Err(p) => *p.into_inner(),
        }
    }

    /// Replaces the totals snapshot.
    pub fn set_totals(&self, t: DbTotals) {
        match self.totals.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }

    /// Counts a quarantined payload.
    pub fn count_quarantine(&self, kind: RejectKind) {
        if let Some(i) = RejectKind::ALL.iter().position(|k| *k == kind) {
            add(&self.metrics.quarantined[i], 1);
        }
    }

    /// Counts an alert.
    pub fn count_alert(&self, kind: AlertKind, n: u64) {
        if let Some(i) = AlertKind::ALL.iter().position(|k| *k == kind) {
            add(&self.metrics.alerts[i], n);
        }
    }

    /// Counts an HTTP request refused by the access rules.
    pub fn count_http_refusal(&self, kind: HttpRefusal) {
        if let Some(i) = HttpRefusal::ALL.iter().position(|k| *k == kind) {
            add(&self.metrics.http_refused[i], 1);
        }
    }

    /// A snapshot for the API and the handle.
    pub fn stats(&self) -> ServerStats {
        let t = self.totals();
        let m = &self.metrics;
        ServerStats {
            ledger: t,
            messages_received: get(&m.messages_received),
            receipts_published: get(&m.receipts_published),
            readings_stored_by_this_server: get(&m.readings_stored),
            mqtt_connected: self.mqtt_connected.load(Ordering::Relaxed),
            mqtt_subscribed: self.mqtt_subscribed.load(Ordering::Relaxed),
            started_ms: self.started_ms,
            log: self.log.stats(),
            tls_certs: self.certs.report(gridpow_common::tls_reload::now_s()),
        }
    }

    /// The exposition `/metrics` serves (OpenMetrics text, written by
    /// `prometheus-client` from a snapshot of the counters and totals).
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.snapshot()));
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The counters and totals as of now, named and described for the exposition.
    fn snapshot(&self) -> Snapshot {
        let t = self.totals();
        let log = self.log.stats();
        let m = &self.metrics;
        let secs = |c: &AtomicU64| get(c) as f64 / 1e6;
        let counter = |name, help, c: &AtomicU64| (name, help, get(c));
        let counters = vec![
            counter("gridpow_server_messages_received", "MQTT messages received on the blocks subscription.", &m.messages_received),
            counter("gridpow_server_received_bytes", "Payload bytes received.", &m.bytes_received),
            counter("gridpow_server_blocks_stored", "Blocks stored by this process.", &m.blocks_stored),
            counter("gridpow_server_blocks_duplicate", "Redelivered blocks found already stored by this process.", &m.blocks_duplicate),
            counter("gridpow_server_readings_stored", "Readings stored by this process.", &m.readings_stored),
            counter("gridpow_server_readings_duplicate", "Readings not stored again (carried by an earlier frame).", &m.readings_duplicate),
            counter("gridpow_server_topic_mismatch", "Blocks whose signed relay id differs from the topic's.", &m.topic_mismatch),
            counter("gridpow_server_quarantine_dropped", "Refusals counted but not kept: the relay's quarantine allowance was used up.", &m.quarantine_dropped),
            counter("gridpow_server_quarantine_truncated", "Quarantined payloads cut to quarantine.max_payload_bytes.", &m.quarantine_truncated),
            counter("gridpow_server_quarantine_pruned", "Quarantine rows pruned after their retention.", &m.quarantine_pruned),
            counter("gridpow_export_states", "Meter states published by the [home_assistant] export.", &m.export_states),
            counter("gridpow_export_discovery", "Home Assistant discovery documents published.", &m.export_discovery),
            counter("gridpow_export_dropped", "Export events dropped because its queue was full (ingestion never waits for the export).", &m.export_dropped),
            counter("gridpow_server_commits", "Database transactions committed.", &m.commits),
            counter("gridpow_server_commit_failures", "Database transactions that failed and were retried.", &m.commit_failures),
            counter("gridpow_server_receipts_published", "Commit receipts published.", &m.receipts_published),
            counter("gridpow_server_acks_sent", "Broker acknowledgements sent after commit.", &m.acks_sent),
            counter("gridpow_server_acks_stale", "Acknowledgements skipped: the delivering connection is gone.", &m.acks_stale),
            counter("gridpow_server_mqtt_connects", "MQTT connections established.", &m.mqtt_connects),
            counter("gridpow_server_mqtt_errors", "MQTT connection errors.", &m.mqtt_errors),
            counter("gridpow_server_tls_reloads", "TLS material reloaded (SIGHUP or changed files): MQTT identity and CA, HTTPS certificate.", &m.tls_reloads),
            counter("gridpow_server_tls_reload_failures", "TLS reloads refused (unreadable, mismatched or expired files); the material in use was kept.", &m.tls_reload_failures),
            counter("gridpow_server_relay_status_received", "Relay status messages kept (newest per relay on the dashboard).", &m.status_received),
            counter("gridpow_server_relay_status_refused", "Relay status messages dropped: malformed, naming another relay, or too many relays.", &m.status_refused),
            counter("gridpow_server_http_connections", "HTTP connections accepted and served.", &m.http_connections),
            counter("gridpow_server_http_connections_refused", "HTTP connections closed at once: max_connections open.", &m.http_connections_refused),
            counter("gridpow_server_http_accept_errors", "Failed accept() calls on the HTTP listener, retried.", &m.http_accept_errors),
            counter("gridpow_server_http_header_timeouts", "HTTP connections closed: no request head or TLS handshake in time.", &m.http_header_timeouts),
            counter("gridpow_server_http_idle_closed", "HTTP connections closed after idle_timeout_ms without a byte.", &m.http_idle_closed),
            counter("gridpow_server_http_tls_failures", "Failed TLS handshakes on the HTTP listener.", &m.http_tls_failures),
            counter("gridpow_server_http_rate_limited", "HTTP requests refused with 429 (per-client rate limit).", &m.http_rate_limited),
            counter("gridpow_server_http_overloaded", "HTTP requests refused with 503 (max_concurrent_requests in flight).", &m.http_overloaded),
            counter("gridpow_server_http_db_busy", "API requests refused with 503: no database reader free in time.", &m.http_db_busy),
            counter("gridpow_log_checkpoints_signed", "Transparency-log checkpoints signed by this process.", &self.log.checkpoints_signed),
            counter("gridpow_log_witness_failures", "Witness requests that brought no cosignature.", &self.log.witness_failures),
            counter("gridpow_log_relay_proofs_sent", "Log proofs sent to relays over MQTT.", &self.log.relay_proofs_sent),
            counter("gridpow_log_relay_proof_requests_refused", "Relay log proof requests refused (malformed, another relay's id, beyond the log) or dropped (queue full).", &self.log.relay_proof_requests_refused),
        ];
        let seconds = vec![
            (
                "gridpow_server_commit_seconds",
                "Seconds spent in committed transactions.",
                secs(&m.commit_micros),
            ),
            (
                "gridpow_server_log_append_seconds",
                "Seconds of those committed transactions spent appending to the transparency log.",
                secs(&m.log_append_micros),
            ),
            (
                "gridpow_server_verify_seconds",
                "Seconds spent verifying payloads.",
                secs(&m.verify_micros),
            ),
        ];
        let by = |c: &[AtomicU64], labels: Vec<&'static str>| {
            labels.into_iter().zip(c.iter().map(get)).collect()
        };
        let families = vec![
            LabelledCounter {
                name: "gridpow_server_quarantined",
                help: "Payloads quarantined by this process, by reason.",
                label: "reason",
                values: by(&m.quarantined, RejectKind::ALL.iter().map(|k| k.as_str()).collect()),
            },
            LabelledCounter {
                name: "gridpow_server_http_refused",
                help: "HTTP requests refused: no or bad token, wrong role or meter, bad Host, page too large.",
                label: "reason",
                values: by(&m.http_refused, HttpRefusal::ALL.iter().map(|k| k.as_str()).collect()),
            },
            LabelledCounter {
                name: "gridpow_server_alerts",
                help: "Alerts raised by this process, by kind.",
                label: "kind",
                values: by(&m.alerts, AlertKind::ALL.iter().map(|k| k.as_str()).collect()),
            },
        ];
        let ledger = vec![
            (
                "gridpow_ledger_readings",
                "Readings in the database.",
                t.readings_stored,
            ),
            (
                "gridpow_ledger_blocks",
                "Verified blocks in the database.",
                t.blocks_verified,
            ),
            (
                "gridpow_ledger_blocks_rejected",
                "Payloads in quarantine.",
                t.blocks_rejected,
            ),
            (
                "gridpow_ledger_frames_rejected",
                "Blocks refused because of one of their frames.",
                t.frames_rejected,
            ),
            (
                "gridpow_ledger_blocks_duplicate",
                "Redelivered blocks found already stored.",
                t.blocks_duplicate,
            ),
            (
                "gridpow_ledger_readings_duplicate",
                "Readings carried again and stored once: a second relay in range, or a meter's re-sent frame.",
                t.readings_duplicate,
            ),
            ("gridpow_ledger_forks", "Forks quarantined.", t.forks),
            (
                "gridpow_ledger_meters",
                "Meters with stored readings.",
                t.meters,
            ),
            (
                "gridpow_ledger_relays",
                "Relays with stored blocks.",
                t.relays,
            ),
        ];
        let mut gauges = vec![
            (
                "gridpow_ledger_gaps_open",
                "Blocks stored before their parent, still waiting.",
                t.gaps_open,
            ),
            (
                "gridpow_server_mqtt_connected",
                "Whether the MQTT connection is up.",
                u64::from(self.mqtt_connected.load(Ordering::Relaxed)),
            ),
            (
                "gridpow_log_size",
                "Entries in the transparency log's newest signed checkpoint.",
                log.as_ref().map_or(0, |l| l.size),
            ),
            (
                "gridpow_log_cosignatures",
                "Valid witness cosignatures on the newest checkpoint.",
                log.as_ref().map_or(0, |l| l.cosignatures as u64),
            ),
            (
                "gridpow_log_under_witnessed",
                "1 when the newest checkpoint carries fewer cosignatures than log.min_cosignatures.",
                u64::from(log.as_ref().is_some_and(|l| l.under_witnessed)),
            ),
        ];
        let now_s = gridpow_common::tls_reload::now_s();
        let mut certs: Vec<(String, String, i64)> = self
            .certs
            .report(now_s)
            .into_iter()
            .map(|c| (c.role, c.file, c.days_left))
            .collect();
        let relay_certs: Vec<(String, i64)> = self
            .relay_status
            .all()
            .into_iter()
            .filter_map(|r| Some((r.relay_id.to_string(), r.tls_expiry_days?)))
            .collect();
        let warn_days = gridpow_common::tls::EXPIRY_WARNING_DAYS;
        let soon = certs.iter().filter(|c| c.2 < warn_days).count()
            + relay_certs.iter().filter(|c| c.1 < warn_days).count();
        gauges.push((
            "gridpow_tls_certs_expiring_soon",
            "Certificates of this server, and relays' (from their status), ending within 30 days.",
            soon as u64,
        ));
        certs.sort();
        Snapshot {
            counters,
            seconds,
            families,
            ledger,
            gauges,
            certs,
            relay_certs,
        }
    }
}

/// A counter split by one label, in the order of its kinds.
#[derive(Debug)]
struct LabelledCounter {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Vec<(&'static str, u64)>,
}

/// What one scrape reports, in exposition order. Counter names are given
/// without the `_total` suffix, which the encoder appends to the samples.
#[derive(Debug)]
struct Snapshot {
    counters: Vec<(&'static str, &'static str, u64)>,
    seconds: Vec<(&'static str, &'static str, f64)>,
    families: Vec<LabelledCounter>,
    ledger: Vec<(&'static str, &'static str, u64)>,
    gauges: Vec<(&'static str, &'static str, u64)>,
    /// (role, file, whole days left) of each certificate this server uses.
    certs: Vec<(String, String, i64)>,
    /// (relay, whole days left) as each relay's status says.
    relay_certs: Vec<(String, i64)>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, v) in &self.counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(m)?;
        }
        for (name, help, v) in &self.seconds {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(m)?;
        }
        for f in &self.families {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
            for (label, v) in &f.values {
                let labels = [(f.label, *label)];
                ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, v) in &self.ledger {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(*v).encode(m)?;
        }
        for (name, help, v) in &self.gauges {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(*v).encode(m)?;
        }
        if !self.certs.is_empty() {
            let mut m = encoder.encode_descriptor(
                "gridpow_tls_cert_expiry_days",
                "Whole days until a TLS certificate this server uses ends (negative: ended), by role and file.",
                None,
                MetricType::Gauge,
            )?;
            for (role, file, days) in &self.certs {
                let labels = [("role", role.as_str()), ("file", file.as_str())];
                ConstGauge::new(*days).encode(m.encode_family(&labels)?)?;
            }
        }
        if !self.relay_certs.is_empty() {
            let mut m = encoder.encode_descriptor(
                "gridpow_relay_tls_cert_expiry_days",
                "Whole days until the first of a relay's TLS certificates ends, as its status message says.",
                None,
                MetricType::Gauge,
            )?;
            for (relay, days) in &self.relay_certs {
                let labels = [("relay", relay.as_str())];
                ConstGauge::new(*days).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// What the server has done, for the CLI, the API (`/api/v1/stats`) and the dashboard.
/// Ledger fields are database totals (all servers sharing the database, across
/// restarts); the others count this process only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerStats {
    /// Database totals: all servers sharing the database, across restarts.
    #[serde(flatten)]
    pub ledger: DbTotals,
    /// MQTT messages this process received.
    pub messages_received: u64,
    /// Commit receipts this process published.
    pub receipts_published: u64,
    /// Readings this process stored.
    pub readings_stored_by_this_server: u64,
    /// Whether the MQTT connection is up.
    pub mqtt_connected: bool,
    /// Whether the broker confirmed the blocks subscription.
    pub mqtt_subscribed: bool,
    /// When this process started, Unix ms.
    pub started_ms: u64,
    /// The transparency log's newest checkpoint (none signed yet: null).
    pub log: Option<crate::transparency::LogStats>,
    /// The TLS certificates this server uses and their ends (30 days or
    /// fewer left: `ends_soon`).
    pub tls_certs: Vec<crate::certs::CertReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_keeps_names_types_help_and_labels() {
        let shared = Shared::default();
        add(&shared.metrics.messages_received, 3);
        add(&shared.metrics.commit_micros, 1_500_000);
        shared.count_quarantine(RejectKind::ALL[0]);
        let text = shared.prometheus();
        for line in [
            "# HELP gridpow_server_messages_received MQTT messages received on the blocks subscription.",
            "# TYPE gridpow_server_messages_received counter",
            "gridpow_server_messages_received_total 3",
            "gridpow_server_commit_seconds_total 1.5",
            "# TYPE gridpow_server_quarantined counter",
            &format!("gridpow_server_quarantined_total{{reason=\"{}\"}} 1", RejectKind::ALL[0].as_str()),
            "gridpow_ledger_readings_total 0",
            "# TYPE gridpow_ledger_gaps_open gauge",
            "gridpow_ledger_gaps_open 0",
            "gridpow_server_mqtt_connected 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
