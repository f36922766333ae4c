//! Every HTTP error is JSON `{"error": {"code", "message"}}` with the right
//! status: malformed path ids and queries (400), unknown meters, readings and
//! paths (404), methods (405), tokens (401) and roles (403), against a real
//! server (no broker needed: the API reads the database).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{http_get, http_method, json, Site};
use gridpow_server::auth::Role;
use gridpow_server::Server;

fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Asserts `status` and the error shape, returning the code.
fn error_code(status: u16, body: &str, want: u16, what: &str) -> String {
    assert_eq!(status, want, "{what}: {body}");
    let v = json(body);
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error.code in {body}"));
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: no error.message in {body}");
    code.to_string()
}

async fn get(addr: SocketAddr, token: &str, path: &str) -> (u16, String) {
    http_get(addr, token, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_error_is_json_with_a_code_and_the_right_status() {
    // Meters 1 and 2 are registered; none has sent anything yet.
    let site = Site::new(&[1], &[1, 2]);
    let viewer = site.token("grafana", Role::Viewer, None);
    let customer = site.token("household-1", Role::Customer, Some(1));
    let mut cfg = site.config(dead_port());
    cfg.mqtt.tls = false;
    let server = Server::start(cfg).await.unwrap();
    let addr = server.http_addr();

    // A registered meter without readings is quiet, not unknown.
    let (code, body) = get(addr, &viewer, "/api/v1/meters/1/readings").await;
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["count"], 0, "{body}");
    assert!(
        v["to"].is_null(),
        "an open bound is null, not u64::MAX: {body}"
    );

    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "unknown meter",
            "/api/v1/meters/99/readings",
            404,
            "unknown_meter",
        ),
        (
            "malformed id",
            "/api/v1/meters/abc/readings",
            400,
            "bad_request",
        ),
        (
            "negative id",
            "/api/v1/meters/-1/readings",
            400,
            "bad_request",
        ),
        (
            "malformed from",
            "/api/v1/meters/1/readings?from=yesterday",
            400,
            "bad_request",
        ),
        (
            "from after to",
            "/api/v1/meters/1/readings?from=5&to=4",
            400,
            "bad_request",
        ),
        (
            "bad format",
            "/api/v1/meters/1/readings?format=xml",
            400,
            "bad_request",
        ),
        (
            "malformed limit",
            "/api/v1/blocks?limit=lots",
            400,
            "bad_request",
        ),
        (
            "malformed relay",
            "/api/v1/blocks?relay=x",
            400,
            "bad_request",
        ),
        (
            "page too large",
            "/api/v1/alerts?limit=100000000",
            400,
            "page_too_large",
        ),
        (
            "malformed reading id",
            "/api/v1/readings/x/proof",
            400,
            "bad_request",
        ),
        (
            "unknown reading",
            "/api/v1/readings/12345/proof",
            404,
            "unknown_reading",
        ),
        ("unknown path", "/api/v1/nothing", 404, "not_found"),
        (
            "meter search not digits",
            "/api/v1/fleet/meters?q=12%27%20OR%201=1",
            400,
            "bad_request",
        ),
        (
            "unknown meter filter",
            "/api/v1/fleet/meters?filter=loud",
            400,
            "bad_request",
        ),
        (
            "unknown sort column",
            "/api/v1/fleet/meters?sort=meter_id;drop",
            400,
            "bad_request",
        ),
        (
            "bad order",
            "/api/v1/fleet/meters?order=up",
            400,
            "bad_request",
        ),
        (
            "meter page too large",
            "/api/v1/fleet/meters?limit=100000000",
            400,
            "page_too_large",
        ),
        (
            "traffic span out of range",
            "/api/v1/fleet/relays?minutes=0",
            400,
            "bad_request",
        ),
        (
            "malformed fleet since",
            "/api/v1/fleet?since=-5",
            400,
            "bad_request",
        ),
        (
            "unknown block",
            "/api/v1/blocks/777/readings",
            404,
            "unknown_block",
        ),
        (
            "malformed block id",
            "/api/v1/blocks/x/readings",
            400,
            "bad_request",
        ),
    ];
    // The fleet views answer on an empty database.
    for path in [
        "/api/v1/fleet",
        "/api/v1/fleet/meters?q=1&sort=power&order=desc",
        "/api/v1/fleet/relays",
    ] {
        let (s, body) = get(addr, &viewer, path).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    let (_, body) = get(addr, &viewer, "/api/v1/fleet/meters").await;
    assert_eq!(json(&body)["total"], 0, "{body}");
    for &(what, path, status, want) in cases {
        let (s, body) = get(addr, &viewer, path).await;
        assert_eq!(error_code(s, &body, status, what), want, "{what}: {body}");
    }

    // Tokens and roles.
    let (s, _, body) = http_method(addr, "GET", "/api/v1/stats", &[]).await;
    assert_eq!(error_code(s, &body, 401, "no token"), "missing_token");
    let (s, body) = get(addr, "gpt_00", "/api/v1/stats").await;
    assert_eq!(error_code(s, &body, 401, "bad token"), "invalid_token");
    let (s, body) = get(addr, &customer, "/api/v1/stats").await;
    assert_eq!(error_code(s, &body, 403, "customer on staff"), "wrong_role");
    let (s, body) = get(addr, &customer, "/api/v1/meters/2/readings").await;
    assert_eq!(error_code(s, &body, 403, "other meter"), "wrong_meter");
    // A customer asking for an unregistered meter learns nothing about it.
    let (s, body) = get(addr, &customer, "/api/v1/meters/99/readings").await;
    assert_eq!(
        error_code(s, &body, 403, "customer, unknown meter"),
        "wrong_meter"
    );
    let (s, _, body) = http_method(addr, "GET", "/login?token=", &[]).await;
    assert_eq!(error_code(s, &body, 401, "empty login"), "missing_token");

    // The API is read-only.
    let auth = format!("Bearer {viewer}");
    let (s, _, body) =
        http_method(addr, "POST", "/api/v1/meters", &[("Authorization", &auth)]).await;
    assert_eq!(error_code(s, &body, 405, "POST"), "method_not_allowed");
    let (s, _, body) = http_method(addr, "DELETE", "/api/v1/meters/1/readings", &[]).await;
    assert_eq!(error_code(s, &body, 405, "DELETE"), "method_not_allowed");

    server.shutdown().await;
}
