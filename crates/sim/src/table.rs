//! The relay's meter registry for the simulator: a `Vec` indexed by meter id,
//! O(1) per lookup, implementing the protocol core's [`MeterTable`].

use gridpow_proto::ingress::{MeterEntry, MeterTable};
use gridpow_proto::MacAddr;

/// The MAC address the simulator gives meter `id`: locally administered, then
/// the id in big-endian.
pub fn meter_mac(id: u32) -> MacAddr {
    let b = id.to_be_bytes();
    [0x02, 0x47, b[0], b[1], b[2], b[3]]
}

/// The meter id encoded in a simulator MAC address, if it is a meter's.
pub fn mac_meter(mac: &MacAddr) -> Option<u32> {
    (mac[0] == 0x02 && mac[1] == 0x47).then(|| u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]))
}

/// The meters of one relay: ids `offset, offset + stride, offset + 2·stride, …`
/// (meter `m` belongs to relay `m % relays`), stored densely, and the edge
/// meters of a neighbour cell that it hears too, sorted by id.
pub struct StridedMeterTable {
    stride: u32,
    offset: u32,
    entries: Vec<MeterEntry>,
    neighbours: Vec<MeterEntry>,
}

impl StridedMeterTable {
    /// An empty table for the meters `offset + k·stride`.
    pub fn new(stride: u32, offset: u32, capacity: usize) -> Self {
        StridedMeterTable {
            stride: stride.max(1),
            offset,
            entries: Vec::with_capacity(capacity),
            neighbours: Vec::new(),
        }
    }

    /// Appends the next meter; returns `false` if its id is not the next one of
    /// this table's sequence.
    pub fn push(&mut self, entry: MeterEntry) -> bool {
        let expected = u64::from(self.offset) + self.entries.len() as u64 * u64::from(self.stride);
        if u64::from(entry.meter_id) != expected {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// Appends a meter of another cell that this relay hears too; returns
    /// `false` unless its id is above every one appended before and not of
    /// this table's own sequence.
    pub fn push_neighbour(&mut self, entry: MeterEntry) -> bool {
        let id = entry.meter_id;
        if self.index(id).is_some() || self.neighbours.last().is_some_and(|e| e.meter_id >= id) {
            return false;
        }
        self.neighbours.push(entry);
        true
    }

    /// Number of meters, own and neighbours'.
    pub fn len(&self) -> usize {
        self.entries.len() + self.neighbours.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn index(&self, meter_id: u32) -> Option<usize> {
        let rel = meter_id.checked_sub(self.offset)?;
        (rel % self.stride == 0).then_some((rel / self.stride) as usize)
    }

    fn neighbour(&self, meter_id: u32) -> Option<usize> {
        self.neighbours
            .binary_search_by_key(&meter_id, |e| e.meter_id)
            .ok()
    }
}

impl MeterTable for StridedMeterTable {
    fn mac_allowed(&self, mac: &MacAddr) -> bool {
        mac_meter(mac).is_some_and(|id| self.get(id).is_some_and(|e| e.mac.as_ref() == Some(mac)))
    }
    fn get(&self, meter_id: u32) -> Option<&MeterEntry> {
        match self.index(meter_id) {
            Some(i) => self.entries.get(i),
            None => self.neighbours.get(self.neighbour(meter_id)?),
        }
    }
    fn get_mut(&mut self, meter_id: u32) -> Option<&mut MeterEntry> {
        match self.index(meter_id) {
            Some(i) => self.entries.get_mut(i),
            None => {
                let i = self.neighbour(meter_id)?;
                self.neighbours.get_mut(i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridpow_proto::crypto::{HopKeys, HopSecret};

    fn entry(id: u32) -> MeterEntry {
        MeterEntry::new(
            id,
            Some(meter_mac(id)),
            HopKeys::new(1, &HopSecret([1; 32])),
        )
    }

    #[test]
    fn strided_table_finds_only_its_own_meters() {
        let mut t = StridedMeterTable::new(3, 1, 4);
        assert!(t.push(entry(1)));
        assert!(t.push(entry(4)));
        assert!(!t.push(entry(8)));
        assert_eq!(t.get(4).map(|e| e.meter_id), Some(4));
        assert!(t.get(2).is_none());
        assert!(t.get(7).is_none());
        assert!(t.get(0).is_none());
        assert!(t.mac_allowed(&meter_mac(1)));
        assert!(!t.mac_allowed(&meter_mac(2)));
        assert_eq!(mac_meter(&meter_mac(0xdead_beef)), Some(0xdead_beef));
    }

    #[test]
    fn a_neighbour_meter_is_found_beside_the_own_ones() {
        let mut t = StridedMeterTable::new(3, 1, 4);
        assert!(t.push(entry(1)));
        assert!(t.push_neighbour(entry(2)));
        assert!(t.push_neighbour(entry(9)));
        assert!(!t.push_neighbour(entry(5)), "ids must ascend");
        assert!(!t.push_neighbour(entry(10)), "10 is one of its own");
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(9).map(|e| e.meter_id), Some(9));
        assert_eq!(t.get_mut(2).map(|e| e.meter_id), Some(2));
        assert!(t.get(3).is_none());
        assert!(t.mac_allowed(&meter_mac(9)));
        assert!(!t.mac_allowed(&meter_mac(8)));
    }
}
