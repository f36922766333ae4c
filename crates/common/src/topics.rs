//! MQTT topic names (spec: docs/protocol.md, "MQTT").

/// Prefix of every gridpow topic.
pub const PREFIX: &str = "gridpow/v1";

/// Where relay `id` publishes its blocks (QoS 1, binary block bytes).
pub fn blocks(relay_id: u32) -> String {
    format!("{PREFIX}/relays/{relay_id}/blocks")
}

/// Retained status of relay `id` (JSON), also its last will.
pub fn status(relay_id: u32) -> String {
    format!("{PREFIX}/relays/{relay_id}/status")
}

/// Where servers publish commit receipts for relay `id` (QoS 1, binary receipts).
pub fn receipts(relay_id: u32) -> String {
    format!("{PREFIX}/relays/{relay_id}/receipts")
}

/// Filter matching every relay's blocks.
pub const ALL_BLOCKS: &str = "gridpow/v1/relays/+/blocks";

/// Name of the shared-subscription group of grid servers.
pub const SERVER_GROUP: &str = "gridpow-servers";

/// The MQTT 5 shared subscription servers use: `$share/gridpow-servers/gridpow/v1/relays/+/blocks`.
pub fn shared_blocks() -> String {
    format!("$share/{SERVER_GROUP}/{ALL_BLOCKS}")
}

/// Filter matching every relay's status.
pub const ALL_STATUS: &str = "gridpow/v1/relays/+/status";

fn relay_of(topic: &str, leaf: &str) -> Option<u32> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix("/relays/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail == leaf).then_some(())?;
    id.parse().ok()
}

/// Relay id from a blocks topic, if it is one.
pub fn relay_of_blocks_topic(topic: &str) -> Option<u32> {
    relay_of(topic, "blocks")
}

/// Relay id from a status topic, if it is one.
pub fn relay_of_status_topic(topic: &str) -> Option<u32> {
    relay_of(topic, "status")
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
}
