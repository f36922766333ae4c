//! The core's `Sender` has its backlog capacity as a const generic; the
//! fleet picks one of a few capacities at run time.

use gridpow_proto::crypto::{MeterSecret, RustCrypto};
use gridpow_proto::sender::{Acked, PushOutcome, Sender, SenderConfig, SenderStats};
use gridpow_proto::wire::Reading;
use gridpow_proto::{Error, Instant};

macro_rules! any_sender {
    ($($variant:ident = $n:literal),* $(,)?) => {
        /// A [`Sender`] with one of the supported backlog capacities.
        pub enum AnySender {
            $(
                #[doc = concat!("Backlog of ", stringify!($n), " readings.")]
                $variant(Box<Sender<RustCrypto, $n>>),
            )*
        }

        impl AnySender {
            /// A sender with backlog `capacity` (one of [`crate::config::BACKLOG_SIZES`]).
            pub fn new(capacity: usize, cfg: SenderConfig, secret: &MeterSecret, epoch: u32, first_seq: u32) -> Result<Self, Error> {
                match capacity {
                    $($n => Ok(AnySender::$variant(Box::new(Sender::new(RustCrypto, cfg, secret, epoch, first_seq)?))),)*
                    _ => Err(gridpow_proto::Misuse::InvalidArgument.into()),
                }
            }
        }

        macro_rules! dispatch {
            ($self:ident, $s:ident => $e:expr) => {
                match $self {
                    $(AnySender::$variant($s) => $e,)*
                }
            };
        }
    };
}

any_sender!(S16 = 16, S64 = 64, S256 = 256, S1024 = 1024, S4096 = 4096);

impl AnySender {
    /// See [`Sender::push_reading`].
    pub fn push_reading(&mut self, r: Reading) -> PushOutcome {
        dispatch!(self, s => s.push_reading(r))
    }
    /// See [`Sender::poll_transmit`].
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        entropy: u32,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        dispatch!(self, s => s.poll_transmit(now, entropy, buf))
    }
    /// See [`Sender::poll_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        dispatch!(self, s => s.poll_timeout())
    }
    /// See [`Sender::handle_ack`].
    pub fn handle_ack(&mut self, now: Instant, bytes: &[u8]) -> Result<Acked, Error> {
        dispatch!(self, s => s.handle_ack(now, bytes))
    }
    /// See [`Sender::stats`].
    pub fn stats(&self) -> SenderStats {
        dispatch!(self, s => *s.stats())
    }
    /// See [`Sender::unconfirmed`].
    pub fn unconfirmed(&self) -> usize {
        dispatch!(self, s => s.unconfirmed())
    }
    /// See [`Sender::wall_clock_ms`].
    pub fn wall_clock_ms(&self, now: Instant) -> Option<u64> {
        dispatch!(self, s => s.wall_clock_ms(now))
    }
    /// See [`Sender::boot_epoch`].
    pub fn boot_epoch(&self) -> u32 {
        dispatch!(self, s => s.boot_epoch())
    }
}
