//! Noticing that no relay answers: a fleet whose frames get no ACK at all
//! would otherwise only show a growing "waiting" count. [`AckWatch`] is a
//! pure decision over the fleet's counters and the time (given, not read),
//! and [`no_ack_message`] says what to check.

use crate::config::{FleetConfig, ENV_PREFIX};

/// What changed since the last observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckEvent {
    /// Frames went out but no ACK came for this many seconds (reported once per silence).
    Silent {
        /// Seconds since the last ACK, or since the first frame if none came yet.
        for_s: u64,
    },
    /// ACKs arrive again after a reported silence.
    Answering,
}

/// Watches the fleet's `frames_sent` and `acknowledged` counters.
#[derive(Clone, Debug)]
pub struct AckWatch {
    after_ms: u64,
    acknowledged: u64,
    /// When the current wait for an ACK began (last ACK, or first frame).
    since_ms: Option<u64>,
    warned: bool,
}

impl AckWatch {
    /// A watch that reports a silence of `after_s` seconds (0: never).
    pub fn new(after_s: u64) -> Self {
        AckWatch {
            after_ms: after_s.saturating_mul(1000),
            acknowledged: 0,
            since_ms: None,
            warned: false,
        }
    }

    /// Feeds the counters at `now_ms` (any monotonic milliseconds).
    pub fn observe(
        &mut self,
        now_ms: u64,
        frames_sent: u64,
        acknowledged: u64,
    ) -> Option<AckEvent> {
        if acknowledged > self.acknowledged {
            self.acknowledged = acknowledged;
            self.since_ms = Some(now_ms);
            if self.warned {
                self.warned = false;
                return Some(AckEvent::Answering);
            }
            return None;
        }
        if frames_sent == 0 {
            return None;
        }
        let since = *self.since_ms.get_or_insert(now_ms);
        let silent = now_ms.saturating_sub(since);
        if !self.warned && self.after_ms > 0 && silent >= self.after_ms {
            self.warned = true;
            return Some(AckEvent::Silent {
                for_s: silent / 1000,
            });
        }
        None
    }
}

/// The warning for [`AckEvent::Silent`]: where the meters send, which
/// settings say so, and what to check on the relay's side.
pub fn no_ack_message(cfg: &FleetConfig, for_s: u64, waiting: u64) -> String {
    let relay_mac = gridpow_common::format_mac(&cfg.relay_mac());
    format!(
        "no relay has answered for {for_s} s ({waiting} readings waiting): the meters send to the relay at {addr} \
         ([radio] udp_relay, {p}__RADIO__UDP_RELAY) as MAC {relay_mac} (relay_mac). Check that `gridpow relay` runs \
         and listens there ([radio] udp_listen of relay.toml), that its key bundle holds these meters' hop keys \
         (exported after `gridpow keys add-meters`), and its log for rejected frames. Readings stay queued meanwhile.",
        addr = cfg.radio.udp_relay,
        p = ENV_PREFIX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_reported_once_after_the_threshold_and_recovery_once() {
        let mut w = AckWatch::new(15);
        // Nothing sent yet: no expectation of an ACK.
        assert_eq!(w.observe(0, 0, 0), None);
        assert_eq!(w.observe(60_000, 0, 0), None);
        // Frames go out from 60 s on, no ACK.
        assert_eq!(w.observe(61_000, 51, 0), None);
        assert_eq!(w.observe(75_000, 120, 0), None);
        assert_eq!(
            w.observe(76_000, 130, 0),
            Some(AckEvent::Silent { for_s: 15 })
        );
        assert_eq!(w.observe(120_000, 400, 0), None, "reported once");
        assert_eq!(w.observe(121_000, 410, 6), Some(AckEvent::Answering));
        assert_eq!(w.observe(130_000, 420, 12), None);
        // A second silence counts from the last ACK.
        assert_eq!(w.observe(144_000, 500, 12), None);
        assert_eq!(
            w.observe(145_000, 510, 12),
            Some(AckEvent::Silent { for_s: 15 })
        );
    }

    #[test]
    fn a_threshold_of_zero_never_warns() {
        let mut w = AckWatch::new(0);
        assert_eq!(w.observe(0, 10, 0), None);
        assert_eq!(w.observe(3_600_000, 10_000, 0), None);
    }

    #[test]
    fn acks_arriving_in_time_never_warn() {
        let mut w = AckWatch::new(15);
        for s in 0..100u64 {
            assert_eq!(w.observe(s * 1000, s * 10 + 1, s * 6), None, "at {s} s");
        }
    }

    #[test]
    fn the_warning_names_the_relay_address_setting_and_what_to_check() {
        let cfg = FleetConfig::default();
        let m = no_ack_message(&cfg, 15, 51);
        assert!(
            m.contains("15 s") && m.contains("51 readings waiting"),
            "{m}"
        );
        assert!(m.contains("127.0.0.1:47800"), "{m}");
        assert!(m.contains("[radio] udp_relay"), "{m}");
        assert!(m.contains("GRIDPOW_METERS__RADIO__UDP_RELAY"), "{m}");
        assert!(
            m.contains("gridpow relay") && m.contains("udp_listen"),
            "{m}"
        );
    }
}
