//! Who may use the HTTP API: tokens and roles, customers confined to their
//! meter, the login cookie, revocation without restart, the Host check, page
//! caps, and the refusal counters, against a real server fed over a private
//! Mosquitto with mutual TLS.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_get, http_request, json, publish, relay_client, wait_until, Heard, Site};
use gridpow_server::auth::{Role, TokenFile};
use gridpow_server::Server;

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} missing in:\n{text}"))
}

fn refused(text: &str, reason: &str) -> u64 {
    metric(
        text,
        &format!("gridpow_server_http_refused_total{{reason=\"{reason}\"}}"),
    )
}

async fn status(addr: SocketAddr, token: &str, path: &str) -> u16 {
    http_get(addr, token, path).await.0
}

async fn anonymous(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http_request(addr, path, &[]).await;
    (code, body)
}

/// The value of the cookie a `Set-Cookie` line in `head` sets, and the line.
fn set_cookie(head: &str) -> (String, String) {
    let line = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {head}"))
        .to_string();
    let value = line["set-cookie:".len()..]
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (value, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_customer_meters_login_revocation_hosts_and_page_caps_are_enforced_and_counted(
) {
    let site = Site::new(&[1], &[1, 2]);
    let broker = site.broker();
    let viewer = site.token("grafana", Role::Viewer, None);
    let customer = site.token("household-1", Role::Customer, Some(1));
    let server = Server::start(site.config(broker.port)).await.unwrap();
    assert!(wait_until(15, || server.stats().mqtt_subscribed).await);
    let (client, mut rx) = relay_client(&site.keys, broker.port, 1).await;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert!(matches!(got, Some(Heard::SubAck)), "{got:?}");
    let (b0, _) = site.block(
        1,
        0,
        [0; 32],
        8,
        &[site.frame(1, 1, 0, 0, 3), site.frame(2, 1, 0, 0, 3)],
    );
    publish(&client, 1, &b0).await;
    assert!(wait_until(15, || server.stats().ledger.readings_stored == 6).await);
    let addr = server.http_addr();

    // Without a token only /healthz answers; the dashboard says how to log in.
    assert_eq!(anonymous(addr, "/healthz").await.0, 200);
    for path in [
        "/api/v1/stats",
        "/api/v1/meters",
        "/api/v1/meters/1/readings",
        "/api/v1/quarantine",
        "/metrics",
    ] {
        let (code, body) = anonymous(addr, path).await;
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("token"), "{path}: {body}");
    }
    let (code, page) = anonymous(addr, "/").await;
    assert_eq!(code, 401);
    assert!(page.contains("/login?token="), "{page}");
    assert_eq!(status(addr, "gpt_00", "/api/v1/stats").await, 401);
    assert_eq!(
        status(addr, &format!("{viewer}x"), "/api/v1/stats").await,
        401
    );

    // A viewer reads everything.
    for path in [
        "/",
        "/api/v1/stats",
        "/api/v1/meters",
        "/api/v1/meters/2/readings",
        "/api/v1/relays",
        "/api/v1/blocks",
        "/api/v1/alerts",
        "/api/v1/quarantine",
        "/metrics",
    ] {
        assert_eq!(status(addr, &viewer, path).await, 200, "{path}");
    }

    // A household reads its own meter and the proofs of its readings, nothing else.
    let (code, body) = http_get(addr, &customer, "/api/v1/meters/1/readings").await;
    assert_eq!(code, 200, "{body}");
    let own = json(&body)["readings"][0]["id"].as_i64().unwrap();
    let other = json(&http_get(addr, &viewer, "/api/v1/meters/2/readings").await.1)["readings"][0]
        ["id"]
        .as_i64()
        .unwrap();
    let (code, body) = http_get(addr, &customer, &format!("/api/v1/readings/{own}/proof")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["verified"], true);
    let (code, body) = http_get(addr, &customer, &format!("/api/v1/readings/{other}/proof")).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = http_get(addr, &customer, "/api/v1/meters/2/readings").await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("meter 2"), "{body}");
    for path in [
        "/",
        "/api/v1/meters",
        "/api/v1/stats",
        "/api/v1/quarantine",
        "/api/v1/blocks",
        "/metrics",
    ] {
        assert_eq!(status(addr, &customer, path).await, 403, "{path}");
    }

    // The browser's way in: /login sets an HttpOnly, SameSite=Strict cookie and redirects.
    let (code, head, _) = http_request(addr, &format!("/login?token={viewer}"), &[]).await;
    assert_eq!(code, 303, "{head}");
    assert!(head.contains("location: /\r\n"), "{head}");
    let (cookie, line) = set_cookie(&head);
    assert!(
        line.contains("httponly") && line.contains("samesite=strict"),
        "{line}"
    );
    let (code, _, page) = http_request(addr, "/", &[("Cookie", &cookie)]).await;
    assert_eq!(code, 200);
    assert!(page.contains("id=\"readings-stored\""));
    assert_eq!(
        http_request(addr, "/api/v1/stats", &[("Cookie", &cookie)])
            .await
            .0,
        200
    );
    let (code, head, _) = http_request(addr, &format!("/login?token={customer}"), &[]).await;
    assert_eq!(code, 303);
    assert!(
        head.contains("location: /api/v1/meters/1/readings"),
        "{head}"
    );
    let (code, head, _) = http_request(addr, "/login?token=gpt_nope", &[]).await;
    assert_eq!(code, 401);
    assert!(!head.contains("set-cookie"), "{head}");

    // DNS rebinding: a foreign Host is refused even with a valid token.
    let bearer = format!("Bearer {}", site.admin);
    let (code, _, body) = http_request(
        addr,
        "/api/v1/stats",
        &[("Host", "evil.example:8080"), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(code, 421, "{body}");
    let (code, _, _) =
        http_request(addr, "/login?token=x", &[("Host", "rebind.evil.example")]).await;
    assert_eq!(code, 421);
    for host in ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:80"] {
        let (code, _, _) = http_request(
            addr,
            "/api/v1/stats",
            &[("Host", host), ("Authorization", &bearer)],
        )
        .await;
        assert_eq!(code, 200, "{host}");
    }

    // Page caps: above http.max_page (1000) is refused, not clamped.
    let (code, body) = http_get(addr, &viewer, "/api/v1/meters/1/readings?limit=1001").await;
    assert_eq!(code, 400);
    assert!(body.contains("1000"), "{body}");
    for path in [
        "/api/v1/blocks?limit=5000",
        "/api/v1/alerts?limit=1001",
        "/api/v1/quarantine?limit=1000000",
    ] {
        assert_eq!(status(addr, &viewer, path).await, 400, "{path}");
    }
    assert_eq!(
        status(addr, &viewer, "/api/v1/blocks?limit=1000").await,
        200
    );

    // Revocation and new tokens take effect without a restart.
    let path = site.tokens_path();
    let mut f = TokenFile::load(&path).unwrap();
    assert!(f.revoke("grafana"));
    let newcomer = f.create("newcomer", Role::Viewer, None).unwrap();
    f.save(&path).unwrap();
    let mut revoked = false;
    let mut admitted = false;
    for _ in 0..40 {
        revoked = status(addr, &viewer, "/api/v1/stats").await == 401;
        admitted = status(addr, &newcomer, "/api/v1/stats").await == 200;
        if revoked && admitted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(revoked, "the revoked token still works");
    assert!(admitted, "the new token is not accepted");
    assert_eq!(
        http_request(addr, "/api/v1/stats", &[("Cookie", &cookie)])
            .await
            .0,
        401,
        "the revoked token's cookie still works"
    );

    // Every refusal is counted by reason.
    let (code, m) = http_get(addr, &site.admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(refused(&m, "missing_token") >= 6, "{m}");
    assert!(refused(&m, "invalid_token") >= 4, "{m}");
    assert_eq!(refused(&m, "wrong_meter"), 2, "{m}");
    assert_eq!(refused(&m, "wrong_role"), 6, "{m}");
    assert_eq!(refused(&m, "bad_host"), 2, "{m}");
    assert_eq!(refused(&m, "page_too_large"), 4, "{m}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_open_serves_prometheus_without_a_token_but_keeps_the_host_check_and_the_api_closed(
) {
    let site = Site::new(&[1], &[1]);
    let mut cfg = site.config(1); // no broker: the HTTP side alone
    cfg.http.metrics_open = true;
    cfg.http.allowed_hosts = vec!["grid.example".into()];
    cfg.http.tokens_file = Some(site.dir.path().join("absent.toml"));
    let server = Server::start(cfg).await.unwrap();
    let addr = server.http_addr();
    let (code, _, body) = http_request(addr, "/metrics", &[]).await;
    assert_eq!(code, 200, "the listen address is always an allowed host");
    assert!(body.contains("gridpow_server_http_refused_total"));
    let (code, _, _) = http_request(addr, "/metrics", &[("Host", "grid.example:443")]).await;
    assert_eq!(code, 200);
    let (code, _, _) = http_request(addr, "/metrics", &[("Host", "localhost")]).await;
    assert_eq!(code, 421, "localhost is no longer listed");
    // Without a tokens file no token is accepted.
    assert_eq!(status(addr, &site.admin, "/api/v1/stats").await, 401);
    assert_eq!(http_request(addr, "/healthz", &[]).await.0, 200);
    server.shutdown().await;
}
