//! What every log entry must satisfy beside the others (docs/ledger.md,
//! "Checking it"): a relay height names one block, and a block is logged
//! once. An auditor feeds the entries in index order.

use std::collections::HashMap;

use gridpow_proto::wire::LogLeafRepr;
use gridpow_proto::Hash;

/// Two entries that cannot both be in an honest log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryConflict {
    /// One relay height with two different blocks: the relay signed two
    /// histories, and the server logged both.
    #[error("fork: relay {relay_id} height {height} has two blocks in the log (entries {first} and {second}: {} and {})", hex::encode(first_hash), hex::encode(second_hash))]
    Fork {
        /// The relay.
        relay_id: u32,
        /// The height.
        height: u64,
        /// The earlier entry.
        first: u64,
        /// Its block hash.
        first_hash: Hash,
        /// The later entry.
        second: u64,
        /// Its block hash.
        second_hash: Hash,
    },
    /// The same block logged twice.
    #[error("duplicate: block {} (relay {relay_id} height {height}) is in the log twice, entries {first} and {second}", hex::encode(block_hash))]
    Duplicate {
        /// The block.
        block_hash: Hash,
        /// Its relay.
        relay_id: u32,
        /// Its height.
        height: u64,
        /// The earlier entry.
        first: u64,
        /// The later entry.
        second: u64,
    },
}

/// The entries seen so far, by relay height and by block hash.
#[derive(Debug, Default)]
pub struct EntryIndex {
    by_height: HashMap<(u32, u64), (u64, Hash)>,
    by_hash: HashMap<Hash, u64>,
}

impl EntryIndex {
    /// Takes entry `index`; refuses it when it conflicts with an earlier one.
    pub fn add(&mut self, index: u64, leaf: &LogLeafRepr) -> Result<(), EntryConflict> {
        if let Some(&(first, first_hash)) = self.by_height.get(&(leaf.relay_id, leaf.height)) {
            if first_hash != leaf.block_hash {
                return Err(EntryConflict::Fork {
                    relay_id: leaf.relay_id,
                    height: leaf.height,
                    first,
                    first_hash,
                    second: index,
                    second_hash: leaf.block_hash,
                });
            }
        }
        if let Some(&first) = self.by_hash.get(&leaf.block_hash) {
            return Err(EntryConflict::Duplicate {
                block_hash: leaf.block_hash,
                relay_id: leaf.relay_id,
                height: leaf.height,
                first,
                second: index,
            });
        }
        self.by_height
            .insert((leaf.relay_id, leaf.height), (index, leaf.block_hash));
        self.by_hash.insert(leaf.block_hash, index);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(relay_id: u32, height: u64, h: u8) -> LogLeafRepr {
        LogLeafRepr {
            relay_id,
            height,
            block_hash: [h; 32],
            merkle_root: [0; 32],
        }
    }

    #[test]
    fn a_relay_height_names_one_block_and_a_block_is_logged_once() {
        let mut ix = EntryIndex::default();
        ix.add(0, &leaf(1, 0, 1)).unwrap();
        ix.add(1, &leaf(2, 0, 2)).unwrap();
        ix.add(2, &leaf(1, 1, 3)).unwrap();
        assert!(matches!(
            ix.add(3, &leaf(1, 1, 4)),
            Err(EntryConflict::Fork {
                relay_id: 1,
                height: 1,
                first: 2,
                second: 3,
                ..
            })
        ));
        let dup = ix.add(4, &leaf(1, 0, 1)).unwrap_err();
        assert!(matches!(
            dup,
            EntryConflict::Duplicate {
                first: 0,
                second: 4,
                ..
            }
        ));
        assert!(
            dup.to_string().starts_with("duplicate: block 0101"),
            "{dup}"
        );
    }
}
