//! Who may use the HTTP API and the dashboard.
//!
//! - **Tokens**: random `gpt_<64 hex>` strings (256 bits), each with a name and
//!   a role. The tokens file (`http.tokens_file`, default `keys_dir/tokens.toml`,
//!   mode 0600) keeps only their SHA-256, so a copy of it lets nobody in.
//!   `gridpow tokens create|list|revoke` edit it; the server re-reads it when
//!   its modification time, size or inode changed, checked at most once a
//!   second, so a revoked token stops working within about a second, without
//!   a restart.
//! - **Roles**: `viewer` reads everything; `operator` and `admin` may do what a
//!   viewer does (there are no write endpoints yet); `customer` reads one
//!   meter's readings and the proofs of those readings, nothing else.
//! - **Presenting a token**: `Authorization: Bearer <token>`, or the
//!   `gridpow_token` cookie that `GET /login?token=…` sets (HttpOnly,
//!   SameSite=Strict) for the dashboard in a browser.
//! - **Host check** (DNS rebinding): a request whose `Host` is not in
//!   `http.allowed_hosts` (or the listen address) is refused with 421.
//! - Every refusal is counted in `gridpow_server_http_refused_total{reason}`
//!   and logged at info, at most one line a second per reason (the line says
//!   how many were not logged).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use gridpow_common::config::{parse_toml, ConfigError};
use gridpow_common::durable::FileStamp;
use gridpow_proto::crypto::{ct_eq, CryptoProvider, RustCrypto};
use serde::{Deserialize, Serialize};

use crate::hosts::HostPattern;
use crate::http_error::HttpRefusal;
use crate::metrics::Shared;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "gpt_";
/// The cookie `/login` sets.
pub const COOKIE_NAME: &str = "gridpow_token";
/// How often, at most, the server looks at the tokens file.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One household: its own meter's readings and their proofs (needs `meter`).
    Customer,
    /// Reads everything.
    Viewer,
    /// A viewer today; will run operations once there are write endpoints.
    Operator,
    /// An operator today; will manage the site once there are write endpoints.
    Admin,
}

impl Role {
    /// The name used in the tokens file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "customer" => Ok(Role::Customer),
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (viewer, operator, admin or customer)"
            )),
        }
    }
}

/// One token as stored: never the token itself, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Unique name (who holds it), used to revoke it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The one meter a `customer` token may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<u32>,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// When it was created, Unix ms.
    #[serde(default)]
    pub created_ms: u64,
}

/// Why the tokens file could not be used or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error(transparent)]
    Syntax(#[from] ConfigError),
    /// An entry breaks a rule (names unique, customer tokens name a meter, hashes are 32 bytes).
    #[error("tokens file {path}: token {name:?}: {why}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A token with this name exists already (revoke it first).
    #[error("a token named {0:?} exists already (revoke it first)")]
    Exists(String),
    /// The role and meter do not fit together.
    #[error("{0}")]
    Usage(String),
}

/// The tokens file (`[[token]]` tables).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The tokens.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

/// A new random token: `gpt_` and 64 hex digits (256 bits from the OS).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{TOKEN_PREFIX}{}", hex::encode(b))
}

/// The SHA-256 a token is stored as.
pub fn token_hash(token: &str) -> [u8; 32] {
    RustCrypto.sha256(&[token.as_bytes()])
}

impl TokenFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<TokenFile, AuthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
            Err(source) => {
                return Err(AuthError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let file: TokenFile = parse_toml(&text, path, None, Vec::new())?;
        file.validate(path)?;
        Ok(file)
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let text = toml::to_string_pretty(self).map_err(|e| AuthError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        let text = format!("# gridpow API tokens: SHA-256 of each token, never the token. Edit with `gridpow tokens`.\n{text}");
        gridpow_common::durable::write_file(path, text.as_bytes(), true).map_err(|source| {
            AuthError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    fn validate(&self, path: &Path) -> Result<(), AuthError> {
        let bad = |name: &str, why: &str| AuthError::Entry {
            path: path.to_path_buf(),
            name: name.to_string(),
            why: why.to_string(),
        };
        for (i, t) in self.tokens.iter().enumerate() {
            if self.tokens[..i].iter().any(|o| o.name == t.name) {
                return Err(bad(&t.name, "the name appears twice"));
            }
            check_role_meter(t.role, t.meter).map_err(|e| bad(&t.name, &e.to_string()))?;
            match hex::decode(&t.sha256) {
                Ok(h) if h.len() == 32 => {}
                _ => return Err(bad(&t.name, "sha256 must be 64 hex digits")),
            }
        }
        Ok(())
    }

    /// Adds a token named `name`; returns the token, which is shown only this once.
    pub fn create(
        &mut self,
        name: &str,
        role: Role,
        meter: Option<u32>,
    ) -> Result<String, AuthError> {
        if name.trim().is_empty() {
            return Err(AuthError::Usage("a token needs a name".into()));
        }
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(AuthError::Exists(name.to_string()));
        }
        check_role_meter(role, meter)?;
        let token = new_token();
        self.tokens.push(TokenEntry {
            name: name.to_string(),
            role,
            meter,
            sha256: hex::encode(token_hash(&token)),
            created_ms: gridpow_common::wall_ms(),
        });
        Ok(token)
    }

    /// Removes the token named `name`; whether there was one.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.name != name);
        self.tokens.len() != before
    }
}

fn check_role_meter(role: Role, meter: Option<u32>) -> Result<(), AuthError> {
    match (role, meter) {
        (Role::Customer, None) => Err(AuthError::Usage(
            "a customer token needs the meter it may read (--meter)".into(),
        )),
        (Role::Customer, Some(_)) | (_, None) => Ok(()),
        (r, Some(_)) => Err(AuthError::Usage(format!(
            "a {} token reads every meter; only customer tokens name one",
            r.as_str()
        ))),
    }
}

/// Who made a request (inserted into the request's extensions once authenticated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For a customer, the one meter.
    pub meter: Option<u32>,
}

impl Principal {
    /// Viewer, operator or admin: may read everything.
    pub fn is_staff(&self) -> bool {
        self.role >= Role::Viewer
    }

    /// Whether this caller may read `meter`'s readings and their proofs.
    pub fn may_read_meter(&self, meter: u32) -> bool {
        self.is_staff() || self.meter == Some(meter)
    }
}

/// A refused request, answered as JSON `{"error": {"code", "message"}}`, the
/// code being [`HttpRefusal::as_str`].
#[derive(Debug)]
pub(crate) struct Refusal {
    kind: HttpRefusal,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r =
            crate::http_error::json_error(self.kind.status(), self.kind.as_str(), self.message);
        if self.kind.status() == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gridpow\""),
            );
        }
        r
    }
}

struct Known {
    hash: [u8; 32],
    principal: Principal,
}

/// What the server believes the tokens file holds.
struct Cache {
    checked: Option<Instant>,
    /// `None`: missing or unreadable.
    stamp: Option<FileStamp>,
    tokens: Vec<Known>,
}

/// The access rules of one HTTP server: tokens, allowed hosts, page cap, and
/// the rate-limited log of refusals.
pub(crate) struct Gate {
    tokens_path: PathBuf,
    cache: Mutex<Cache>,
    hosts: Vec<HostPattern>,
    /// Largest `limit` a list endpoint accepts.
    pub(crate) max_page: usize,
    /// `/metrics` without a token.
    pub(crate) metrics_open: bool,
    shared: Arc<Shared>,
    log: gridpow_common::throttle::LogThrottle<HttpRefusal>,
}

impl Gate {
    /// The rules of `cfg`'s HTTP server, listening on `listen`.
    pub(crate) fn new(
        cfg: &crate::config::ServerConfig,
        listen: SocketAddr,
        shared: Arc<Shared>,
    ) -> Arc<Gate> {
        let mut hosts: Vec<HostPattern> = cfg
            .http
            .allowed_hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h))
            .collect();
        let ip = match listen {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        hosts.extend(HostPattern::parse(&ip));
        let gate = Gate {
            tokens_path: cfg.tokens_path(),
            cache: Mutex::new(Cache {
                checked: None,
                stamp: None,
                tokens: Vec::new(),
            }),
            hosts,
            max_page: cfg.http.max_page,
            metrics_open: cfg.http.metrics_open,
            shared,
            log: Default::default(),
        };
        if let Ok(mut c) = gate.cache.lock() {
            gate.refresh(&mut c, true);
        }
        Arc::new(gate)
    }

    /// Re-reads the tokens file if it changed (looked at no more than once a second unless `force`).
    fn refresh(&self, c: &mut Cache, force: bool) {
        let now = Instant::now();
        if !force
            && c.checked
                .is_some_and(|t| now.duration_since(t) < RELOAD_EVERY)
        {
            return;
        }
        c.checked = Some(now);
        let path = &self.tokens_path;
        let st = match FileStamp::of(path) {
            Ok(s) => s,
            Err(e) => {
                if c.stamp.is_some() || force {
                    tracing::warn!(file = %path.display(), error = %e, "No tokens file: every API request needs a token, none is accepted (create one with `gridpow tokens create`).");
                }
                c.stamp = None;
                c.tokens.clear();
                return;
            }
        };
        if c.stamp == Some(st) && !force {
            return;
        }
        c.stamp = Some(st);
        match TokenFile::load(path) {
            Ok(f) => {
                c.tokens = f
                    .tokens
                    .into_iter()
                    .filter_map(|t| {
                        let hash: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                        Some(Known {
                            hash,
                            principal: Principal {
                                name: t.name,
                                role: t.role,
                                meter: t.meter,
                            },
                        })
                    })
                    .collect();
                tracing::info!(file = %path.display(), tokens = c.tokens.len(), "Tokens loaded.");
            }
            Err(e) => {
                // Fail closed: a broken file must not keep revoked tokens alive.
                c.tokens.clear();
                tracing::error!(file = %path.display(), error = %e, "Tokens file unusable: no token is accepted until it is fixed.");
            }
        }
    }

    /// The holder of `token`, if it is in the tokens file.
    pub(crate) fn authenticate(&self, token: &str) -> Option<Principal> {
        let hash = token_hash(token);
        let mut c = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        self.refresh(&mut c, false);
        // Compare against every entry in constant time; no early exit.
        let mut found = None;
        for k in &c.tokens {
            if ct_eq(&k.hash, &hash) && found.is_none() {
                found = Some(k.principal.clone());
            }
        }
        found
    }

    fn host_allowed(&self, headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
        let got = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| uri.authority().map(|a| a.to_string()));
        let Some(got) = got.as_deref().and_then(HostPattern::parse) else {
            return false;
        };
        self.hosts.iter().any(|p| p.matches(&got))
    }

    /// Counts and logs a refusal and builds its answer.
    pub(crate) fn refuse(&self, kind: HttpRefusal, path: &str, message: String) -> Refusal {
        self.shared.count_http_refusal(kind);
        if let Some(not_logged) = self.log.admit(kind, Instant::now()) {
            tracing::info!(
                reason = kind.as_str(),
                path,
                status = kind.status().as_u16(),
                not_logged,
                "HTTP request refused: {message}."
            );
        }
        Refusal { kind, message }
    }

    /// The page size for `asked` (default `default`), refused above `max_page`.
    pub(crate) fn page(
        &self,
        asked: Option<usize>,
        default: usize,
        path: &str,
    ) -> Result<usize, Refusal> {
        match asked {
            Some(n) if n > self.max_page => Err(self.refuse(
                HttpRefusal::PageTooLarge,
                path,
                format!(
                    "limit {n} is above the largest page, {}; ask for less and page with from/to",
                    self.max_page
                ),
            )),
            Some(n) => Ok(n.max(1)),
            None => Ok(default.min(self.max_page)),
        }
    }
}

/// The token of a request: `Authorization: Bearer …` first, else the login cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE_NAME).then(|| v.to_string())
        })
}

/// Middleware: refuses requests for a host not in `http.allowed_hosts` (DNS rebinding).
pub(crate) async fn check_host(
    Extension(gate): Extension<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Response {
    if gate.host_allowed(req.headers(), req.uri()) {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default();
    gate.refuse(
        HttpRefusal::BadHost,
        req.uri().path(),
        format!("host {host:?} is not served here (http.allowed_hosts)"),
    )
    .into_response()
}

const LOGIN_HINT: &str = "<!doctype html><meta charset=\"utf-8\"><title>gridpow: log in</title><body style=\"font-family:system-ui;background:#0f1419;color:#d7dee8;padding:2em\"><h1>gridpow grid server</h1><p>Log in by opening <code>/login?token=&lt;your token&gt;</code>. An operator creates tokens with <code>gridpow tokens create</code>; <code>gridpow demo</code> prints a login address.</p>";

/// Middleware: finds the caller's token, refuses the request without a valid
/// one, and puts the [`Principal`] into the request's extensions.
pub(crate) async fn authenticate(
    Extension(gate): Extension<Arc<Gate>>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let refusal = match presented_token(req.headers()) {
        None => gate.refuse(
            HttpRefusal::MissingToken,
            &path,
            "a token is required (Authorization: Bearer <token>, or log in at /login?token=<token>)"
                .into(),
        ),
        Some(t) => match gate.authenticate(&t) {
            Some(p) => {
                req.extensions_mut().insert(p);
                return next.run(req).await;
            }
            None => gate.refuse(
                HttpRefusal::InvalidToken,
                &path,
                "the token is not valid (unknown or revoked)".into(),
            ),
        },
    };
    if path == "/" {
        // A browser on the dashboard: say how to log in.
        return (StatusCode::UNAUTHORIZED, Html(LOGIN_HINT)).into_response();
    }
    refusal.into_response()
}

/// Middleware (after [`authenticate`]): only viewers, operators and admins pass.
pub(crate) async fn require_staff(
    Extension(gate): Extension<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Response {
    match req.extensions().get::<Principal>() {
        Some(p) if p.is_staff() => next.run(req).await,
        who => {
            let name = who.map(|p| p.name.clone()).unwrap_or_default();
            gate.refuse(
                HttpRefusal::WrongRole,
                req.uri().path(),
                format!("token {name:?} may read its own meter only"),
            )
            .into_response()
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LoginQuery {
    /// The API token.
    token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/login",
    tag = "gridpow",
    summary = "Sets the token as an HttpOnly cookie and redirects to the dashboard (a customer to its meter's readings)",
    params(LoginQuery),
    responses(
        (status = 303, description = "Logged in: `Set-Cookie` and `Location`"),
        (status = 400, description = "Malformed query (`bad_request`)", body = crate::http_error::ErrorBody),
        (status = 401, description = "No or an invalid token (`missing_token`, `invalid_token`)", body = crate::http_error::ErrorBody)
    )
)]
/// `GET /login?token=…`: checks the token, sets it as an HttpOnly,
/// SameSite=Strict cookie and redirects to the dashboard (a customer to its
/// meter's readings).
pub(crate) async fn login(
    Extension(gate): Extension<Arc<Gate>>,
    crate::http_error::ApiQuery(q): crate::http_error::ApiQuery<LoginQuery>,
) -> Response {
    let Some(token) = q.token.filter(|t| !t.is_empty()) else {
        return gate
            .refuse(
                HttpRefusal::MissingToken,
                "/login",
                "log in with /login?token=<token>".into(),
            )
            .into_response();
    };
    let Some(who) = gate.authenticate(&token) else {
        return gate
            .refuse(
                HttpRefusal::InvalidToken,
                "/login",
                "the token is not valid (unknown or revoked)".into(),
            )
            .into_response();
    };
    let to = match (who.is_staff(), who.meter) {
        (false, Some(m)) => format!("/api/v1/meters/{m}/readings"),
        _ => "/".to_string(),
    };
    let cookie = format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict");
    tracing::info!(token = %who.name, role = who.role.as_str(), "Logged in.");
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    for (k, v) in [
        (header::LOCATION, to),
        (header::SET_COOKIE, cookie),
        (header::CACHE_CONTROL, "no-store".to_string()),
        (header::REFERRER_POLICY, "no-referrer".to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_keeps_hashes_only_and_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut f = TokenFile::load(&path).unwrap();
        assert!(f.tokens.is_empty());
        let t = f.create("alice", Role::Viewer, None).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == 4 + 64, "{t}");
        let c = f.create("house-7", Role::Customer, Some(7)).unwrap();
        f.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t[4..]) && !text.contains(&c[4..]));
        assert!(text.contains(&hex::encode(token_hash(&t))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut back = TokenFile::load(&path).unwrap();
        assert_eq!(back, f);
        assert!(matches!(
            back.create("alice", Role::Admin, None),
            Err(AuthError::Exists(_))
        ));
        assert!(back.create("x", Role::Customer, None).is_err());
        assert!(back.create("y", Role::Viewer, Some(1)).is_err());
        assert!(back.revoke("alice") && !back.revoke("alice"));
    }

    #[test]
    fn host_patterns_match_names_with_any_port_unless_one_is_given() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("localhost").matches(&p("LOCALHOST:8080")));
        assert!(p("[::1]").matches(&p("[::1]:80")));
        assert!(p("127.0.0.1").matches(&p("127.0.0.1")));
        assert!(!p("127.0.0.1").matches(&p("127.0.0.2:80")));
        assert!(p("grid.example:443").matches(&p("grid.example.:443")));
        assert!(!p("grid.example:443").matches(&p("grid.example:80")));
        assert!(!p("localhost").matches(&p("localhost.evil.example")));
        assert!(HostPattern::parse("").is_none() && HostPattern::parse("a:b").is_none());
    }

    #[test]
    fn customers_read_their_own_meter_only() {
        let c = Principal {
            name: "h".into(),
            role: Role::Customer,
            meter: Some(1),
        };
        assert!(c.may_read_meter(1) && !c.may_read_meter(2) && !c.is_staff());
        let v = Principal {
            name: "v".into(),
            role: Role::Viewer,
            meter: None,
        };
        assert!(v.may_read_meter(2) && v.is_staff());
    }
}
