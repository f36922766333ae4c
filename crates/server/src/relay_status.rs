//! What relays say about themselves: the retained status message each relay
//! publishes (docs/protocol.md §11), with its radio counters when it keeps
//! them. The server keeps the newest per relay for the dashboard and the API.
//!
//! A status message is not signed: it is as trustworthy as the broker's ACL
//! (each relay may publish only its own topics, docs/deploy). It never
//! touches the ledger; a malformed one is counted, logged and dropped.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Largest status payload read (the longest valid one is 279 bytes, spec §11).
pub const MAX_STATUS_BYTES: usize = 1024;
/// Most relays whose status is kept; others are counted and dropped.
pub const MAX_RELAYS: usize = 65_536;

/// A relay's radio counters since it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RadioReport {
    /// Frames heard on the air.
    pub frames: u64,
    /// Frames accepted: new, journaled, acknowledged.
    pub accepted: u64,
    /// Frames already accepted and acknowledged again: the meter missed the
    /// ACK and re-sent (retransmissions).
    pub duplicates: u64,
    /// Frames refused at ingress (MAC, malformed, unknown meter, tag, replay).
    pub rejected: u64,
}

/// A relay's newest status message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportedStatus {
    /// The relay.
    pub relay_id: u32,
    /// `online`, or `offline` (its own goodbye or the broker's last will).
    #[serde(rename = "state", with = "state")]
    #[schema(value_type = String)]
    pub online: bool,
    /// Its chain head's height (sealed and durable), `null` before genesis.
    pub height: Option<u64>,
    /// When it sent the message, relay clock, Unix ms.
    pub time_ms: u64,
    /// Its radio counters, if it keeps them (the ESP32 relay does not yet).
    pub radio: Option<RadioReport>,
    /// Whole days until the first of its TLS certificates (client
    /// certificate, CA) ends, if it says (`gridpow relay` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_expiry_days: Option<i64>,
    /// When this server received it, Unix ms.
    #[serde(default)]
    pub received_ms: u64,
}

mod state {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(online: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *online { "online" } else { "offline" })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        match <&str>::deserialize(d)? {
            "online" => Ok(true),
            "offline" => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "state {other:?} is neither online nor offline"
            ))),
        }
    }
}

/// Why a status message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    /// Longer than [`MAX_STATUS_BYTES`].
    #[error("status message of {0} bytes is longer than {MAX_STATUS_BYTES}")]
    TooLong(usize),
    /// Not the JSON of §11.
    #[error("status message is not the JSON of docs/protocol.md §11: {0}")]
    Malformed(String),
    /// The body names another relay than the topic.
    #[error("status message on relay {topic}'s topic names relay {body}")]
    WrongRelay {
        /// The relay of the topic.
        topic: u32,
        /// The relay of the body.
        body: u32,
    },
}

/// Reads a status message received on relay `topic_relay`'s status topic.
pub fn parse(
    topic_relay: u32,
    payload: &[u8],
    received_ms: u64,
) -> Result<ReportedStatus, StatusError> {
    if payload.len() > MAX_STATUS_BYTES {
        return Err(StatusError::TooLong(payload.len()));
    }
    let mut s: ReportedStatus =
        serde_json::from_slice(payload).map_err(|e| StatusError::Malformed(e.to_string()))?;
    if s.relay_id != topic_relay {
        return Err(StatusError::WrongRelay {
            topic: topic_relay,
            body: s.relay_id,
        });
    }
    s.received_ms = received_ms;
    Ok(s)
}

/// The newest status of each relay.
#[derive(Debug, Default)]
pub struct RelayStatuses {
    by_relay: Mutex<BTreeMap<u32, ReportedStatus>>,
}

impl RelayStatuses {
    /// Keeps `s` as its relay's newest status (an older message, by the
    /// relay's clock, does not replace a newer one); `false` if it was dropped
    /// because [`MAX_RELAYS`] relays are already known.
    pub fn record(&self, s: ReportedStatus) -> bool {
        let Ok(mut m) = self.by_relay.lock() else {
            return false;
        };
        let known = m.len();
        match m.entry(s.relay_id) {
            std::collections::btree_map::Entry::Occupied(mut old) => {
                if s.time_ms >= old.get().time_ms {
                    old.insert(s);
                }
                true
            }
            std::collections::btree_map::Entry::Vacant(v) if known < MAX_RELAYS => {
                v.insert(s);
                true
            }
            std::collections::btree_map::Entry::Vacant(_) => false,
        }
    }

    /// Every relay's newest status, by relay id.
    pub fn all(&self) -> Vec<ReportedStatus> {
        self.by_relay
            .lock()
            .map(|m| m.values().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_status_json_is_read_with_and_without_radio_counters() {
        let radio = gridpow_relay_status_sample();
        let s = parse(7, radio.as_bytes(), 99).unwrap();
        assert_eq!(
            s,
            ReportedStatus {
                relay_id: 7,
                online: true,
                height: Some(3),
                time_ms: 5,
                radio: Some(RadioReport {
                    frames: 10,
                    accepted: 7,
                    duplicates: 2,
                    rejected: 1
                }),
                tls_expiry_days: None,
                received_ms: 99,
            }
        );
        let bare = br#"{"height":null,"relay_id":7,"state":"offline","time_ms":1}"#;
        let s = parse(7, bare, 0).unwrap();
        assert!(!s.online && s.height.is_none() && s.radio.is_none());
        let tls =
            br#"{"height":null,"relay_id":7,"state":"online","time_ms":1,"tls_expiry_days":12}"#;
        assert_eq!(parse(7, tls, 0).unwrap().tls_expiry_days, Some(12));
    }

    /// The first message of test-vectors/status.json (relay 7 here).
    fn gridpow_relay_status_sample() -> String {
        r#"{"height":3,"radio":{"accepted":7,"duplicates":2,"frames":10,"rejected":1},"relay_id":7,"state":"online","time_ms":5}"#.to_string()
    }

    #[test]
    fn hostile_status_messages_are_refused_with_their_reason() {
        assert_eq!(
            parse(1, &[b' '; MAX_STATUS_BYTES + 1], 0),
            Err(StatusError::TooLong(MAX_STATUS_BYTES + 1))
        );
        for bad in [
            &b"not json"[..],
            b"",
            br#"{"relay_id":1}"#,
            br#"{"height":1,"relay_id":1,"state":"busy","time_ms":1}"#,
            br#"{"height":-1,"relay_id":1,"state":"online","time_ms":1}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                matches!(parse(1, bad, 0), Err(StatusError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let other = br#"{"height":1,"relay_id":2,"state":"online","time_ms":1}"#;
        assert_eq!(
            parse(1, other, 0),
            Err(StatusError::WrongRelay { topic: 1, body: 2 })
        );
    }

    #[test]
    fn the_vectors_messages_are_read_and_their_refusals_refused() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../test-vectors/status.json")).unwrap();
        for m in doc["messages"].as_array().unwrap() {
            let relay = m["relay_id"].as_u64().unwrap() as u32;
            let s = parse(relay, m["json"].as_str().unwrap().as_bytes(), 1).unwrap();
            assert_eq!(s.online, m["online"].as_bool().unwrap());
            assert_eq!(s.height, m["height"].as_u64());
            assert_eq!(s.time_ms, m["time_ms"].as_u64().unwrap());
            assert_eq!(
                s.radio.map(|r| r.duplicates),
                m["radio"]["duplicates"].as_u64()
            );
            let days = &m["tls_expiry_days"];
            assert!(days.is_null() || days.is_i64(), "{m}");
            assert_eq!(s.tls_expiry_days, days.as_i64(), "{m}");
        }
        assert!(
            doc["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["tls_expiry_days"].is_i64()),
            "test-vectors/status.json has no tls_expiry_days"
        );
        for r in doc["refused"].as_array().unwrap() {
            let relay = r["topic_relay"].as_u64().unwrap() as u32;
            let got = parse(relay, r["json"].as_str().unwrap().as_bytes(), 1);
            let reason = match got {
                Err(StatusError::Malformed(_)) => "malformed",
                Err(StatusError::WrongRelay { .. }) => "wrong_relay",
                Err(StatusError::TooLong(_)) => "too_long",
                Ok(_) => "kept",
            };
            assert_eq!(reason, r["reason"].as_str().unwrap(), "{r}");
        }
    }

    #[test]
    fn the_newest_status_of_each_relay_is_kept() {
        let statuses = RelayStatuses::default();
        let at = |relay_id, time_ms| ReportedStatus {
            relay_id,
            online: true,
            height: None,
            time_ms,
            radio: None,
            tls_expiry_days: None,
            received_ms: 0,
        };
        assert!(statuses.record(at(2, 10)));
        assert!(statuses.record(at(1, 10)));
        assert!(statuses.record(at(2, 5)), "kept, but not replacing");
        assert!(statuses.record(at(1, 20)));
        let all: Vec<_> = statuses
            .all()
            .iter()
            .map(|s| (s.relay_id, s.time_ms))
            .collect();
        assert_eq!(all, vec![(1, 20), (2, 10)]);
    }
}
