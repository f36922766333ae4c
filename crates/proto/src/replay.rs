//! The per-meter anti-replay window: a bitmap over the last 64 counters of the
//! newest boot epoch, as IPsec's anti-replay window (RFC 4303, 3.4.3).
//!
//! Use [`ReplayWindow::check`] before authenticating and
//! [`ReplayWindow::accept`] only after the tag verified, so forged frames can
//! never move the window.

/// Counters a window remembers below its highest one.
pub const WINDOW_BITS: u32 = 64;

/// Where a (boot epoch, counter) pair stands against the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayCheck {
    /// Never seen: may be accepted once authenticated.
    New,
    /// Seen and accepted before (inside the window): a retransmission.
    Duplicate,
    /// Below the window: cannot be told apart from a replay, refused.
    TooOld,
    /// From an older boot epoch than the newest accepted, refused.
    StaleEpoch,
}

/// The window's state; plain data so it can be persisted and restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReplayWindow {
    /// Whether any frame was accepted yet.
    pub started: bool,
    /// Boot epoch of the newest accepted frame.
    pub epoch: u32,
    /// Highest accepted counter in that epoch.
    pub top: u32,
    /// Bit `i` set: counter `top - i` was accepted.
    pub bitmap: u64,
}

impl ReplayWindow {
    /// A window that has seen nothing.
    pub const fn new() -> Self {
        ReplayWindow {
            started: false,
            epoch: 0,
            top: 0,
            bitmap: 0,
        }
    }

    /// Classifies `(epoch, counter)` without changing the window.
    pub fn check(&self, epoch: u32, counter: u32) -> ReplayCheck {
        if !self.started || epoch > self.epoch {
            return ReplayCheck::New;
        }
        if epoch < self.epoch {
            return ReplayCheck::StaleEpoch;
        }
        if counter > self.top {
            return ReplayCheck::New;
        }
        let behind = self.top - counter;
        if behind >= WINDOW_BITS {
            return ReplayCheck::TooOld;
        }
        if self.bitmap & (1u64 << behind) != 0 {
            ReplayCheck::Duplicate
        } else {
            ReplayCheck::New
        }
    }

    /// Records `(epoch, counter)` as accepted. Call only when [`check`](Self::check)
    /// said [`ReplayCheck::New`] and the frame authenticated; returns whether the
    /// pair was new (a repeated call changes nothing and returns `false`).
    pub fn accept(&mut self, epoch: u32, counter: u32) -> bool {
        match self.check(epoch, counter) {
            ReplayCheck::New => {}
            _ => return false,
        }
        if !self.started || epoch > self.epoch {
            *self = ReplayWindow {
                started: true,
                epoch,
                top: counter,
                bitmap: 1,
            };
        } else if counter > self.top {
            let shift = counter - self.top;
            self.bitmap = if shift >= WINDOW_BITS {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.top = counter;
        } else {
            self.bitmap |= 1u64 << (self.top - counter);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_frame_is_rejected_after_window_moves() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(1, 5));
        assert_eq!(w.check(1, 5), ReplayCheck::Duplicate);
        assert!(w.accept(1, 5 + WINDOW_BITS));
        assert_eq!(w.check(1, 5), ReplayCheck::TooOld);
        assert_eq!(w.check(1, 6), ReplayCheck::New);
        assert!(!w.accept(1, 5));
    }

    #[test]
    fn new_epoch_resets_the_window_and_old_epochs_are_stale() {
        let mut w = ReplayWindow::new();
        w.accept(3, 1000);
        assert_eq!(w.check(4, 0), ReplayCheck::New);
        w.accept(4, 0);
        assert_eq!(w.check(3, 1001), ReplayCheck::StaleEpoch);
        assert_eq!(w.check(4, 0), ReplayCheck::Duplicate);
    }

    #[test]
    fn out_of_order_counters_inside_the_window_are_accepted_once() {
        let mut w = ReplayWindow::new();
        w.accept(0, 100);
        assert!(w.accept(0, 97));
        assert!(!w.accept(0, 97));
        assert_eq!(w.check(0, 98), ReplayCheck::New);
        assert_eq!(w.check(0, 100 - WINDOW_BITS), ReplayCheck::TooOld);
        assert_eq!(w.check(0, 101 - WINDOW_BITS), ReplayCheck::New);
    }
}
