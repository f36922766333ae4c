//! The one shape of every HTTP error the server answers:
//! `{"error": {"code": "bad_request", "message": "…"}}` with the matching
//! status. `code` is stable and meant for programs; `message` is for people.
//! Extractor failures (a malformed path id or query) and unknown routes or
//! methods get the same shape, so a client never has to parse plain text.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and message of an error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, snake_case: `bad_request`, `unknown_meter`, `missing_token`, …
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

/// An error answer: `status` with `{"error": {"code", "message"}}`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

/// The code of an extractor's rejection: its status decides (a 500 is a
/// route wired wrongly, not the client's fault).
fn rejection_code(status: StatusCode) -> &'static str {
    if status.is_client_error() {
        "bad_request"
    } else {
        "internal"
    }
}

/// [`Path`], answering a malformed segment (`/meters/abc/…`) as a JSON 400.
pub(crate) struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> Response {
    let status = r.status();
    json_error(status, rejection_code(status), r.body_text())
}

/// [`Query`], answering a malformed query (`?limit=x`) as a JSON 400.
pub(crate) struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> Response {
    let status = r.status();
    json_error(status, rejection_code(status), r.body_text())
}

/// The fallback for paths no route matches.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such path: {}", uri.path()),
    )
}

/// The fallback for a known path asked with a method it does not serve.
pub(crate) async fn method_not_allowed(method: axum::http::Method) -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served here; the API is read-only (GET)"),
    )
}

/// Why an HTTP request was refused (the `reason` label of the counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HttpRefusal {
    /// No token presented (401).
    MissingToken,
    /// A token that is not (or no longer) in the tokens file (401).
    InvalidToken,
    /// A customer token on an endpoint for staff (403).
    WrongRole,
    /// A customer token asking for another meter (403).
    WrongMeter,
    /// A `Host` header not among the allowed hosts (421).
    BadHost,
    /// `limit` above `http.max_page` (400).
    PageTooLarge,
}

impl HttpRefusal {
    /// Every reason, in counter order.
    pub const ALL: [HttpRefusal; 6] = [
        HttpRefusal::MissingToken,
        HttpRefusal::InvalidToken,
        HttpRefusal::WrongRole,
        HttpRefusal::WrongMeter,
        HttpRefusal::BadHost,
        HttpRefusal::PageTooLarge,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpRefusal::MissingToken => "missing_token",
            HttpRefusal::InvalidToken => "invalid_token",
            HttpRefusal::WrongRole => "wrong_role",
            HttpRefusal::WrongMeter => "wrong_meter",
            HttpRefusal::BadHost => "bad_host",
            HttpRefusal::PageTooLarge => "page_too_large",
        }
    }

    /// The status code answered.
    pub fn status(self) -> StatusCode {
        match self {
            HttpRefusal::MissingToken | HttpRefusal::InvalidToken => StatusCode::UNAUTHORIZED,
            HttpRefusal::WrongRole | HttpRefusal::WrongMeter => StatusCode::FORBIDDEN,
            HttpRefusal::BadHost => StatusCode::MISDIRECTED_REQUEST,
            HttpRefusal::PageTooLarge => StatusCode::BAD_REQUEST,
        }
    }
}
