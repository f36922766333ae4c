//! The relay-side ingress: every frame heard on the air passes, in order,
//! 1. the MAC allow-list (cheap, before any parsing; spoofable, so only a filter),
//! 2. parsing, 3. the meter registry, 4. the replay window pre-check,
//! 5. the hop tag, 6. duplicate detection, 7. reading de-duplication.
//!
//! The relay holds each meter's hop keys only: it checks the hop tag and reads
//! the clear header (meter, epoch, counter, first sequence number, count), but
//! it cannot open, alter or invent readings, which stay under the meter's
//! end-to-end key until the grid server opens them.
//!
//! A frame that passes is [`Verdict::Accepted`] (deliver it once) or
//! [`Verdict::Duplicate`] (a retransmission whose ACK was lost: ACK it again,
//! deliver nothing). The caller sends the ACK with [`Ingress::emit_ack`] when
//! it is ready to vouch for the frame, for example after a journal commit.

use crate::crypto::{CryptoProvider, HopKeys};
use crate::replay::{ReplayCheck, ReplayWindow};
use crate::wire::ack::{AckRepr, FLAG_DUPLICATE};
use crate::wire::uplink::UplinkPacket;
use crate::{Capacity, Error, MacAddr, Rejected};

/// Readings of one boot epoch below `next_seq` have been delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeliveredMark {
    /// Boot epoch the mark refers to.
    pub epoch: u32,
    /// First sequence number not yet delivered.
    pub next_seq: u32,
}

/// Per-meter state of the ingress.
pub struct MeterEntry {
    /// The meter id.
    pub meter_id: u32,
    /// The MAC address registered for the meter, if any.
    pub mac: Option<MacAddr>,
    /// The meter's hop keys (never its end-to-end key) under the key id it
    /// is registered with.
    pub keys: HopKeys,
    /// Its hop keys under the site's other listed key id while a site secret
    /// is rotated (protocol §3): a frame under either key id is judged, and
    /// its ACK made, with the keys of the frame's own key id.
    pub other_keys: Option<HopKeys>,
    /// Anti-replay window over frame counters.
    pub window: ReplayWindow,
    /// Reading de-duplication mark.
    pub delivered: Option<DeliveredMark>,
}

impl MeterEntry {
    /// A meter with no history.
    pub fn new(meter_id: u32, mac: Option<MacAddr>, keys: HopKeys) -> Self {
        MeterEntry {
            meter_id,
            mac,
            keys,
            other_keys: None,
            window: ReplayWindow::new(),
            delivered: None,
        }
    }

    /// The hop keys for frames under `key_id`, if the entry holds them.
    pub fn keys_for(&self, key_id: u8) -> Option<&HopKeys> {
        core::iter::once(&self.keys)
            .chain(self.other_keys.as_ref())
            .find(|k| k.key_id == key_id)
    }

    /// Adds (or replaces) the meter's hop keys under `keys.key_id`. An entry
    /// holds at most [`MAX_KEY_IDS_PER_METER`] key ids: a third is refused.
    pub fn add_keys(&mut self, keys: HopKeys) -> Result<(), Capacity> {
        if self.keys.key_id == keys.key_id {
            self.keys = keys;
        } else if self.other_keys.is_none_or(|k| k.key_id == keys.key_id) {
            self.other_keys = Some(keys);
        } else {
            return Err(Capacity::TooManyKeyIds);
        }
        Ok(())
    }
}

/// Key ids a relay holds per meter: the one it is registered with and,
/// during a site-secret rotation, the other one still listed (protocol §3).
pub const MAX_KEY_IDS_PER_METER: usize = 2;

/// Storage of meter entries, so a microcontroller can use a fixed array and a
/// Linux relay a hash map.
pub trait MeterTable {
    /// Whether `mac` is on the allow-list.
    fn mac_allowed(&self, mac: &MacAddr) -> bool;
    /// The entry of `meter_id`.
    fn get(&self, meter_id: u32) -> Option<&MeterEntry>;
    /// The entry of `meter_id`, mutably.
    fn get_mut(&mut self, meter_id: u32) -> Option<&mut MeterEntry>;
}

/// A [`MeterTable`] in a fixed array sorted by meter id (no allocation).
pub struct FixedMeterTable<const N: usize> {
    entries: [Option<MeterEntry>; N],
    len: usize,
}

impl<const N: usize> Default for FixedMeterTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FixedMeterTable<N> {
    /// An empty table.
    pub fn new() -> Self {
        FixedMeterTable {
            entries: core::array::from_fn(|_| None),
            len: 0,
        }
    }

    /// Number of meters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn position(&self, meter_id: u32) -> Result<usize, usize> {
        self.entries[..self.len]
            .binary_search_by_key(&meter_id, |e| e.as_ref().map_or(u32::MAX, |e| e.meter_id))
    }

    /// Adds or replaces a meter.
    pub fn insert(&mut self, entry: MeterEntry) -> Result<(), Error> {
        match self.position(entry.meter_id) {
            Ok(i) => {
                self.entries[i] = Some(entry);
                Ok(())
            }
            Err(i) => {
                if self.len == N {
                    return Err(Capacity::RegistryFull.into());
                }
                self.entries[i..=self.len].rotate_right(1);
                self.entries[i] = Some(entry);
                self.len += 1;
                Ok(())
            }
        }
    }

    /// Adds a meter with `keys`, or adds `keys` to a meter already in the
    /// table (its hop keys under another key id, during a site-secret
    /// rotation; see [`MeterEntry::add_keys`]), keeping its replay state.
    pub fn insert_keys(
        &mut self,
        meter_id: u32,
        mac: Option<MacAddr>,
        keys: HopKeys,
    ) -> Result<(), Error> {
        match self.get_mut(meter_id) {
            Some(e) => Ok(e.add_keys(keys)?),
            None => self.insert(MeterEntry::new(meter_id, mac, keys)),
        }
    }
}

impl<const N: usize> MeterTable for FixedMeterTable<N> {
    fn mac_allowed(&self, mac: &MacAddr) -> bool {
        self.entries[..self.len]
            .iter()
            .flatten()
            .any(|e| e.mac.as_ref() == Some(mac))
    }
    fn get(&self, meter_id: u32) -> Option<&MeterEntry> {
        let i = self.position(meter_id).ok()?;
        self.entries[i].as_ref()
    }
    fn get_mut(&mut self, meter_id: u32) -> Option<&mut MeterEntry> {
        let i = self.position(meter_id).ok()?;
        self.entries[i].as_mut()
    }
}

/// Settings of the ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressConfig {
    /// This relay's id (stated in ACKs).
    pub relay_id: u32,
    /// This relay's radio channel (stated in ACKs; 0 = not stated).
    pub channel: u8,
    /// Refuse senders whose MAC is not on the allow-list. Off for transports
    /// without real MAC addresses (UDP air, simulator).
    pub require_registered_mac: bool,
}

/// Identity and reading range of a frame that passed the ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    /// The meter.
    pub meter_id: u32,
    /// Key id used.
    pub key_id: u8,
    /// Boot epoch.
    pub boot_epoch: u32,
    /// Frame counter.
    pub counter: u32,
    /// Sequence number of the frame's first reading.
    pub first_seq: u32,
    /// Readings in the frame.
    pub reading_count: u8,
    /// Index of the first reading not delivered before; `reading_count` when none is new.
    pub first_new: u8,
}

impl FrameInfo {
    /// Readings of this frame delivered for the first time.
    pub fn new_readings(&self) -> u8 {
        self.reading_count - self.first_new
    }
}

/// The ingress's decision on an authentic frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First reception: deliver (its new readings), then ACK.
    Accepted(FrameInfo),
    /// Retransmission of an accepted frame: ACK again, deliver nothing.
    Duplicate(FrameInfo),
}

impl Verdict {
    /// The frame's identity either way.
    pub fn info(&self) -> &FrameInfo {
        match self {
            Verdict::Accepted(i) | Verdict::Duplicate(i) => i,
        }
    }
}

/// Counters for rates; never reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressStats {
    /// Frames offered to `handle_frame`.
    pub frames_received: u64,
    /// Frames accepted (first reception).
    pub frames_accepted: u64,
    /// Retransmissions recognised.
    pub frames_duplicate: u64,
    /// Readings delivered for the first time.
    pub readings_delivered: u64,
    /// Readings in accepted frames that had been delivered before (re-sent after a lost ACK).
    pub readings_redundant: u64,
    /// Refused by the MAC filter or MAC binding.
    pub rejected_mac: u64,
    /// Refused as malformed.
    pub rejected_malformed: u64,
    /// Refused: unknown meter or key id.
    pub rejected_unknown: u64,
    /// Refused: bad tag.
    pub rejected_tag: u64,
    /// Refused: replay, too old or stale epoch.
    pub rejected_replay: u64,
}

/// The relay-side state machine.
pub struct Ingress<C: CryptoProvider, T: MeterTable> {
    provider: C,
    table: T,
    cfg: IngressConfig,
    stats: IngressStats,
}

impl<C: CryptoProvider, T: MeterTable> Ingress<C, T> {
    /// An ingress over `table`.
    pub fn new(provider: C, cfg: IngressConfig, table: T) -> Self {
        Ingress {
            provider,
            table,
            cfg,
            stats: IngressStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &IngressStats {
        &self.stats
    }
    /// The meter table.
    pub fn table(&self) -> &T {
        &self.table
    }
    /// The meter table, mutably (to add meters or restore state).
    pub fn table_mut(&mut self) -> &mut T {
        &mut self.table
    }
    /// The configuration.
    pub fn config(&self) -> &IngressConfig {
        &self.cfg
    }
    /// The crypto provider (a relay solves and signs its blocks with it too).
    pub fn provider(&self) -> &C {
        &self.provider
    }

    /// The radio channel stated in ACKs from now on: a relay whose Wi-Fi
    /// station follows its access point learns the channel only after
    /// association, and meters move to the channel an ACK states.
    pub fn set_channel(&mut self, channel: u8) {
        self.cfg.channel = channel;
    }

    /// Judges a frame received from `src`.
    pub fn handle_frame(&mut self, src: &MacAddr, frame: &[u8]) -> Result<Verdict, Error> {
        self.stats.frames_received += 1;
        let res = self.judge(src, frame);
        if let Err(e) = &res {
            let counter = match e {
                Error::Malformed(_) => &mut self.stats.rejected_malformed,
                Error::Rejected(Rejected::MacNotAllowed | Rejected::MacMismatch) => {
                    &mut self.stats.rejected_mac
                }
                Error::Rejected(Rejected::UnknownMeter | Rejected::UnknownKeyId) => {
                    &mut self.stats.rejected_unknown
                }
                Error::Rejected(Rejected::BadTag) => &mut self.stats.rejected_tag,
                _ => &mut self.stats.rejected_replay,
            };
            *counter += 1;
        }
        res
    }

    fn judge(&mut self, src: &MacAddr, frame: &[u8]) -> Result<Verdict, Error> {
        if self.cfg.require_registered_mac && !self.table.mac_allowed(src) {
            return Err(Rejected::MacNotAllowed.into());
        }
        let packet = UplinkPacket::new_checked(frame)?;
        let entry = self
            .table
            .get_mut(packet.meter_id())
            .ok_or(Rejected::UnknownMeter)?;
        if entry.mac.is_some_and(|m| &m != src) {
            return Err(Rejected::MacMismatch.into());
        }
        let keys = *entry
            .keys_for(packet.key_id())
            .ok_or(Rejected::UnknownKeyId)?;
        let (epoch, counter) = (packet.boot_epoch(), packet.counter());
        let check = entry.window.check(epoch, counter);
        match check {
            ReplayCheck::StaleEpoch => return Err(Rejected::StaleEpoch.into()),
            ReplayCheck::TooOld => return Err(Rejected::Replay.into()),
            ReplayCheck::New | ReplayCheck::Duplicate => {}
        }
        packet.verify_hop(&self.provider, &keys)?;
        let first_seq = packet.first_seq();
        let count = packet.reading_count() as u8;
        let mut info = FrameInfo {
            meter_id: packet.meter_id(),
            key_id: packet.key_id(),
            boot_epoch: epoch,
            counter,
            first_seq,
            reading_count: count,
            first_new: count,
        };
        if check == ReplayCheck::Duplicate {
            self.stats.frames_duplicate += 1;
            return Ok(Verdict::Duplicate(info));
        }
        entry.window.accept(epoch, counter);
        info.first_new = first_new_index(entry.delivered, epoch, first_seq, count);
        let end = first_seq.wrapping_add(u32::from(count));
        if info.first_new < count {
            entry.delivered = Some(DeliveredMark {
                epoch,
                next_seq: end,
            });
        }
        self.stats.frames_accepted += 1;
        self.stats.readings_delivered += u64::from(info.new_readings());
        self.stats.readings_redundant += u64::from(info.first_new);
        Ok(Verdict::Accepted(info))
    }

    /// Writes the ACK for a frame that passed, stating the relay's wall clock.
    pub fn emit_ack(
        &self,
        verdict: &Verdict,
        relay_time_ms: u64,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let info = verdict.info();
        let entry = self
            .table
            .get(info.meter_id)
            .ok_or(Rejected::UnknownMeter)?;
        let ack = AckRepr {
            key_id: info.key_id,
            flags: if matches!(verdict, Verdict::Duplicate(_)) {
                FLAG_DUPLICATE
            } else {
                0
            },
            meter_id: info.meter_id,
            boot_epoch: info.boot_epoch,
            counter: info.counter,
            relay_time_ms,
            relay_id: self.cfg.relay_id,
            channel: self.cfg.channel,
        };
        let keys = entry.keys_for(info.key_id).ok_or(Rejected::UnknownKeyId)?;
        ack.emit(&self.provider, &keys.ack, out)
    }
}

/// Index of the first reading of a frame not covered by `mark`.
pub fn first_new_index(mark: Option<DeliveredMark>, epoch: u32, first_seq: u32, count: u8) -> u8 {
    match mark {
        Some(m) if m.epoch == epoch => {
            if m.next_seq <= first_seq {
                0
            } else {
                // Readings below the mark were delivered by an earlier frame.
                u8::try_from((m.next_seq - first_seq).min(u32::from(count))).unwrap_or(count)
            }
        }
        Some(m) if m.epoch > epoch => count,
        _ => 0,
    }
}
