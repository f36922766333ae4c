//! The `[home_assistant]` export against real brokers: blocks go to the
//! site's Mosquitto (mutual TLS), verified readings come out on a second
//! Mosquitto standing for a household's Home Assistant broker. A subscriber
//! checks every discovery document against Home Assistant's documented MQTT
//! sensor schema, that each state carries what the discovery promises (and
//! its OBIS codes), that the energy register never goes back even when an
//! older block is stored after a newer one, that a silent meter turns
//! unavailable, and that ingestion goes on while the export's broker is down.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{publish, relay_client, wait_until, Site};
use gridpow_testkit::{Mosquitto, MosquittoOptions};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::Value;

/// Home Assistant's MQTT sensor: keys gridpow may send, and the units each
/// device class accepts (home-assistant.io/integrations/sensor.mqtt and
/// /integrations/sensor#device-class).
const ALLOWED_KEYS: &[&str] = &[
    "name",
    "unique_id",
    "state_topic",
    "value_template",
    "device_class",
    "state_class",
    "unit_of_measurement",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "device",
    "origin",
];
const REQUIRED_KEYS: &[&str] = &["state_topic", "unique_id", "name", "device"];

fn units_of(device_class: &str) -> Option<&'static [Option<&'static str>]> {
    Some(match device_class {
        "voltage" => &[Some("V"), Some("mV"), Some("kV")],
        "current" => &[Some("A"), Some("mA")],
        "power" => &[Some("W"), Some("kW"), Some("MW")],
        "power_factor" => &[None, Some("%")],
        "frequency" => &[Some("Hz"), Some("kHz"), Some("MHz"), Some("GHz")],
        "energy" => &[Some("Wh"), Some("kWh"), Some("MWh"), Some("GJ")],
        _ => return None,
    })
}

type Heard = Arc<Mutex<Vec<(String, Value)>>>;

/// A subscriber on the Home Assistant broker: every message, in order.
async fn listener(site: &Site, port: u16) -> Heard {
    let tls = gridpow_common::tls::client_config(&site.keys.ca_cert_path(), None).unwrap();
    let mut o = MqttOptions::new("ha-listener", "127.0.0.1", port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)))
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let heard: Heard = Arc::default();
    let h = heard.clone();
    tokio::spawn(async move {
        let _client = client.clone();
        loop {
            match eventloop.poll().await {
                // Every connection (a clean session), not only the first:
                // after a reconnect the retained documents come again.
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    for f in ["homeassistant/#", "gridpow/v1/meters/#"] {
                        if let Err(e) = client.subscribe(f, QoS::AtLeastOnce).await {
                            eprintln!("listener: subscribing to {f} failed: {e}");
                        }
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let text = String::from_utf8(p.payload.to_vec()).unwrap();
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    h.lock().unwrap().push((p.topic.clone(), v));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    heard
}

fn check_discovery(topic: &str, doc: &Value, states: &HashMap<u32, Value>) {
    let o = doc
        .as_object()
        .unwrap_or_else(|| panic!("{topic}: not an object"));
    for k in o.keys() {
        assert!(
            ALLOWED_KEYS.contains(&k.as_str()),
            "{topic}: unknown key {k}"
        );
    }
    for k in REQUIRED_KEYS {
        assert!(o.contains_key(*k), "{topic}: {k} missing");
    }
    // <prefix>/sensor/gridpow_<id>/<object>/config
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(parts.len(), 5, "{topic}");
    assert_eq!(
        (parts[0], parts[1], parts[4]),
        ("homeassistant", "sensor", "config")
    );
    let id: u32 = parts[2].strip_prefix("gridpow_").unwrap().parse().unwrap();
    assert_eq!(o["unique_id"], format!("gridpow_{id}_{}", parts[3]));
    assert_eq!(o["state_topic"], format!("gridpow/v1/meters/{id}/state"));
    assert_eq!(
        o["availability_topic"],
        format!("gridpow/v1/meters/{id}/availability")
    );
    let dc = o["device_class"].as_str().unwrap();
    let units = units_of(dc).unwrap_or_else(|| panic!("{topic}: device_class {dc}"));
    let unit = o.get("unit_of_measurement").map(|u| u.as_str().unwrap());
    assert!(units.contains(&unit), "{topic}: unit {unit:?} for {dc}");
    let sc = o["state_class"].as_str().unwrap();
    assert!(
        ["measurement", "total", "total_increasing"].contains(&sc),
        "{topic}: {sc}"
    );
    if dc == "energy" {
        assert_eq!(sc, "total_increasing", "{topic}: an energy register");
    } else {
        assert_eq!(sc, "measurement", "{topic}");
    }
    let device = o["device"].as_object().unwrap();
    assert_eq!(
        device["identifiers"],
        serde_json::json!([format!("gridpow_meter_{id}")])
    );
    assert!(device["name"].is_string() && o["origin"]["name"].is_string());
    // The template names a number the state carries.
    let tpl = o["value_template"].as_str().unwrap();
    let key = tpl
        .strip_prefix("{{ value_json.")
        .and_then(|t| t.strip_suffix(" }}"))
        .unwrap_or_else(|| panic!("{topic}: template {tpl}"));
    let state = &states[&id];
    assert!(
        state[key].is_number(),
        "{topic}: state has no number {key}: {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_readings_reach_home_assistant_with_valid_discovery_and_never_go_back() {
    let site = Site::new(&[1], &[1, 2]);
    let broker = site.broker();
    let ha_broker = Mosquitto::start(&site.keys, &MosquittoOptions::default()).unwrap();
    let heard = listener(&site, ha_broker.port).await;
    let mut cfg = site.config(broker.port);
    cfg.home_assistant.enabled = true;
    cfg.home_assistant.host = Some("127.0.0.1".into());
    cfg.home_assistant.port = Some(ha_broker.port);
    cfg.plausibility.expected_interval_s = 1;
    cfg.plausibility.silent_after_intervals = 3;
    let server = gridpow_server::Server::start(cfg).await.unwrap();
    assert!(wait_until(15, || server.stats().mqtt_subscribed).await);
    let (client, _rx) = relay_client(&site.keys, broker.port, 1).await;

    // Blocks 0..3 of relay 1, three frames of three readings each per
    // meter; block 2 is delivered before block 1, so the older readings
    // are committed after newer ones.
    let mut blocks = Vec::new();
    let mut prev = [0u8; 32];
    for h in 0..4u64 {
        let s = (h * 3) as u32;
        let frames = vec![
            site.frame(1, 1, h as u32, s, 3),
            site.frame(2, 1, h as u32, s, 3),
        ];
        let (b, hash) = site.block(1, h, prev, 8, &frames);
        prev = hash;
        blocks.push(b);
    }
    for i in [0, 2, 1, 3] {
        publish(&client, 1, &blocks[i]).await;
    }
    assert!(
        wait_until(20, || server.stats().ledger.readings_stored == 24).await,
        "{:?}",
        server.stats().ledger
    );
    let done = |h: &Heard| {
        let h = h.lock().unwrap();
        let states = h
            .iter()
            .filter(|(t, _)| t.ends_with("/state"))
            .filter(|(_, v)| v["seq"] == 11)
            .count();
        let docs = h.iter().filter(|(t, _)| t.ends_with("/config")).count();
        // At least: a reconnected listener gets the retained ones again.
        states >= 2 && docs >= 12
    };
    assert!(
        wait_until(20, || done(&heard)).await,
        "{:#?}",
        heard.lock().unwrap()
    );

    let msgs = heard.lock().unwrap().clone();
    let mut states: HashMap<u32, Value> = HashMap::new();
    let mut energy: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for (t, v) in &msgs {
        if let Some(id) = t
            .strip_prefix("gridpow/v1/meters/")
            .and_then(|r| r.strip_suffix("/state"))
        {
            let id: u32 = id.parse().unwrap();
            assert_eq!(v["meter_id"], id);
            // OBIS codes carry the same values in utility units.
            assert_eq!(v["obis"]["1-0:32.7.0"], v["voltage_v"]);
            assert_eq!(v["obis"]["1-0:31.7.0"], v["current_a"]);
            assert_eq!(v["obis"]["1-0:1.8.0"], v["energy_kwh"]);
            let kw = v["obis"]["1-0:1.7.0"].as_f64().unwrap();
            assert!((kw * 1000.0 - v["active_power_w"].as_f64().unwrap()).abs() < 1e-6);
            assert_eq!(v["relay_id"], 1);
            assert_eq!(v["block_hash"].as_str().unwrap().len(), 64);
            energy
                .entry(id)
                .or_default()
                .push(v["energy_kwh"].as_f64().unwrap());
            states.insert(id, v.clone());
        }
    }
    for (id, e) in &energy {
        assert!(
            // Equal only when a reconnect brought a retained state again.
            e.windows(2).all(|w| w[0] <= w[1]),
            "meter {id}: energy went back: {e:?}"
        );
    }
    // The newest reading: seq 11, energy 1 000 000 + 11·5 000 mWh.
    assert_eq!(states[&1]["energy_kwh"], 1.055);
    let docs: Vec<&(String, Value)> = msgs
        .iter()
        .filter(|(t, _)| t.ends_with("/config"))
        .collect();
    let mut ids = HashSet::new();
    for (t, d) in &docs {
        check_discovery(t, d, &states);
        ids.insert(d["unique_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 12, "six sensors per meter, each unique");
    assert!(msgs
        .iter()
        .any(|(t, v)| t == "gridpow/v1/meters/1/availability" && v == "online"));
    let metrics = server.metrics_text();
    assert!(metrics.contains("gridpow_export_states"), "{metrics}");

    // Silent meters turn unavailable.
    assert!(
        wait_until(30, || heard.lock().unwrap().iter().any(|(t, v)| t
            == "gridpow/v1/meters/2/availability"
            && v == "offline"))
        .await,
        "meter 2 never went offline"
    );

    // The export's broker goes away: ingestion does not wait for it.
    drop(ha_broker);
    for h in 4..8u64 {
        let s = (h * 3) as u32;
        let (b, hash) = site.block(1, h, prev, 8, &[site.frame(1, 1, h as u32, s, 3)]);
        prev = hash;
        publish(&client, 1, &b).await;
    }
    assert!(
        wait_until(20, || server.stats().ledger.readings_stored == 36).await,
        "ingestion stalled without the export broker: {:?}",
        server.stats().ledger
    );
    server.shutdown().await;
}
