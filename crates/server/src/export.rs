//! Verified readings as plain MQTT, with Home Assistant discovery
//! (docs/integrations.md; config `[home_assistant]`).
//!
//! The writer hands each commit's newest reading per meter to a bounded
//! queue ([`ExportQueue::committed`], never blocking: a full queue drops and
//! counts); the export task publishes, on its own broker connection:
//!
//! - `gridpow/v1/meters/<id>/state`: the meter's newest state as JSON
//!   (retained), only ever newer (epoch, sequence) than the one before, so
//!   the energy register never goes back;
//! - `gridpow/v1/meters/<id>/availability`: `online` with each state,
//!   `offline` when the silent-meter sweep raises its alert (retained);
//! - `<prefix>/sensor/gridpow_<id>/<quantity>/config`: one Home Assistant
//!   MQTT discovery document per quantity (retained), sent when a meter is
//!   first seen and again after every reconnection.

use std::collections::HashMap;
use std::sync::Arc;

use gridpow_proto::wire::Reading;
use gridpow_proto::Hash;
use gridpow_store::{ReadingRow, VerifiedBlockData};
use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::config::{HomeAssistantConfig, ServerConfig};
use crate::metrics::{add, Shared};

/// What the writer hands over.
#[derive(Clone, Debug)]
pub(crate) enum ExportEvent {
    /// A meter's newest reading in a committed block.
    State(MeterState),
    /// The silent-meter sweep found the meter silent.
    Silent(u32),
}

/// A committed reading with its provenance.
#[derive(Clone, Debug)]
pub(crate) struct MeterState {
    pub meter_id: u32,
    pub epoch: u32,
    pub seq: u32,
    pub reading: Reading,
    pub relay_id: u32,
    pub height: u64,
    pub block_hash: Hash,
}

/// The writer's end of the queue.
#[derive(Clone, Debug)]
pub(crate) struct ExportQueue {
    tx: mpsc::Sender<ExportEvent>,
    shared: Arc<Shared>,
}

impl ExportQueue {
    fn offer(&self, e: ExportEvent) {
        if self.tx.try_send(e).is_err() {
            add(&self.shared.metrics.export_dropped, 1);
        }
    }

    /// A commit stored `blocks`: the newest reading of each meter among
    /// them, one event per meter however many blocks the commit held (only
    /// the newest state is ever published, so older ones need no queue room).
    pub(crate) fn committed<'b>(&self, blocks: impl IntoIterator<Item = &'b VerifiedBlockData>) {
        let mut newest: HashMap<u32, (&VerifiedBlockData, &ReadingRow)> = HashMap::new();
        for block in blocks {
            for r in &block.readings {
                let e = newest.entry(r.meter_id).or_insert((block, r));
                if (r.epoch, r.seq) > (e.1.epoch, e.1.seq) {
                    *e = (block, r);
                }
            }
        }
        let mut states: Vec<MeterState> =
            newest.into_values().map(|(b, r)| state_of(b, r)).collect();
        states.sort_by_key(|s| s.meter_id);
        for s in states {
            self.offer(ExportEvent::State(s));
        }
    }

    /// The sweep raised a silent-meter alert on `subject` (`meter:<id>`).
    pub(crate) fn silent(&self, subject: &str) {
        if let Some(id) = subject.strip_prefix("meter:").and_then(|s| s.parse().ok()) {
            self.offer(ExportEvent::Silent(id));
        }
    }
}

fn state_of(block: &VerifiedBlockData, r: &ReadingRow) -> MeterState {
    MeterState {
        meter_id: r.meter_id,
        epoch: r.epoch,
        seq: r.seq,
        reading: r.reading,
        relay_id: block.header.relay_id,
        height: block.header.height,
        block_hash: block.hash,
    }
}

/// `online` while the export is connected, `offline` after it stopped or
/// lost its connection (its last will).
pub const EXPORT_STATUS: &str = "gridpow/v1/export/status";

/// Where meter `id`'s newest state is published.
pub fn state_topic(id: u32) -> String {
    format!("gridpow/v1/meters/{id}/state")
}

/// Where meter `id`'s availability is published.
pub fn availability_topic(id: u32) -> String {
    format!("gridpow/v1/meters/{id}/availability")
}

/// The state document (docs/integrations.md): SI units, and the same
/// values under their OBIS codes for utility tools.
pub fn state_json(s: &MeterState) -> Value {
    let r = &s.reading;
    let (voltage, current, power, energy) = (
        r.voltage_v(),
        r.current_a(),
        r.active_power_w(),
        r.energy_kwh(),
    );
    json!({
        "meter_id": s.meter_id,
        "voltage_v": voltage,
        "current_a": current,
        "active_power_w": power,
        "power_factor": r.power_factor(),
        "frequency_hz": r.frequency_hz(),
        "energy_kwh": energy,
        "timestamp_ms": r.timestamp_ms,
        "flags": r.flags,
        "epoch": s.epoch,
        "seq": s.seq,
        "relay_id": s.relay_id,
        "block_height": s.height,
        "block_hash": hex::encode(s.block_hash),
        "obis": {
            "1-0:32.7.0": voltage,
            "1-0:31.7.0": current,
            "1-0:1.7.0": power / 1000.0,
            "1-0:1.8.0": energy,
        },
    })
}

/// One Home Assistant sensor of a meter.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    /// Its object id in the discovery topic and in `unique_id`.
    pub object: &'static str,
    /// Its display name.
    pub name: &'static str,
    /// Home Assistant's `device_class`.
    pub device_class: &'static str,
    /// `measurement`, or `total_increasing` for the energy register.
    pub state_class: &'static str,
    /// `unit_of_measurement` (none for the power factor).
    pub unit: Option<&'static str>,
    /// Its key in the state document.
    pub key: &'static str,
}

const fn q(
    object: &'static str,
    name: &'static str,
    device_class: &'static str,
    state_class: &'static str,
    unit: Option<&'static str>,
    key: &'static str,
) -> Quantity {
    Quantity {
        object,
        name,
        device_class,
        state_class,
        unit,
        key,
    }
}

/// The sensors each meter gets.
pub const QUANTITIES: &[Quantity] = &[
    q(
        "voltage",
        "Voltage",
        "voltage",
        "measurement",
        Some("V"),
        "voltage_v",
    ),
    q(
        "current",
        "Current",
        "current",
        "measurement",
        Some("A"),
        "current_a",
    ),
    q(
        "power",
        "Active power",
        "power",
        "measurement",
        Some("W"),
        "active_power_w",
    ),
    q(
        "power_factor",
        "Power factor",
        "power_factor",
        "measurement",
        None,
        "power_factor",
    ),
    q(
        "frequency",
        "Frequency",
        "frequency",
        "measurement",
        Some("Hz"),
        "frequency_hz",
    ),
    q(
        "energy",
        "Energy",
        "energy",
        "total_increasing",
        Some("kWh"),
        "energy_kwh",
    ),
];

/// The discovery topic and document of meter `id`'s quantity `q`.
pub fn discovery(prefix: &str, id: u32, q: &Quantity) -> (String, Value) {
    let object = q.object;
    let mut doc = json!({
        "name": q.name,
        "unique_id": format!("gridpow_{id}_{object}"),
        "state_topic": state_topic(id),
        "value_template": format!("{{{{ value_json.{} }}}}", q.key),
        "device_class": q.device_class,
        "state_class": q.state_class,
        "availability_topic": availability_topic(id),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [format!("gridpow_meter_{id}")],
            "name": format!("gridpow meter {id}"),
            "manufacturer": "gridpow",
            "model": "ESP32 smart meter",
        },
        "origin": { "name": "gridpow" },
    });
    if let (Some(u), Some(o)) = (q.unit, doc.as_object_mut()) {
        o.insert("unit_of_measurement".into(), json!(u));
    }
    (format!("{prefix}/sensor/gridpow_{id}/{object}/config"), doc)
}

/// Why the export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// TLS material unusable.
    #[error("home_assistant TLS: {0}")]
    Tls(#[from] gridpow_common::tls::TlsError),
    /// The password file could not be read.
    #[error("home_assistant.password_file {path}: {source}")]
    Password {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn options(cfg: &ServerConfig) -> Result<MqttOptions, ExportError> {
    let ha: &HomeAssistantConfig = &cfg.home_assistant;
    let settings = gridpow_common::mqtt::ClientSettings {
        client_id: ha
            .client_id
            .clone()
            .unwrap_or_else(|| format!("gridpow-export-{}", cfg.server_id)),
        host: ha.host.clone().unwrap_or_else(|| cfg.mqtt.host.clone()),
        port: ha.port.unwrap_or(cfg.mqtt.port),
        keep_alive_s: cfg.mqtt.keep_alive_s,
        tls: ha.tls.then(|| gridpow_common::mqtt::ClientTls {
            ca: ha.ca.clone().unwrap_or_else(|| cfg.ca_path()),
            cert: ha.cert.clone().unwrap_or_default(),
            key: ha.key.clone().unwrap_or_default(),
            identity_configured: ha.cert.is_some(),
        }),
    };
    let mut o = settings.v311()?;
    o.set_request_channel_capacity(1024);
    if let Some(user) = &ha.username {
        let password = match &ha.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|source| ExportError::Password {
                    path: p.display().to_string(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        };
        o.set_credentials(user, password);
    }
    o.set_last_will(LastWill::new(
        EXPORT_STATUS,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// Starts the export when configured: the writer's queue end, and the task.
pub(crate) fn start(
    cfg: &ServerConfig,
    shared: Arc<Shared>,
) -> Result<Option<(ExportQueue, tokio::task::JoinHandle<()>)>, ExportError> {
    if !cfg.home_assistant.enabled {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel(cfg.home_assistant.queue);
    let options = options(cfg)?;
    tracing::info!(
        broker = %format!("{}:{}", options.broker_address().0, options.broker_address().1),
        prefix = %cfg.home_assistant.discovery_prefix,
        "Exporting verified readings over MQTT with Home Assistant discovery."
    );
    let task = tokio::spawn(export_task(
        options,
        cfg.home_assistant.discovery_prefix.clone(),
        rx,
        shared.clone(),
    ));
    Ok(Some((ExportQueue { tx, shared }, task)))
}

#[derive(Default)]
struct Known {
    newest: Option<(u32, u32)>,
    online: bool,
}

async fn export_task(
    options: MqttOptions,
    prefix: String,
    mut rx: mpsc::Receiver<ExportEvent>,
    shared: Arc<Shared>,
) {
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<()>();
    let poller = tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff = std::time::Duration::from_millis(200);
                    if conn_tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Export broker connection error.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    });
    let mut meters: HashMap<u32, Known> = HashMap::new();
    loop {
        tokio::select! {
            c = conn_rx.recv() => {
                if c.is_none() {
                    break;
                }
                let _ = client.publish(EXPORT_STATUS, QoS::AtLeastOnce, true, "online").await;
                // Discovery again after every (re)connection: retained, idempotent.
                for (&id, k) in &meters {
                    announce(&client, &prefix, id, &shared).await;
                    let a = if k.online { "online" } else { "offline" };
                    let _ = client.publish(availability_topic(id), QoS::AtLeastOnce, true, a).await;
                }
            }
            ev = rx.recv() => match ev {
                None => break,
                Some(ExportEvent::State(s)) => {
                    let k = meters.entry(s.meter_id).or_default();
                    let key = (s.epoch, s.seq);
                    if k.newest.is_some_and(|n| n >= key) {
                        continue;
                    }
                    let first = k.newest.is_none();
                    k.newest = Some(key);
                    if first {
                        announce(&client, &prefix, s.meter_id, &shared).await;
                    }
                    let body = state_json(&s).to_string();
                    if client.publish(state_topic(s.meter_id), QoS::AtLeastOnce, true, body).await.is_ok() {
                        add(&shared.metrics.export_states, 1);
                    }
                    if !k.online {
                        k.online = true;
                        let _ = client.publish(availability_topic(s.meter_id), QoS::AtLeastOnce, true, "online").await;
                    }
                }
                Some(ExportEvent::Silent(id)) => {
                    let k = meters.entry(id).or_default();
                    k.online = false;
                    let _ = client.publish(availability_topic(id), QoS::AtLeastOnce, true, "offline").await;
                }
            }
        }
    }
    // A clean disconnect sends no last will: say it ourselves.
    let _ = client
        .publish(EXPORT_STATUS, QoS::AtLeastOnce, true, "offline")
        .await;
    let _ = client.disconnect().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    poller.abort();
}

async fn announce(client: &AsyncClient, prefix: &str, id: u32, shared: &Shared) {
    for q in QUANTITIES {
        let (topic, doc) = discovery(prefix, id, q);
        if client
            .publish(topic, QoS::AtLeastOnce, true, doc.to_string())
            .await
            .is_ok()
        {
            add(&shared.metrics.export_discovery, 1);
        }
    }
}
