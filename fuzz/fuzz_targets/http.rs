//! The grid server's HTTP request path: arbitrary requests (request line and
//! headers from the input) through the application exactly as the server
//! serves it — host check, bearer tokens and cookies, roles, page caps, query
//! and path extraction, handlers on a real SQLite database. Every request must
//! get a response with a status code; none may panic or answer 5xx except
//! 503 (load shedding).
//!
//! Input: `METHOD URI\n` then `Name: value\n` lines. The seeds carry the test
//! tokens below, so mutations reach the authenticated handlers.
#![no_main]
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use gridpow_server::auth::{token_hash, Role, TokenEntry, TokenFile};
use gridpow_server::ServerConfig;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// Test tokens, public on purpose.
const ADMIN: &str = "gpt_abababababababababababababababababababababababababababababababab";
const CUSTOMER: &str = "gpt_cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

struct App {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gridpow-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let entry = |name: &str, role, meter, token: &str| TokenEntry {
            name: name.into(),
            role,
            meter,
            sha256: hex::encode(token_hash(token)),
            created_ms: 0,
        };
        TokenFile {
            tokens: vec![
                entry("admin", Role::Admin, None, ADMIN),
                entry("household", Role::Customer, Some(1), CUSTOMER),
            ],
        }
        .save(&dir.join("tokens.toml"))
        .expect("tokens file");
        let mut cfg = ServerConfig {
            keys_dir: dir.clone(),
            db: dir.join("ledger.db").display().to_string(),
            ..ServerConfig::default()
        };
        cfg.http.listen = "127.0.0.1:8080".parse().expect("address");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = rt.block_on(async { gridpow_server::http_app(&cfg).expect("app") });
        App { rt, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some((method, uri)) = lines.next().and_then(|l| l.split_once(' ')) else {
        return;
    };
    let mut req = Request::builder().method(method).uri(uri);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            req = req.header(name.trim(), value.trim());
        }
    }
    let Ok(req) = req.body(Body::empty()) else {
        return;
    };
    let app = app();
    let status = app
        .rt
        .block_on(app.router.clone().oneshot(req))
        .map(|r| r.status())
        .expect("the router is infallible");
    assert!(
        !status.is_server_error() || status.as_u16() == 503,
        "{status} for {text:?}"
    );
});
