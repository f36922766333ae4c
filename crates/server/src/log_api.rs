//! The transparency log over HTTP (docs/ledger.md), under `/log/`:
//!
//! - `checkpoint`: the newest signed checkpoint (C2SP tlog-checkpoint note,
//!   with the witnesses' cosignatures);
//! - `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`: the C2SP
//!   tlog-tiles layout of the tree that checkpoint heads, immutable and
//!   cacheable, so a CDN or a copied directory can serve it too;
//! - `proof/inclusion?index=I[&size=N]`, `proof/consistency?old=M[&new=N]`:
//!   RFC 9162 proofs (JSON, hex hashes) within that tree;
//! - `blocks/<index>` (staff only): the raw block of an entry, for
//!   `gridpow audit --blocks`.
//!
//! Only trees a signed checkpoint heads are served: a client never sees a
//! tree size nobody signed.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridpow_store::StoreHashReader;
use gridpow_tlog::tiles::{encode_entry_bundle, read_tile};
use gridpow_tlog::{TileKind, TilePath};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiState};
use crate::http_error::{ApiPath, ApiQuery, ErrorBody};
use crate::transparency::SignedCheckpoint;

/// Tiles and bundles never change once served (a partial one is named by its width).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn newest(s: &ApiState) -> Result<Arc<SignedCheckpoint>, ApiError> {
    s.shared()
        .log
        .newest()
        .ok_or_else(|| ApiError::Unavailable {
            code: "no_checkpoint",
            message: "no checkpoint signed yet; retry in a moment".into(),
        })
}

/// `GET /log/checkpoint`.
#[utoipa::path(
    get,
    path = "/log/checkpoint",
    tag = "transparency log",
    summary = "The newest signed checkpoint (C2SP tlog-checkpoint note, with witness cosignatures)",
    responses(
        (status = 200, description = "The signed note", content_type = "text/plain"),
        (status = 503, description = "No checkpoint signed yet (`no_checkpoint`)", body = ErrorBody)
    )
)]
pub(crate) async fn checkpoint(State(s): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let c = newest(&s)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        c.note.clone(),
    )
        .into_response())
}

/// `GET /log/tile/{*rest}`: a hash tile or an entry bundle.
#[utoipa::path(
    get,
    path = "/log/tile/{*rest}",
    tag = "transparency log",
    summary = "A C2SP tlog-tiles hash tile (`<L>/<N>[.p/<W>]`) or entry bundle (`entries/<N>[.p/<W>]`) of the newest signed tree",
    params(("*rest" = String, Path, description = "The tile path after `tile/`, e.g. `0/x001/234`, `1/000.p/7`, `entries/000.p/11`")),
    responses(
        (status = 200, description = "The tile's bytes (immutable)", content_type = "application/octet-stream"),
        (status = 404, description = "Not a tile path, or beyond the signed tree (`unknown_tile`)", body = ErrorBody),
        (status = 503, description = "No checkpoint signed yet (`no_checkpoint`)", body = ErrorBody)
    )
)]
pub(crate) async fn tile(
    State(s): State<Arc<ApiState>>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let path = TilePath::parse(&format!("tile/{rest}")).map_err(|e| ApiError::NotFound {
        code: "unknown_tile",
        message: format!("tile/{rest}: {e}"),
    })?;
    let size = newest(&s)?.size;
    if !path.within(size) {
        return Err(ApiError::NotFound {
            code: "unknown_tile",
            message: format!(
                "{} is beyond the signed tree of {size} entries",
                path.to_path()
            ),
        });
    }
    let data = s
        .query(move |st| match path.kind {
            TileKind::Entries => {
                let range = path.entry_range(size).map_err(internal)?;
                let entries = st.log_entries(range.start, range.end)?;
                let bytes: Vec<[u8; 80]> = entries.iter().map(|e| e.to_bytes()).collect();
                encode_entry_bundle(bytes.iter().map(|b| &b[..])).map_err(internal)
            }
            TileKind::Hashes(_) => {
                let reader = StoreHashReader::new(st);
                read_tile(&reader, size, &path)
                    .map_err(|e| reader.take_error().unwrap_or_else(|| internal(e)))
            }
        })
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        data,
    )
        .into_response())
}

fn internal(e: impl std::fmt::Display) -> gridpow_store::StoreError {
    gridpow_store::StoreError::Corrupt {
        table: "log_hashes",
        detail: e.to_string(),
    }
}

/// `proof/inclusion` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionQuery {
    /// The entry.
    index: u64,
    /// The tree size (a signed one); default the newest checkpoint's.
    size: Option<u64>,
}

/// An inclusion proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InclusionProof {
    index: u64,
    size: u64,
    /// The entry's leaf hash, hex.
    leaf_hash: String,
    /// RFC 9162 audit path, hex, deepest first.
    proof: Vec<String>,
}

/// `GET /log/proof/inclusion`.
#[utoipa::path(
    get,
    path = "/log/proof/inclusion",
    tag = "transparency log",
    summary = "RFC 9162 inclusion proof of a log entry in a signed tree",
    params(InclusionQuery),
    responses(
        (status = 200, description = "The proof", body = InclusionProof),
        (status = 400, description = "Index or size outside the newest signed tree (`bad_request`)", body = ErrorBody),
        (status = 503, description = "No checkpoint signed yet (`no_checkpoint`)", body = ErrorBody)
    )
)]
pub(crate) async fn inclusion(
    State(s): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<InclusionQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    let newest = newest(&s)?.size;
    let size = q.size.unwrap_or(newest);
    if size > newest || q.index >= size {
        return Err(ApiError::BadRequest(format!(
            "need index < size <= {newest} (the newest signed tree); got index {} size {size}",
            q.index
        )));
    }
    let index = q.index;
    let (leaf, proof) = s
        .query(move |st| {
            let leaf = st
                .log_entries(index, index + 1)?
                .first()
                .map(|e| gridpow_tlog::proofs::leaf_hash(&e.to_bytes()))
                .ok_or_else(|| internal(format!("entry {index} missing")))?;
            let reader = StoreHashReader::new(st);
            let proof = gridpow_tlog::proofs::inclusion_proof(&reader, size, index)
                .map_err(|e| reader.take_error().unwrap_or_else(|| internal(e)))?;
            Ok((leaf, proof))
        })
        .await?;
    Ok(Json(InclusionProof {
        index,
        size,
        leaf_hash: hex::encode(leaf),
        proof: proof.iter().map(hex::encode).collect(),
    }))
}

/// `proof/consistency` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    /// The older tree size.
    old: u64,
    /// The newer tree size (a signed one); default the newest checkpoint's.
    new: Option<u64>,
}

/// A consistency proof.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConsistencyProof {
    old: u64,
    new: u64,
    /// RFC 9162 consistency proof, hex.
    proof: Vec<String>,
}

/// `GET /log/proof/consistency`.
#[utoipa::path(
    get,
    path = "/log/proof/consistency",
    tag = "transparency log",
    summary = "RFC 9162 consistency proof between two signed tree sizes",
    params(ConsistencyQuery),
    responses(
        (status = 200, description = "The proof", body = ConsistencyProof),
        (status = 400, description = "Sizes outside the newest signed tree (`bad_request`)", body = ErrorBody),
        (status = 503, description = "No checkpoint signed yet (`no_checkpoint`)", body = ErrorBody)
    )
)]
pub(crate) async fn consistency(
    State(s): State<Arc<ApiState>>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let newest = newest(&s)?.size;
    let new = q.new.unwrap_or(newest);
    if new > newest || q.old > new {
        return Err(ApiError::BadRequest(format!(
            "need old <= new <= {newest} (the newest signed tree); got old {} new {new}",
            q.old
        )));
    }
    let old = q.old;
    let proof = s
        .query(move |st| {
            let reader = StoreHashReader::new(st);
            gridpow_tlog::proofs::consistency_proof(&reader, old, new)
                .map_err(|e| reader.take_error().unwrap_or_else(|| internal(e)))
        })
        .await?;
    Ok(Json(ConsistencyProof {
        old,
        new,
        proof: proof.iter().map(hex::encode).collect(),
    }))
}

/// `GET /log/blocks/{index}` (staff): the raw block of a log entry.
#[utoipa::path(
    get,
    path = "/log/blocks/{index}",
    tag = "transparency log",
    summary = "The raw block of a log entry (for `gridpow audit --blocks`)",
    params(("index" = u64, Path, description = "The entry's index")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The block message as stored", content_type = "application/octet-stream"),
        (status = 400, description = "Malformed index (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No valid token (`missing_token`, `invalid_token`)", body = ErrorBody),
        (status = 403, description = "A customer token (`wrong_role`)", body = ErrorBody),
        (status = 404, description = "No such entry (`unknown_entry`)", body = ErrorBody)
    )
)]
pub(crate) async fn block(
    State(s): State<Arc<ApiState>>,
    ApiPath(index): ApiPath<u64>,
) -> Result<Response, ApiError> {
    let raw = s.query(move |st| st.log_block(index)).await?;
    match raw {
        Some(raw) => Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CACHE_CONTROL,
                    "private, max-age=31536000, immutable",
                ),
            ],
            raw,
        )
            .into_response()),
        None => Err(ApiError::NotFound {
            code: "unknown_entry",
            message: format!("the log has no entry {index}"),
        }),
    }
}
