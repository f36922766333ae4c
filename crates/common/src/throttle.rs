//! Rate-limited logging: a flood of refusals stays visible in the log without
//! filling the disk. Every refusal is still counted in the metrics; the log
//! gets at most one line per key per interval, saying how many it left out.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per key (a refusal cause, a reason) per interval.
#[derive(Debug)]
pub struct LogThrottle<K = ()> {
    interval: Duration,
    /// Per key: when the last line went out, and how many were left out since.
    last: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Eq + Hash> LogThrottle<K> {
    /// A throttle letting one line per key through every `interval`.
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event of `key` at `now`: `Some(left_out)` when a line is due
    /// (`left_out` events of this key went unlogged since the previous line),
    /// `None` when this one is only to be counted.
    pub fn admit(&self, key: K, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update of two
        // integers; the state is still usable.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(&key) {
            Some((at, left_out)) if now.saturating_duration_since(*at) < self.interval => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                *at = now;
                Some(std::mem::take(left_out))
            }
            None => {
                last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

impl LogThrottle<()> {
    /// [`LogThrottle::admit`] for a throttle with a single key.
    pub fn ready(&self, now: Instant) -> Option<u64> {
        self.admit((), now)
    }
}

impl<K: Eq + Hash> Default for LogThrottle<K> {
    /// One line per key per second.
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_goes_through_and_the_rest_are_counted() {
        let t = LogThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.admit("a", t0), Some(0));
        assert_eq!(t.admit("a", t0 + Duration::from_millis(10)), None);
        assert_eq!(t.admit("a", t0 + Duration::from_millis(999)), None);
        assert_eq!(t.admit("b", t0 + Duration::from_millis(500)), Some(0));
        assert_eq!(t.admit("a", t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(t.admit("a", t0 + Duration::from_millis(1001)), None);
        let single = LogThrottle::default();
        assert_eq!(single.ready(t0), Some(0));
        assert_eq!(single.ready(t0), None);
    }
}
