//! The OpenAPI description at `/api/v1/openapi.json`: served without a
//! token, it names every route the router serves (read from the router's
//! source, so a new route without an annotation fails here), and every path
//! it names is served.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{http_get, http_request, json, Site};
use gridpow_server::auth::Role;
use gridpow_server::Server;

/// Every path given to `.route("…"` in the HTTP router.
fn routed_paths() -> BTreeSet<String> {
    let src = include_str!("../src/api.rs");
    src.split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_names_every_route_and_every_named_path_is_served() {
    let site = Site::new(&[1], &[1]);
    let viewer = site.token("grafana", Role::Viewer, None);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = site.config(dead.local_addr().unwrap().port());
    drop(dead);
    cfg.mqtt.tls = false;
    let server = Server::start(cfg).await.unwrap();
    let addr = server.http_addr();

    let (status, head, body) = http_request(addr, "/api/v1/openapi.json", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("application/json"), "{head}");
    let doc = json(&body);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{body}");
    let paths: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();

    let routed = routed_paths();
    assert!(
        routed.len() >= 12,
        "the router's routes were not found: {routed:?}"
    );
    let missing: Vec<_> = routed.difference(&paths).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the description: {missing:?}"
    );
    let unrouted: Vec<_> = paths.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "described but not routed: {unrouted:?}"
    );

    // The error shape is described, and the authenticated paths name the bearer scheme.
    assert!(
        doc["components"]["schemas"]["ErrorBody"].is_object(),
        "{body}"
    );
    assert!(
        doc["components"]["securitySchemes"]["bearer"].is_object(),
        "{body}"
    );
    let readings = &doc["paths"]["/api/v1/meters/{id}/readings"]["get"];
    assert!(readings["responses"]["404"].is_object(), "{readings}");
    let params: Vec<&str> = readings["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in ["id", "from", "to", "format", "limit"] {
        assert!(params.contains(&p), "{p} missing from {params:?}");
    }

    // The answers have schemas, down to a reading's values.
    for (path, schema) in [
        ("/api/v1/stats", "ServerStats"),
        ("/api/v1/meters", "MeterSummary"),
        ("/api/v1/relays", "RelaySummary"),
        ("/api/v1/blocks", "BlockSummary"),
        ("/api/v1/alerts", "AlertRow"),
        ("/api/v1/quarantine", "QuarantineRow"),
        ("/api/v1/fleet", "Fleet"),
        ("/api/v1/fleet/meters", "MeterPage"),
        ("/api/v1/fleet/relays", "RelayHealth"),
        ("/api/v1/blocks/{block_id}/readings", "BlockReadings"),
        ("/api/v1/readings/{reading_id}/proof", "Proof"),
    ] {
        let ok = doc["paths"][path]["get"]["responses"]["200"].to_string();
        assert!(
            ok.contains(&format!("#/components/schemas/{schema}")),
            "{path}: 200 answer without the {schema} schema: {ok}"
        );
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} is not in the components"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for (schema, field) in [
        ("ReadingJson", "voltage_v"),
        ("MeterPage", "matched"),
        ("RelaySummary", "head_height"),
        ("FleetSnapshot", "power_w"),
    ] {
        assert!(
            schemas[schema]["properties"][field].is_object(),
            "{schema}.{field} missing: {}",
            schemas[schema]
        );
    }
    assert!(
        schemas["StoredReading"].to_string().contains("ReadingJson"),
        "a stored reading carries the reading's values: {}",
        schemas["StoredReading"]
    );

    // Every described path is served (an unrouted one would be 404 not_found).
    for p in &paths {
        let concrete = p
            .replace("{id}", "1")
            .replace("{reading_id}", "1")
            .replace("{block_id}", "1");
        let (status, body) = http_get(addr, &viewer, &concrete).await;
        let not_routed = status == 404 && json(&body)["error"]["code"] == "not_found";
        assert!(!not_routed, "{p}: {status} {body}");
    }
    server.shutdown().await;
}
