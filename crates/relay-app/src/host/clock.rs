use std::time::{SystemTime, UNIX_EPOCH};

use gridpow_proto::Instant;

use crate::traits::Clock;

/// The host's clocks: `now` counts from the clock's creation on tokio's
/// monotonic clock (so tests with paused time control it), `wall_ms` is the
/// system time (always known), sleeps are tokio timers.
#[derive(Clone, Copy, Debug)]
pub struct StdClock {
    epoch: tokio::time::Instant,
}

impl Default for StdClock {
    fn default() -> Self {
        StdClock {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Clock for StdClock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as u64)
    }

    fn wall_ms(&self) -> Option<u64> {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64)
    }

    async fn sleep_until(&self, at: Instant) {
        let at = self.epoch + std::time::Duration::from_micros(at.as_micros());
        tokio::time::sleep_until(at).await;
    }
}
