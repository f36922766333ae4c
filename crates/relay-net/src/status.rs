//! MQTT topics and the retained status message (docs/protocol.md §11), built
//! without allocation.

use core::fmt::Write as _;

use crate::error::{Capacity, Error};

/// Longest topic this crate builds: `gridpow/v1/relays/4294967295/log-requests`.
pub const MAX_TOPIC_LEN: usize = 41;

/// Longest status message: every number at its extreme, `"offline"`, with
/// radio counters and `tls_expiry_days` at `i64::MIN` (docs/protocol.md §11:
/// 240 bytes without `tls_expiry_days`, 279 with it).
pub const MAX_STATUS_LEN: usize = 279;

/// A topic name held inline.
pub type Topic = heapless::String<MAX_TOPIC_LEN>;

/// The tree every relay's topics live under (docs/protocol.md, "MQTT"):
/// `RELAYS/{relay id}/{leaf}`. The one definition of the topic names: the
/// host services' `gridpow_common::topics` and the broker ACL build on these.
pub const RELAYS: &str = "gridpow/v1/relays";

/// Leaf of the topic a relay publishes its blocks to (QoS 1).
pub const BLOCKS: &str = "blocks";

/// Leaf of a relay's retained status message, also its last will.
pub const STATUS: &str = "status";

/// Leaf of the topic servers publish a relay's commit receipts to (QoS 1).
pub const RECEIPTS: &str = "receipts";

/// Leaf of the topic a relay asks for log proofs on (QoS 0, §16).
pub const LOG_REQUESTS: &str = "log-requests";

/// Leaf of the topic servers answer a relay's log proof requests on (QoS 0).
pub const LOG_PROOFS: &str = "log-proofs";

/// Where grid servers publish the transparency log's newest signed
/// checkpoint (retained, QoS 1, the C2SP note text; docs/ledger.md).
pub const LOG_CHECKPOINT: &str = "gridpow/v1/log/checkpoint";

fn topic(relay_id: u32, leaf: &str) -> Topic {
    let mut t = Topic::new();
    // Cannot fail: MAX_TOPIC_LEN fits the longest id and leaf.
    let _ = write!(t, "{RELAYS}/{relay_id}/{leaf}");
    t
}

/// `gridpow/v1/relays/{id}/blocks`.
pub fn blocks_topic(relay_id: u32) -> Topic {
    topic(relay_id, BLOCKS)
}

/// `gridpow/v1/relays/{id}/receipts`.
pub fn receipts_topic(relay_id: u32) -> Topic {
    topic(relay_id, RECEIPTS)
}

/// `gridpow/v1/relays/{id}/log-requests`.
pub fn log_requests_topic(relay_id: u32) -> Topic {
    topic(relay_id, LOG_REQUESTS)
}

/// `gridpow/v1/relays/{id}/log-proofs`.
pub fn log_proofs_topic(relay_id: u32) -> Topic {
    topic(relay_id, LOG_PROOFS)
}

/// `gridpow/v1/relays/{id}/status`.
pub fn status_topic(relay_id: u32) -> Topic {
    topic(relay_id, STATUS)
}

/// The relay's radio counters since it started (docs/protocol.md §11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RadioCounts {
    /// Frames heard on the air.
    pub frames: u64,
    /// Frames accepted: new, journaled, acknowledged.
    pub accepted: u64,
    /// Frames already accepted, acknowledged again: the meter missed the ACK and re-sent.
    pub duplicates: u64,
    /// Frames refused at ingress (MAC, malformed, unknown meter, tag, replay).
    pub rejected: u64,
}

/// What the status message reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The relay.
    pub relay_id: u32,
    /// `"online"` or `"offline"`.
    pub online: bool,
    /// Height of the relay's last block, `null` before the first.
    pub height: Option<u64>,
    /// Wall-clock time of the message, Unix milliseconds.
    pub time_ms: u64,
    /// Radio counters, if the relay keeps them.
    pub radio: Option<RadioCounts>,
    /// Whole days until the first of the relay's TLS certificates in use
    /// (client certificate, CA) ends, negative once expired, if known.
    pub tls_expiry_days: Option<i64>,
}

struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl core::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl Status {
    /// Writes the status JSON into `buf` and returns it, e.g.
    /// `{"height":7,"relay_id":1,"state":"online","time_ms":1700000000000}`:
    /// keys sorted, no spaces, `radio` and `tls_expiry_days` only when present
    /// (test-vectors/status.json). The one writer of this format: the ESP32
    /// relay and the Linux relay both call it. [`MAX_STATUS_LEN`] bytes always
    /// suffice.
    ///
    /// # Errors
    /// [`Capacity::BufferTooSmall`] if `buf` cannot hold it.
    pub fn write_json<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, Error> {
        let capacity = buf.len();
        let too_small = Error::Capacity(Capacity::BufferTooSmall {
            what: "status message",
            needed: MAX_STATUS_LEN,
            capacity,
        });
        let mut c = Cursor { buf, len: 0 };
        if self.write_to(&mut c).is_err() {
            return Err(too_small);
        }
        let Cursor { buf, len } = c;
        let out = buf.get(..len).unwrap_or_default();
        // Only ASCII was written.
        core::str::from_utf8(out).map_err(|_| too_small)
    }

    /// [`write_json`](Self::write_json) into a string of [`MAX_STATUS_LEN`]
    /// bytes, which always suffice.
    pub fn to_json(&self) -> heapless::String<MAX_STATUS_LEN> {
        let mut s = heapless::String::new();
        // Cannot fail: MAX_STATUS_LEN fits the longest message (tested below).
        let _ = self.write_to(&mut s);
        s
    }

    /// The message's text, keys in sorted order (docs/protocol.md §11).
    fn write_to(&self, w: &mut impl core::fmt::Write) -> core::fmt::Result {
        let state = if self.online { "online" } else { "offline" };
        match self.height {
            Some(h) => write!(w, "{{\"height\":{h},")?,
            None => write!(w, "{{\"height\":null,")?,
        }
        if let Some(r) = self.radio {
            write!(
                w,
                "\"radio\":{{\"accepted\":{},\"duplicates\":{},\"frames\":{},\"rejected\":{}}},",
                r.accepted, r.duplicates, r.frames, r.rejected
            )?;
        }
        write!(
            w,
            "\"relay_id\":{},\"state\":\"{state}\",\"time_ms\":{}",
            self.relay_id, self.time_ms
        )?;
        if let Some(d) = self.tls_expiry_days {
            write!(w, ",\"tls_expiry_days\":{d}")?;
        }
        w.write_char('}')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_the_spec() {
        assert_eq!(blocks_topic(42).as_str(), "gridpow/v1/relays/42/blocks");
        assert_eq!(
            receipts_topic(u32::MAX).as_str(),
            "gridpow/v1/relays/4294967295/receipts"
        );
        assert_eq!(status_topic(7).as_str(), "gridpow/v1/relays/7/status");
        assert_eq!(
            log_requests_topic(u32::MAX).as_str(),
            "gridpow/v1/relays/4294967295/log-requests"
        );
        assert_eq!(
            log_proofs_topic(7).as_str(),
            "gridpow/v1/relays/7/log-proofs"
        );
    }

    #[test]
    fn status_json_is_the_vectors_text_byte_for_byte() {
        // test-vectors/status.json, which verify.py rebuilds independently.
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../test-vectors/status.json")).unwrap();
        let messages = doc["messages"].as_array().unwrap();
        assert!(messages.len() >= 7);
        assert!(messages.iter().any(|m| m["tls_expiry_days"].is_i64()));
        for m in messages {
            let r = &m["radio"];
            let n = |k: &str| r[k].as_u64().unwrap();
            let days = &m["tls_expiry_days"];
            assert!(days.is_null() || days.is_i64(), "{m}");
            let s = Status {
                relay_id: m["relay_id"].as_u64().unwrap() as u32,
                online: m["online"].as_bool().unwrap(),
                height: m["height"].as_u64(),
                time_ms: m["time_ms"].as_u64().unwrap(),
                radio: r.is_object().then(|| RadioCounts {
                    frames: n("frames"),
                    accepted: n("accepted"),
                    duplicates: n("duplicates"),
                    rejected: n("rejected"),
                }),
                tls_expiry_days: days.as_i64(),
            };
            let mut buf = [0u8; MAX_STATUS_LEN];
            assert_eq!(s.write_json(&mut buf).ok(), m["json"].as_str());
            assert_eq!(Some(s.to_json().as_str()), m["json"].as_str());
        }
    }

    #[test]
    fn status_json_is_serde_json_with_sorted_keys() {
        // A differential check against a general JSON writer.
        let radio = RadioCounts {
            frames: 10,
            accepted: 7,
            duplicates: 2,
            rejected: 1,
        };
        for (online, height, time_ms, radio, tls_expiry_days) in [
            (true, Some(41), 1_700_000_000_123, None, None),
            (false, None, 0, None, None),
            (false, Some(u64::MAX), u64::MAX, None, None),
            (true, Some(3), 5, Some(radio), None),
            (true, None, 5, Some(radio), None),
            (true, Some(3), 5, Some(radio), Some(12)),
            (false, None, 5, None, Some(-3)),
            (true, Some(3), 5, None, Some(0)),
            (false, Some(u64::MAX), u64::MAX, Some(radio), Some(i64::MIN)),
            (true, None, 1, None, Some(i64::MAX)),
        ] {
            let s = Status {
                relay_id: 7,
                online,
                height,
                time_ms,
                radio,
                tls_expiry_days,
            };
            // serde_json's map is a BTreeMap: keys come out sorted.
            let mut expected = serde_json::json!({
                "relay_id": 7,
                "state": if online { "online" } else { "offline" },
                "height": height,
                "time_ms": time_ms,
            });
            if let Some(r) = radio {
                expected["radio"] = serde_json::json!({
                    "frames": r.frames, "accepted": r.accepted,
                    "duplicates": r.duplicates, "rejected": r.rejected,
                });
            }
            if let Some(d) = tls_expiry_days {
                expected["tls_expiry_days"] = serde_json::json!(d);
            }
            let expected = expected.to_string();
            let mut buf = [0u8; MAX_STATUS_LEN];
            assert_eq!(s.write_json(&mut buf).ok(), Some(expected.as_str()));
            assert_eq!(s.to_json().as_str(), expected);
        }
    }

    #[test]
    fn longest_status_fits_max_status_len_exactly() {
        let mut s = Status {
            relay_id: u32::MAX,
            online: false,
            height: Some(u64::MAX),
            time_ms: u64::MAX,
            radio: Some(RadioCounts {
                frames: u64::MAX,
                accepted: u64::MAX,
                duplicates: u64::MAX,
                rejected: u64::MAX,
            }),
            tls_expiry_days: Some(i64::MIN),
        };
        // docs/protocol.md §11: at most 279 bytes.
        assert_eq!(MAX_STATUS_LEN, 279);
        let mut buf = [0u8; MAX_STATUS_LEN];
        let json = s.write_json(&mut buf).map(str::len);
        assert_eq!(json.ok(), Some(MAX_STATUS_LEN));
        assert_eq!(s.to_json().len(), MAX_STATUS_LEN);
        let mut small = [0u8; MAX_STATUS_LEN - 1];
        assert!(s.write_json(&mut small).is_err());
        // i64::MIN is the longest number of days; without them, 240 bytes.
        s.tls_expiry_days = Some(i64::MAX);
        assert_eq!(s.to_json().len(), MAX_STATUS_LEN - 1);
        s.tls_expiry_days = None;
        assert_eq!(s.to_json().len(), 240);
    }
}
