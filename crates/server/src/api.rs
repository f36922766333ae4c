//! The HTTP API (`/api/v1/…`), `/metrics`, `/healthz` and the dashboard at `/`.
//!
//! Access ([`crate::auth`]): `/healthz` is open; `/login`, the OpenAPI
//! description (`/api/v1/openapi.json`, [`ApiDoc`]) and everything else need
//! an allowed `Host`; everything but those two needs a token. Customer
//! tokens reach only `/api/v1/meters/{their meter}/readings` and the proofs of
//! that meter's readings. List endpoints refuse a `limit` above
//! `http.max_page` (400) instead of clamping it, so a client never mistakes a
//! short page for the end. Every error is JSON with a code ([`crate::http_error`]).
//!
//! Queries run on blocking threads against read-only database connections
//! (SQLite in WAL mode lets them read while the writer commits).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware::from_fn;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use gridpow_keys::KeyDir;
use gridpow_proto::crypto::{CryptoProvider, RustCrypto};
use gridpow_proto::merkle::{inclusion_proof, leaf_hash, verify_inclusion, MAX_PROOF_LEN};
use gridpow_proto::wire::block::signing_message;
use gridpow_proto::wire::BlockPacket;
use serde::{Deserialize, Serialize};

use crate::auth::{self, Gate, Principal, Refusal};
use crate::history::{self, FleetWindow, History};
use crate::http_error::HttpRefusal;
use crate::http_error::{json_error, ApiPath, ApiQuery, ErrorBody};
use crate::metrics::Shared;
use gridpow_store::{
    open_reader, FleetSnapshot, MeterFilter, MeterQuery, MeterSort, ReadStore, RelayTraffic,
    StoreError, StoredReading, VoltageBand,
};

const DASHBOARD: &str = include_str!("dashboard.html");
/// Most database readers open at once; a query waits for a free one.
const READERS_MAX: usize = 8;
/// How long a query waits for a free reader before the API answers 503.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the handlers share.
pub(crate) struct ApiState {
    db: String,
    keys: KeyDir,
    shared: Arc<Shared>,
    readers: Mutex<Vec<Box<dyn ReadStore>>>,
    /// One permit per reader that may be open (`READERS_MAX`).
    reader_slots: Arc<tokio::sync::Semaphore>,
    /// The fleet's last hour, sampled by [`sample_history`].
    history: History,
}

impl ApiState {
    /// The server's shared state.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The state, and the task that samples the fleet history (it ends
    /// when the state is dropped).
    pub(crate) fn new(
        db: String,
        keys: KeyDir,
        shared: Arc<Shared>,
        rules: &crate::config::PlausibilityConfig,
    ) -> Arc<Self> {
        let band = VoltageBand::of(rules);
        let state = Arc::new(ApiState {
            db,
            keys,
            shared,
            readers: Mutex::new(Vec::new()),
            reader_slots: Arc::new(tokio::sync::Semaphore::new(READERS_MAX)),
            history: History::new(band),
        });
        spawn_history(&state);
        state
    }

    pub(crate) fn history(&self) -> &History {
        &self.history
    }

    /// Runs `f` with a reader on a blocking thread. At most `READERS_MAX`
    /// readers exist; a query waits up to `READER_WAIT` for one, then fails
    /// with 503 (counted) rather than opening more database connections.
    pub(crate) async fn query<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn ReadStore) -> Result<T, StoreError> + Send + 'static,
    {
        let slot = tokio::time::timeout(READER_WAIT, self.reader_slots.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        let Some(slot) = slot else {
            crate::metrics::add(&self.shared.metrics.http_db_busy, 1);
            tracing::warn!(
                readers = READERS_MAX,
                "No database reader free in time; answering 503."
            );
            return Err(ApiError::Busy("database busy, retry later".into()));
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the reader is back in the pool (also if the request was dropped).
            let _slot = slot;
            let pooled = me.readers.lock().ok().and_then(|mut p| p.pop());
            let mut store = match pooled {
                Some(s) => s,
                None => open_reader(&me.db)?,
            };
            let result = f(&mut *store);
            if let Ok(mut pool) = me.readers.lock() {
                if pool.len() < READERS_MAX {
                    pool.push(store);
                }
            }
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("query task failed: {e}")))?
        .map_err(ApiError::from)
    }
}

impl ApiState {
    /// Whether meter `id` is in the registry or has readings in the
    /// database (readings of a meter since removed from the registry stay
    /// readable).
    async fn meter_known(self: &Arc<Self>, id: u32) -> Result<bool, ApiError> {
        let keys = self.keys.clone();
        let registered = tokio::task::spawn_blocking(move || {
            // A missing registry means no meter is registered yet.
            if !keys.meters_path().exists() {
                return Ok(false);
            }
            keys.meters().map(|r| r.get(id).is_some())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("registry task failed: {e}")))?
        .map_err(|e| ApiError::Internal(format!("reading the meter registry: {e}")))?;
        if registered {
            return Ok(true);
        }
        let stored = self
            .query(move |st| st.meter_readings(id, 0, u64::MAX, 1))
            .await?;
        Ok(!stored.is_empty())
    }
}

/// An API error, answered as JSON `{"error": {"code", "message"}}` with a
/// status code ([`crate::http_error`]).
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 404 with a code naming what is missing (`unknown_meter`, `unknown_reading`).
    NotFound {
        code: &'static str,
        message: String,
    },
    BadRequest(String),
    Internal(String),
    /// Refused by the access rules (already counted and logged).
    Refused(Refusal),
    /// 503 with `Retry-After`: no database reader free in time.
    Busy(String),
    /// 503 with `Retry-After` and a code naming what is not ready yet.
    Unavailable {
        code: &'static str,
        message: String,
    },
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::Refused(r)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound { code, message } => {
                json_error(StatusCode::NOT_FOUND, code, message)
            }
            ApiError::BadRequest(m) => json_error(StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "API request failed.");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
            ApiError::Refused(r) => r.into_response(),
            ApiError::Unavailable { code, message } => {
                let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, code, message);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                r
            }
            ApiError::Busy(m) => {
                let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "database_busy", m);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                r
            }
        }
    }
}

pub(crate) fn router(state: Arc<ApiState>, gate: Arc<Gate>) -> Router {
    // Viewers, operators and admins.
    let mut staff = Router::new()
        .route("/", get(dashboard))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/meters", get(meters))
        .route("/api/v1/relays", get(relays))
        .route("/api/v1/blocks", get(blocks))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/quarantine", get(quarantine))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/fleet/meters", get(fleet_meters))
        .route("/api/v1/fleet/relays", get(fleet_relays))
        .route("/api/v1/blocks/{block_id}/readings", get(block_readings))
        .route("/log/blocks/{index}", get(crate::log_api::block));
    if !gate.metrics_open {
        staff = staff.route("/metrics", get(metrics));
    }
    let staff = staff.route_layer(from_fn(auth::require_staff));
    // Also customers, for their own meter (checked by the handlers).
    let household = Router::new()
        .route("/api/v1/meters/{id}/readings", get(meter_readings))
        .route("/api/v1/readings/{reading_id}/proof", get(proof))
        .route("/api/v1/readings/{reading_id}/log-proof", get(log_proof));
    let signed_in = staff
        .merge(household)
        .route_layer(from_fn(auth::authenticate));
    // The description is documentation, not data: no token, only the host check.
    let mut open = Router::new()
        .route("/login", get(auth::login))
        .route("/api/v1/openapi.json", get(openapi_json))
        // The transparency log is public: auditors, witnesses and customers need no account.
        .route("/log/checkpoint", get(crate::log_api::checkpoint))
        .route("/log/tile/{*rest}", get(crate::log_api::tile))
        .route("/log/proof/inclusion", get(crate::log_api::inclusion))
        .route("/log/proof/consistency", get(crate::log_api::consistency));
    if gate.metrics_open {
        open = open.route("/metrics", get(metrics));
    }
    let host_checked = signed_in.merge(open).route_layer(from_fn(auth::check_host));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(host_checked)
        .fallback(crate::http_error::not_found)
        .method_not_allowed_fallback(crate::http_error::method_not_allowed)
        .layer(Extension(gate))
        .with_state(state)
}

#[utoipa::path(
    get,
    path = "/",
    tag = "gridpow",
    summary = "The live dashboard (HTML)",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The dashboard page", content_type = "text/html"),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody)
    )
)]
async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "gridpow",
    summary = "Liveness: always open",
    responses(
        (status = 200, description = "`{\"status\": \"ok\", \"mqtt_connected\": bool}`", body = serde_json::Value),
        (status = 503, description = "`{\"status\": \"halted\", \"error\": …}`: the writer stopped on a database error no retry can cure; nothing unstored was acknowledged", body = serde_json::Value)
    )
)]
async fn healthz(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    let connected = s
        .shared
        .mqtt_connected
        .load(std::sync::atomic::Ordering::Relaxed);
    let halted = match s.shared.writer_halted.lock() {
        Ok(h) => h.clone(),
        Err(p) => p.into_inner().clone(),
    };
    match halted {
        None => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ok", "mqtt_connected": connected })),
        ),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({ "status": "halted", "mqtt_connected": connected, "error": error }),
            ),
        ),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "gridpow",
    summary = "Prometheus metrics (open without a token when `http.metrics_open`)",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text"),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody)
    )
)]
async fn metrics(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.shared.prometheus(),
    )
}

#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "gridpow",
    summary = "Counters of the server (blocks, readings, rejects, rates)",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Server statistics", body = crate::metrics::ServerStats),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody)
    )
)]
async fn stats(State(s): State<Arc<ApiState>>) -> impl IntoResponse {
    Json(s.shared.stats())
}

#[utoipa::path(
    get,
    path = "/api/v1/meters",
    tag = "gridpow",
    summary = "Every meter with stored readings: last reading, counts, silence",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Meter summaries", body = [gridpow_store::MeterSummary]),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn meters(State(s): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.query(|st| st.meters()).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadingsQuery {
    /// Earliest reading timestamp, Unix ms (default 0).
    from: Option<u64>,
    /// Latest reading timestamp, Unix ms (default: no bound).
    to: Option<u64>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Most readings answered, the newest ones if there are more (at most `http.max_page`).
    limit: Option<usize>,
}

const CSV_HEADER: [&str; 14] = [
    "reading_id",
    "meter_id",
    "epoch",
    "seq",
    "timestamp_ms",
    "voltage_v",
    "current_a",
    "active_power_w",
    "power_factor",
    "frequency_hz",
    "energy_mwh",
    "flags",
    "block_id",
    "leaf",
];

/// The readings as CSV (a header, then one row each; decimals fixed per column).
fn csv(rows: &[StoredReading]) -> Result<String, csv::Error> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(128 + rows.len() * 96));
    w.write_record(CSV_HEADER)?;
    for r in rows {
        let g = &r.reading;
        w.write_record([
            r.id.to_string(),
            r.meter_id.to_string(),
            r.epoch.to_string(),
            r.seq.to_string(),
            g.timestamp_ms.to_string(),
            format!("{:.2}", g.voltage_v()),
            format!("{:.3}", g.current_a()),
            format!("{:.1}", g.active_power_w()),
            format!("{:.4}", g.power_factor()),
            format!("{:.3}", g.frequency_hz()),
            g.energy_mwh.to_string(),
            g.flags.to_string(),
            r.block_id.to_string(),
            r.leaf.to_string(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    // Every field is ASCII: numbers and the header's names.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[utoipa::path(
    get,
    path = "/api/v1/meters/{id}/readings",
    tag = "gridpow",
    summary = "Readings of one meter, by timestamp",
    params(("id" = u32, Path, description = "Meter id"), ReadingsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{meter_id, from, to, count, readings}` (JSON), or CSV with `format=csv`", body = serde_json::Value),
        (status = 400, description = "Malformed id or query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token asking for another meter (`wrong_meter`)", body = ErrorBody),
        (status = 404, description = "The meter is not registered and has no readings (`unknown_meter`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn meter_readings(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    Extension(who): Extension<Principal>,
    ApiPath(id): ApiPath<u32>,
    ApiQuery(q): ApiQuery<ReadingsQuery>,
) -> Result<Response, ApiError> {
    let path = "/api/v1/meters/{id}/readings";
    if !who.may_read_meter(id) {
        return Err(forbidden_meter(&gate, &who, id, path).into());
    }
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(u64::MAX);
    if from > to {
        return Err(ApiError::BadRequest(format!(
            "from ({from}) is after to ({to})"
        )));
    }
    let limit = gate.page(q.limit, gate.max_page, path)?;
    let format = q.format.as_deref().unwrap_or("json");
    if format != "json" && format != "csv" {
        return Err(ApiError::BadRequest(format!(
            "format must be json or csv, not {format:?}"
        )));
    }
    let rows = s
        .query(move |st| st.meter_readings(id, from, to, limit))
        .await?;
    // No rows may mean a quiet meter or a wrong id: only a registered meter
    // (or one with stored readings) answers 200, so a typo is not read as silence.
    if rows.is_empty() && !s.meter_known(id).await? {
        return Err(ApiError::NotFound {
            code: "unknown_meter",
            message: format!("meter {id} is not registered and has no stored readings"),
        });
    }
    if format == "csv" {
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"meter-{id}.csv\""),
            ),
        ];
        let body = csv(&rows).map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?;
        return Ok((headers, body).into_response());
    }
    // The bounds as asked: `to` is null when open, not u64::MAX.
    Ok(Json(serde_json::json!({ "meter_id": id, "from": from, "to": q.to, "count": rows.len(), "readings": rows }))
        .into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/relays",
    tag = "gridpow",
    summary = "Every relay: chain head, gaps, forks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Relay summaries", body = [gridpow_store::RelaySummary]),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn relays(State(s): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.query(|st| st.relays()).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct BlocksQuery {
    /// Only this relay's blocks.
    relay: Option<u32>,
    /// Most blocks answered (default 50, at most `http.max_page`).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/blocks",
    tag = "gridpow",
    summary = "The newest stored blocks",
    params(BlocksQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Blocks, newest first", body = [gridpow_store::BlockSummary]),
        (status = 400, description = "Malformed id or query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn blocks(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    ApiQuery(q): ApiQuery<BlocksQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = gate.page(q.limit, 50, "/api/v1/blocks")?;
    Ok(Json(s.query(move |st| st.blocks(q.relay, limit)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// Most rows answered (default 100, at most `http.max_page`).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "gridpow",
    summary = "The newest plausibility and security alerts",
    params(LimitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Alerts, newest first", body = [gridpow_store::AlertRow]),
        (status = 400, description = "Malformed id or query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn alerts(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = gate.page(q.limit, 100, "/api/v1/alerts")?;
    Ok(Json(s.query(move |st| st.alerts(limit)).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/quarantine",
    tag = "gridpow",
    summary = "The newest refused payloads with their reason",
    params(LimitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Quarantined payloads, newest first", body = [gridpow_store::QuarantineRow]),
        (status = 400, description = "Malformed id or query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn quarantine(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = gate.page(q.limit, 100, "/api/v1/quarantine")?;
    Ok(Json(s.query(move |st| st.quarantine(limit)).await?))
}

/// The voltage band the fleet is judged against (plausibility rules).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Band {
    /// Lowest in-band voltage, V.
    low_v: f64,
    /// Highest in-band voltage, V.
    high_v: f64,
}

/// The fleet now and over the last hour, in fixed windows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Fleet {
    /// Length of a window, ms.
    window_ms: u64,
    /// The voltage band.
    band: Band,
    /// The fleet right now.
    now: FleetSnapshot,
    /// Windows that ended after `since`, oldest first (the last hour at most).
    windows: Vec<FleetWindow>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FleetQuery {
    /// Only windows that ended after this Unix ms (default: the whole hour).
    since: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet",
    tag = "gridpow",
    summary = "The fleet now (power, energy, voltage band) and per 10 s window over the last hour (readings/s, blocks/s)",
    params(FleetQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Fleet now and its history", body = Fleet),
        (status = 400, description = "Malformed query (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn fleet(
    State(s): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<FleetQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let band = s.history.band();
    let now = s.query(move |st| st.fleet_snapshot(band)).await?;
    Ok(Json(Fleet {
        window_ms: crate::history::WINDOW_MS,
        band: Band {
            low_v: band.low_cv as f64 / 100.0,
            high_v: band.high_cv as f64 / 100.0,
        },
        now,
        windows: s.history.since(q.since.unwrap_or(0)),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FleetMetersQuery {
    /// Only meters whose decimal id starts with these digits.
    q: Option<String>,
    /// `all` (default), `silent`, `alerting` or `out_of_band`.
    #[param(value_type = Option<MeterFilter>)]
    filter: Option<MeterFilter>,
    /// `id` (default), `last_seen`, `power`, `voltage`, `energy`, `readings` or `alerts`.
    #[param(value_type = Option<MeterSort>)]
    sort: Option<MeterSort>,
    /// `asc` (default) or `desc`.
    order: Option<String>,
    /// Rows skipped (default 0).
    offset: Option<u64>,
    /// Most rows answered (default 50, at most `http.max_page`).
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet/meters",
    tag = "gridpow",
    summary = "One page of the meter table: search by id prefix, filter, sort",
    params(FleetMetersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of meters: `total`, `matched`, `offset`, `rows`", body = gridpow_store::MeterPage),
        (status = 400, description = "Malformed query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn fleet_meters(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    ApiQuery(q): ApiQuery<FleetMetersQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = gate.page(q.limit, 50, "/api/v1/fleet/meters")?;
    let prefix = q.q.map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
    if let Some(p) = &prefix {
        if p.len() > 10 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!(
                "q must be the first digits of a meter id, not {p:?}"
            )));
        }
    }
    let descending = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "order must be asc or desc, not {other:?}"
            )))
        }
    };
    let query = MeterQuery {
        id_prefix: prefix,
        filter: q.filter.unwrap_or_default(),
        sort: q.sort.unwrap_or_default(),
        descending,
        offset: q.offset.unwrap_or(0),
        limit,
        band: s.history.band(),
    };
    Ok(Json(s.query(move |st| st.meter_page(&query)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TrafficQuery {
    /// The span counted, minutes back from now (default 60, at most 1440).
    minutes: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet/relays",
    tag = "gridpow",
    summary = "Per relay: blocks, frames, readings, readings carried twice and refused payloads over the last minutes, and its own status with radio counters (retransmissions heard)",
    params(TrafficQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Health per relay, by relay id", body = [RelayHealth]),
        (status = 400, description = "Malformed query (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn fleet_relays(
    State(s): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<TrafficQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let minutes = q.minutes.unwrap_or(60);
    if !(1..=1440).contains(&minutes) {
        return Err(ApiError::BadRequest(format!(
            "minutes must be 1 to 1440, not {minutes}"
        )));
    }
    let since = gridpow_common::wall_ms().saturating_sub(minutes * 60_000);
    let traffic = s.query(move |st| st.relay_traffic(since)).await?;
    let mut reported = s.shared.relay_status.all();
    let mut out: Vec<RelayHealth> = traffic
        .into_iter()
        .map(|t| RelayHealth {
            relay_id: t.relay_id,
            stored: Some(t),
            reported: None,
        })
        .collect();
    for r in reported.drain(..) {
        match out.iter_mut().find(|h| h.relay_id == r.relay_id) {
            Some(h) => h.reported = Some(r),
            None => out.push(RelayHealth {
                relay_id: r.relay_id,
                stored: None,
                reported: Some(r),
            }),
        }
    }
    out.sort_by_key(|h| h.relay_id);
    Ok(Json(out))
}

/// A relay's health: what the server stored from it over the span asked
/// for, and what it last said about itself (its retained status message,
/// with its radio counters; as trustworthy as the broker's ACL).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RelayHealth {
    /// The relay.
    relay_id: u32,
    /// Blocks, frames, readings, duplicates and refusals stored or
    /// quarantined over the span (`null`: nothing).
    stored: Option<RelayTraffic>,
    /// Its newest status message (`null`: none received since this server started).
    reported: Option<crate::relay_status::ReportedStatus>,
}

#[utoipa::path(
    get,
    path = "/api/v1/blocks/{block_id}/readings",
    tag = "gridpow",
    summary = "A stored block with the readings it stored (each links to its proof)",
    params(("block_id" = i64, Path, description = "Block row id (`id` of a block)"), LimitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The block and its readings", body = gridpow_store::BlockReadings),
        (status = 400, description = "Malformed id or query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 404, description = "No such block (`unknown_block`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn block_readings(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    ApiPath(block_id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = gate.page(q.limit, 100, "/api/v1/blocks/{block_id}/readings")?;
    match s
        .query(move |st| st.block_readings(block_id, limit))
        .await?
    {
        Some(b) => Ok(Json(b)),
        None => Err(ApiError::NotFound {
            code: "unknown_block",
            message: format!("no block {block_id}"),
        }),
    }
}

/// An RFC 9162 inclusion proof of the frame that carried a reading.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Proof {
    /// The reading as stored.
    reading: StoredReading,
    relay_id: u32,
    height: u64,
    block_id: i64,
    block_hash: String,
    header_hex: String,
    /// The sealed frame (leaf) as stored, hex.
    frame_hex: String,
    leaf_hash: String,
    leaf_index: u32,
    tree_size: u32,
    audit_path: Vec<String>,
    merkle_root: String,
    /// The audit path leads from the leaf hash to the header's Merkle root.
    verified: bool,
    /// The relay's signature over the header verifies with its registered key.
    signature_verified: bool,
}

fn forbidden_meter(gate: &Gate, who: &Principal, meter: u32, path: &str) -> Refusal {
    gate.refuse(
        HttpRefusal::WrongMeter,
        path,
        format!("token {:?} may not read meter {meter}", who.name),
    )
}

#[utoipa::path(
    get,
    path = "/api/v1/readings/{reading_id}/proof",
    tag = "gridpow",
    summary = "An RFC 9162 inclusion proof of the frame that carried a reading",
    params(("reading_id" = i64, Path, description = "Reading id (`id` of a reading)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The proof, checked by the server (`verified`, `signature_verified`)", body = Proof),
        (status = 400, description = "Malformed id or query (`bad_request`), or `limit` above `http.max_page` (`page_too_large`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token asking for another meter (`wrong_meter`)", body = ErrorBody),
        (status = 404, description = "No such reading (`unknown_reading`)", body = ErrorBody),
        (status = 503, description = "No database reader free in time (`database_busy`); retry after `Retry-After`", body = ErrorBody)
    )
)]
async fn proof(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    Extension(who): Extension<Principal>,
    ApiPath(reading_id): ApiPath<i64>,
) -> Result<impl IntoResponse, ApiError> {
    let path = "/api/v1/readings/{reading_id}/proof";
    let (reading, block) = readable_reading(&s, &gate, &who, reading_id, path).await?;
    let f = FrameInBlock::find(&reading, &block)?;
    let (packet, hashes, frame, index) = (&f.packet, &f.hashes, &f.frame, f.index);
    let header = *packet.header();
    let verified = verify_inclusion(
        &RustCrypto,
        &hashes[index],
        index as u64,
        hashes.len() as u64,
        &f.path,
        &header.merkle_root,
    ) && header.hash(&RustCrypto) == block.hash;
    let keys = s.keys.clone();
    let relay_id = header.relay_id;
    let relay_key = tokio::task::spawn_blocking(move || {
        keys.relays()
            .ok()?
            .key_for(relay_id, header.height)?
            .verifying_key()
    })
    .await
    .ok()
    .flatten();
    let message = signing_message(&header.hash(&RustCrypto));
    let signature_verified =
        relay_key.is_some_and(|k| RustCrypto.ed25519_verify(&k, &message, &packet.signature()));
    Ok(Json(Proof {
        reading,
        relay_id: block.relay_id,
        height: block.height,
        block_id: block.id,
        block_hash: hex::encode(block.hash),
        header_hex: hex::encode(packet.header_bytes()),
        frame_hex: hex::encode(frame),
        leaf_hash: hex::encode(hashes[index]),
        leaf_index: reading.leaf,
        tree_size: hashes.len() as u32,
        audit_path: f.path.iter().map(hex::encode).collect(),
        merkle_root: hex::encode(header.merkle_root),
        verified,
        signature_verified,
    }))
}

/// A reading and its block, if the reading exists and `who` may read its meter.
async fn readable_reading(
    s: &Arc<ApiState>,
    gate: &Gate,
    who: &Principal,
    reading_id: i64,
    path: &str,
) -> Result<(StoredReading, gridpow_store::BlockBytes), ApiError> {
    let found = s.query(move |st| st.reading_with_block(reading_id)).await?;
    let Some((reading, block)) = found else {
        return Err(ApiError::NotFound {
            code: "unknown_reading",
            message: format!("no reading {reading_id}"),
        });
    };
    if !who.may_read_meter(reading.meter_id) {
        return Err(forbidden_meter(gate, who, reading.meter_id, path).into());
    }
    Ok((reading, block))
}

/// The frame that carried a reading, in its stored block, with the RFC 9162
/// audit path of its leaf hash to the header's Merkle root.
struct FrameInBlock<'a> {
    packet: BlockPacket<&'a [u8]>,
    hashes: Vec<gridpow_proto::Hash>,
    frame: Vec<u8>,
    index: usize,
    path: Vec<gridpow_proto::Hash>,
}

impl<'a> FrameInBlock<'a> {
    fn find(
        reading: &StoredReading,
        block: &'a gridpow_store::BlockBytes,
    ) -> Result<FrameInBlock<'a>, ApiError> {
        let packet = BlockPacket::new_checked(&block.raw[..]).map_err(|e| {
            ApiError::Internal(format!("stored block {} does not parse: {e}", block.id))
        })?;
        let hashes: Vec<_> = packet.leaves().map(|l| leaf_hash(&RustCrypto, l)).collect();
        let index = reading.leaf as usize;
        let frame = packet
            .leaves()
            .nth(index)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "reading {} names leaf {index} of a {}-leaf block",
                    reading.id,
                    hashes.len()
                ))
            })?;
        let mut path = [[0u8; 32]; MAX_PROOF_LEN];
        let len = inclusion_proof(&RustCrypto, &hashes, index, &mut path)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(FrameInBlock {
            packet,
            hashes,
            frame,
            index,
            path: path[..len].to_vec(),
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/readings/{reading_id}/log-proof",
    tag = "transparency log",
    summary = "A self-contained proof file for a reading: frame → block → transparency log → signed checkpoint",
    description = "The `gridpow-reading-proof/v1` document (docs/ledger.md) that `gridpow check-proof` checks trusting only the log's note key and witness keys. Its schema is that of `gridpow_tlog::reading_proof::ReadingProof`.",
    params(("reading_id" = i64, Path, description = "Reading id (`id` of a reading)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The proof document (JSON)", content_type = "application/json"),
        (status = 400, description = "Malformed id (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token asking for another meter (`wrong_meter`)", body = ErrorBody),
        (status = 404, description = "No such reading (`unknown_reading`)", body = ErrorBody),
        (status = 503, description = "Its block is not under a signed checkpoint yet (`not_yet_checkpointed`, `no_checkpoint`); retry in a moment", body = ErrorBody)
    )
)]
async fn log_proof(
    State(s): State<Arc<ApiState>>,
    Extension(gate): Extension<Arc<Gate>>,
    Extension(who): Extension<Principal>,
    ApiPath(reading_id): ApiPath<i64>,
) -> Result<Json<gridpow_tlog::reading_proof::ReadingProof>, ApiError> {
    use gridpow_tlog::reading_proof::{ProvenReading, ReadingProof, FORMAT};
    let checkpoint = s.shared.log.newest().ok_or_else(|| ApiError::Unavailable {
        code: "no_checkpoint",
        message: "no checkpoint signed yet; retry in a moment".into(),
    })?;
    let path = "/api/v1/readings/{reading_id}/log-proof";
    let (reading, block) = readable_reading(&s, &gate, &who, reading_id, path).await?;
    let size = checkpoint.size;
    let log_index = match block.log_index {
        Some(i) if i < size => i,
        _ => {
            return Err(ApiError::Unavailable {
                code: "not_yet_checkpointed",
                message: format!(
                    "block {} is not under the newest checkpoint ({size} entries) yet; retry in a moment",
                    block.id
                ),
            })
        }
    };
    let f = FrameInBlock::find(&reading, &block)?;
    let (entry, log_path) = s
        .query(move |st| {
            let entry = st
                .log_entries(log_index, log_index + 1)?
                .first()
                .map(|e| e.to_bytes().to_vec());
            let reader = gridpow_store::StoreHashReader::new(st);
            let proof =
                gridpow_tlog::proofs::inclusion_proof(&reader, size, log_index).map_err(|e| {
                    reader.take_error().unwrap_or(StoreError::Corrupt {
                        table: "log_hashes",
                        detail: e.to_string(),
                    })
                })?;
            Ok((entry, proof))
        })
        .await?;
    let entry =
        entry.ok_or_else(|| ApiError::Internal(format!("log entry {log_index} is missing")))?;
    Ok(Json(ReadingProof {
        format: FORMAT.into(),
        reading: ProvenReading::new(
            reading.meter_id,
            reading.epoch,
            reading.seq,
            &reading.reading,
        ),
        frame: f.frame,
        leaf_index: reading.leaf,
        block_path: f.path,
        header: f.packet.header_bytes().to_vec(),
        log_index,
        entry,
        log_path,
        checkpoint: checkpoint.note.clone(),
    }))
}

/// The OpenAPI 3.1 description of this API, generated from the handlers'
/// annotations so it cannot drift from their parameters and answers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "gridpow grid server API",
        description = "Readings, blocks, relays, alerts and proofs of a gridpow grid server. Every error is JSON `{\"error\": {\"code\", \"message\"}}`. Tokens: `Authorization: Bearer <token>` or the `/login` cookie; roles viewer, operator, admin, customer (one meter's readings and proofs only)."
    ),
    paths(
        dashboard,
        healthz,
        metrics,
        stats,
        meters,
        meter_readings,
        relays,
        blocks,
        alerts,
        quarantine,
        fleet,
        fleet_meters,
        fleet_relays,
        block_readings,
        proof,
        log_proof,
        openapi_json,
        crate::auth::login,
        crate::log_api::checkpoint,
        crate::log_api::tile,
        crate::log_api::inclusion,
        crate::log_api::consistency,
        crate::log_api::block
    ),
    components(schemas(
        ErrorBody,
        crate::log_api::InclusionProof,
        crate::log_api::ConsistencyProof,
        crate::http_error::ErrorDetail,
        Proof,
        Fleet,
        FleetWindow,
        FleetSnapshot,
        Band,
        RelayTraffic,
        RelayHealth,
        MeterFilter,
        MeterSort
    )),
    modifiers(&BearerAuth)
)]
pub(crate) struct ApiDoc;

/// Declares the `bearer` scheme the paths' `security` names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (`gridpow tokens create`)"))
                    .build(),
            ),
        );
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "gridpow",
    summary = "This description (OpenAPI 3.1); open, like /healthz, but host-checked",
    responses((status = 200, description = "The OpenAPI document", body = serde_json::Value))
)]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi as _;
    Json(ApiDoc::openapi())
}

/// Fills the history from the database at start, then every window: recounts
/// the last windows and samples the fleet. Ends when the API state is gone
/// (the server stopped).
async fn sample_history(api: std::sync::Weak<ApiState>) {
    let mut first = true;
    loop {
        let now = gridpow_common::wall_ms();
        let boundary = now / history::WINDOW_MS * history::WINDOW_MS;
        let Some(state) = api.upgrade() else { return };
        let history = state.history();
        let from = if first {
            boundary.saturating_sub(history::HISTORY_MS)
        } else {
            boundary.saturating_sub(history::RECOUNT_WINDOWS * history::WINDOW_MS)
        };
        let band = history.band();
        let sampled = state
            .query(move |st| {
                Ok((
                    st.ingest_windows(from, history::WINDOW_MS)?,
                    st.fleet_snapshot(band)?,
                ))
            })
            .await;
        match sampled {
            Ok((counts, fleet)) => {
                history.record(from, boundary, &counts, Some(fleet));
                first = false;
            }
            Err(e) => tracing::warn!(error = ?e, "Could not sample the fleet history."),
        }
        drop(state);
        let next = boundary + history::WINDOW_MS + history::SAMPLE_LAG_MS;
        let wait = next.saturating_sub(gridpow_common::wall_ms());
        tokio::time::sleep(Duration::from_millis(
            wait.clamp(100, history::WINDOW_MS + history::SAMPLE_LAG_MS),
        ))
        .await;
    }
}

/// Starts [`sample_history`] for `state` on the current tokio runtime (without one, as
/// in-process HTTP tests may build the app, the history stays empty).
fn spawn_history(state: &Arc<ApiState>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(sample_history(Arc::downgrade(state)));
    }
}
