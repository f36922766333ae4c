//! MQTT topic names (spec: docs/protocol.md, "MQTT") as the host services
//! use them, built from the protocol's one definition in
//! `gridpow_relay_net::topics` (the standalone relay's no_std transport
//! builds the same names without allocation).

pub use gridpow_relay_net::topics::{
    BLOCKS, LOG_CHECKPOINT, LOG_PROOFS, LOG_REQUESTS, RECEIPTS, RELAYS, STATUS,
};

/// `gridpow/v1/relays/{relay}/{leaf}`; `relay` is an id or the wildcard `+`.
fn relay_topic(relay: impl std::fmt::Display, leaf: &str) -> String {
    format!("{RELAYS}/{relay}/{leaf}")
}

/// Where relay `id` publishes its blocks (QoS 1, binary block bytes).
pub fn blocks(relay_id: u32) -> String {
    relay_topic(relay_id, BLOCKS)
}

/// Retained status of relay `id` (JSON), also its last will.
pub fn status(relay_id: u32) -> String {
    relay_topic(relay_id, STATUS)
}

/// Where servers publish commit receipts for relay `id` (QoS 1, binary receipts).
pub fn receipts(relay_id: u32) -> String {
    relay_topic(relay_id, RECEIPTS)
}

/// Filter matching every relay's blocks: `gridpow/v1/relays/+/blocks`.
pub fn all_blocks() -> String {
    relay_topic('+', BLOCKS)
}

/// Filter matching every relay's status: `gridpow/v1/relays/+/status`.
pub fn all_status() -> String {
    relay_topic('+', STATUS)
}

/// Where relay `id` asks for log proofs (QoS 0, binary requests, §16).
pub fn log_requests(relay_id: u32) -> String {
    relay_topic(relay_id, LOG_REQUESTS)
}

/// Where servers answer relay `id`'s log proof requests (QoS 0, binary proofs).
pub fn log_proofs(relay_id: u32) -> String {
    relay_topic(relay_id, LOG_PROOFS)
}

/// Filter matching every relay's log proof requests.
pub fn all_log_requests() -> String {
    relay_topic('+', LOG_REQUESTS)
}

/// Filter matching every relay's log proofs.
pub fn all_log_proofs() -> String {
    relay_topic('+', LOG_PROOFS)
}

/// Relay id from a log request topic, if it is one.
pub fn relay_of_log_requests_topic(topic: &str) -> Option<u32> {
    relay_of(topic, LOG_REQUESTS)
}

/// Filter matching every relay's receipts: `gridpow/v1/relays/+/receipts`.
pub fn all_receipts() -> String {
    relay_topic('+', RECEIPTS)
}

/// Name of the shared-subscription group of grid servers.
pub const SERVER_GROUP: &str = "gridpow-servers";

/// The MQTT 5 shared subscription servers use: `$share/gridpow-servers/gridpow/v1/relays/+/blocks`.
pub fn shared_blocks() -> String {
    format!("$share/{SERVER_GROUP}/{}", all_blocks())
}

fn relay_of(topic: &str, leaf: &str) -> Option<u32> {
    let rest = topic.strip_prefix(RELAYS)?.strip_prefix('/')?;
    let (id, tail) = rest.split_once('/')?;
    (tail == leaf).then_some(())?;
    id.parse().ok()
}

/// Relay id from a blocks topic, if it is one.
pub fn relay_of_blocks_topic(topic: &str) -> Option<u32> {
    relay_of(topic, BLOCKS)
}

/// Relay id from a status topic, if it is one.
pub fn relay_of_status_topic(topic: &str) -> Option<u32> {
    relay_of(topic, STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_id_is_read_back_from_its_blocks_topic_only() {
        assert_eq!(relay_of_blocks_topic(&blocks(42)), Some(42));
        assert_eq!(relay_of_blocks_topic(&status(42)), None);
        assert_eq!(relay_of_status_topic(&status(42)), Some(42));
        assert_eq!(relay_of_status_topic(&blocks(42)), None);
        assert_eq!(relay_of_blocks_topic("gridpow/v1/relays/x/blocks"), None);
        assert_eq!(
            shared_blocks(),
            "$share/gridpow-servers/gridpow/v1/relays/+/blocks"
        );
    }

    #[test]
    fn host_topics_are_the_ones_the_no_std_transport_builds() {
        assert_eq!(blocks(7), gridpow_relay_net::blocks_topic(7).as_str());
        assert_eq!(status(7), gridpow_relay_net::status_topic(7).as_str());
        assert_eq!(receipts(7), gridpow_relay_net::receipts_topic(7).as_str());
        assert_eq!(all_status(), "gridpow/v1/relays/+/status");
        assert_eq!(all_receipts(), "gridpow/v1/relays/+/receipts");
    }
}
