//! c2sp.org/tlog-tiles: serving hash tiles and entry bundles from the
//! stored hashes, and the reverse for auditors.
//!
//! ```text
//! tile/<L>/<N>[.p/<W>]        hash tile: 256 (or W) hashes at level L (tile height 8)
//! tile/entries/<N>[.p/<W>]    entry bundle: entries n·256 … n·256+255 (or W of them)
//! <N>                         3-digit groups, all but the last prefixed "x": 1234067 → x001/x234/067
//! entry bundle                u16 BE length ‖ entry, repeated
//! ```
//!
//! Hash tile `n` of level `l` holds the stored hashes at tlog level `8·l`,
//! indexes `256·n …`: what `tlog_tiles::Tile::read_data` reads. A request
//! for a tile (or a partial tile) the tree does not yet hold is refused.

use core::cell::RefCell;
use core::ops::Range;
use std::collections::BTreeMap;

use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::merkle;
use tlog_tiles::{HashReader, Tile};

use crate::error::{Error, Malformed, Misuse, Rejected};
use crate::proofs::{leaf_hash, CheckedReader};
use crate::Hash;

/// Tile height: a full tile holds 2^8 = 256 hashes.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile, entries in a full bundle.
pub const TILE_WIDTH: u16 = 256;
/// Longest tile path we parse.
const MAX_PATH_LEN: usize = 96;

/// What a tile path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TileKind {
    /// A hash tile at this level (0 ..= 63 in a path).
    Hashes(u8),
    /// An entry bundle.
    Entries,
}

/// A parsed tile path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TilePath {
    /// Hash tile or entry bundle.
    pub kind: TileKind,
    /// `N`, the tile's index within its level.
    pub index: u64,
    /// Hashes or entries in it, 1 ..= 256; 256 is a full tile.
    pub width: u16,
}

/// A decimal with no leading zeroes (or `0`), of at most `max_digits` digits.
fn decimal(s: &str, max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

impl TilePath {
    /// Parses `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`
    /// (without the log's prefix or a leading slash).
    pub fn parse(path: &str) -> Result<TilePath, Error> {
        let bad = |why| Error::from(Malformed::TilePath(why));
        if path.len() > MAX_PATH_LEN {
            return Err(bad("too long"));
        }
        let rest = path.strip_prefix("tile/").ok_or(bad("not under tile/"))?;
        let (kind, rest) = rest.split_once('/').ok_or(bad("no index"))?;
        let kind = if kind == "entries" {
            TileKind::Entries
        } else {
            let l = decimal(kind, 2).ok_or(bad("level is not a decimal without leading zeroes"))?;
            if l > 63 {
                return Err(bad("level above 63"));
            }
            TileKind::Hashes(l as u8)
        };
        let mut parts: Vec<&str> = rest.split('/').collect();
        let mut width = TILE_WIDTH;
        if parts.len() >= 2 {
            if let Some(last_n) = parts[parts.len() - 2].strip_suffix(".p") {
                let w = decimal(parts[parts.len() - 1], 3)
                    .ok_or(bad("width is not a decimal without leading zeroes"))?;
                if !(1..=255).contains(&w) {
                    return Err(bad("width not in 1..=255"));
                }
                width = w as u16;
                parts.pop();
                let i = parts.len() - 1;
                parts[i] = last_n;
            }
        }
        let Some((last, groups)) = parts.split_last() else {
            return Err(bad("no index"));
        };
        let mut index: u64 = 0;
        for (i, g) in groups.iter().chain(core::iter::once(last)).enumerate() {
            let digits = if i < groups.len() {
                g.strip_prefix('x')
                    .ok_or(bad("index group without its x"))?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("index group is not 3 digits"));
            }
            let d: u64 = digits
                .parse()
                .map_err(|_| bad("index group is not 3 digits"))?;
            index = index
                .checked_mul(1000)
                .and_then(|n| n.checked_add(d))
                .ok_or(bad("index above 2^64"))?;
        }
        let t = TilePath { kind, index, width };
        // Leading x000 groups would name the same tile twice.
        if t.to_path() != path {
            return Err(bad("index not in its shortest form"));
        }
        Ok(t)
    }

    /// The path, `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
    pub fn to_path(&self) -> String {
        let mut n = self.index;
        let mut groups = vec![format!("{:03}", n % 1000)];
        while n >= 1000 {
            n /= 1000;
            groups.push(format!("x{:03}", n % 1000));
        }
        groups.reverse();
        let kind = match self.kind {
            TileKind::Hashes(l) => l.to_string(),
            TileKind::Entries => "entries".to_owned(),
        };
        let partial = if self.width < TILE_WIDTH {
            format!(".p/{}", self.width)
        } else {
            String::new()
        };
        format!("tile/{kind}/{}{partial}", groups.join("/"))
    }

    /// Whether it is a partial tile.
    pub fn is_partial(&self) -> bool {
        self.width < TILE_WIDTH
    }

    /// Hashes available at this path's level in a tree of `size` leaves.
    fn available(&self, size: u64) -> u128 {
        let level = match self.kind {
            TileKind::Hashes(l) => u32::from(l),
            TileKind::Entries => 0,
        };
        if level >= 8 {
            return 0;
        }
        u128::from(size) >> (8 * level)
    }

    /// Whether a tree of `size` leaves holds this tile (or partial tile).
    pub fn within(&self, size: u64) -> bool {
        // The fields are public: a width outside 1..=256 names no tile.
        (1..=TILE_WIDTH).contains(&self.width)
            && u128::from(self.index) * 256 + u128::from(self.width) <= self.available(size)
    }

    /// For an entry bundle: the entries it holds (refused beyond the tree).
    pub fn entry_range(&self, size: u64) -> Result<Range<u64>, Error> {
        if self.kind != TileKind::Entries {
            return Err(Misuse::NotThisKind.into());
        }
        if !self.within(size) {
            return Err(Rejected::BeyondTree.into());
        }
        let start = self.index * 256;
        Ok(start..start + u64::from(self.width))
    }

    /// The hash tiles (full, then the partial one, level by level) of a tree
    /// of `size` leaves.
    pub fn hash_tiles(size: u64) -> Vec<TilePath> {
        let mut out = Vec::new();
        for level in 0..8u8 {
            let avail = size >> (8 * u32::from(level));
            if avail == 0 {
                break;
            }
            push_level(&mut out, TileKind::Hashes(level), avail);
        }
        out
    }

    /// The entry bundles (full, then the partial one) of a tree of `size` leaves.
    pub fn entry_bundles(size: u64) -> Vec<TilePath> {
        let mut out = Vec::new();
        push_level(&mut out, TileKind::Entries, size);
        out
    }
}

fn push_level(out: &mut Vec<TilePath>, kind: TileKind, avail: u64) {
    for index in 0..avail / 256 {
        out.push(TilePath {
            kind,
            index,
            width: TILE_WIDTH,
        });
    }
    if avail % 256 != 0 {
        out.push(TilePath {
            kind,
            index: avail / 256,
            width: (avail % 256) as u16,
        });
    }
}

/// Reads a hash tile of the tree of `size` leaves from the stored hashes.
pub fn read_tile<R: HashReader + ?Sized>(
    reader: &R,
    size: u64,
    path: &TilePath,
) -> Result<Vec<u8>, Error> {
    let TileKind::Hashes(level) = path.kind else {
        return Err(Misuse::NotThisKind.into());
    };
    if !path.within(size) {
        return Err(Rejected::BeyondTree.into());
    }
    // within() keeps level < 8 and width in 1..=256: Tile::new's asserts hold.
    let tile = Tile::new(TILE_HEIGHT, level, path.index, u32::from(path.width), false);
    let r = CheckedReader::new(reader);
    tile.read_data(&r).map_err(|e| r.error(e))
}

/// Parses a request path and reads the hash tile (see [`read_tile`]); entry
/// bundles are the caller's: see [`TilePath::entry_range`] and
/// [`encode_entry_bundle`].
pub fn serve_tile<R: HashReader + ?Sized>(
    reader: &R,
    size: u64,
    path: &str,
) -> Result<Vec<u8>, Error> {
    read_tile(reader, size, &TilePath::parse(path)?)
}

/// An entry bundle: each entry prefixed by its length, u16 big endian.
pub fn encode_entry_bundle<'a, I>(entries: I) -> Result<Vec<u8>, Error>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| Misuse::EntryTooLong(e.len()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Splits an entry bundle into its entries, refusing one that ends inside
/// a length or an entry, or holds more than 256 entries.
pub fn decode_entry_bundle(data: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if out.len() == usize::from(TILE_WIDTH) {
            return Err(Malformed::EntryBundle("more than 256 entries").into());
        }
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err(Malformed::EntryBundle("truncated length").into());
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return Err(Malformed::EntryBundle("truncated entry").into());
        }
        let (entry, tail) = tail.split_at(len);
        out.push(entry.to_vec());
        rest = tail;
    }
    Ok(out)
}

/// An auditor's tile reader over a fetch function (an HTTP client, a
/// directory: `|p| std::fs::read(dir.join(p.to_path())).ok()`); `None` is a
/// missing tile. Every tile it uses is authenticated: the right-edge
/// (partial) tiles of the tree against the checkpoint's root, every full
/// tile against its hash in the tile above.
///
/// It does not use tlog_tiles' `TileHashReader`: in tlog_tiles 0.2 that
/// reader skips the parent check of some full tiles when two subtree hashes
/// of the root share a tile (size 600: a tampered `tile/0/001` passed; see
/// the test `an_auditor_checks_tiles_and_bundles_against_the_root`).
pub struct FnTileReader<F> {
    fetch: F,
    cache: RefCell<BTreeMap<TilePath, Vec<u8>>>,
}

impl<F: Fn(&TilePath) -> Option<Vec<u8>>> FnTileReader<F> {
    /// Reads tiles through `fetch`.
    pub fn new(fetch: F) -> Self {
        FnTileReader {
            fetch,
            cache: RefCell::new(BTreeMap::new()),
        }
    }

    /// Fetches a tile and checks its length (not yet its hashes).
    fn get(&self, path: &TilePath) -> Result<Vec<u8>, Error> {
        if let Some(d) = self.cache.borrow().get(path) {
            return Ok(d.clone());
        }
        let data = (self.fetch)(path).ok_or_else(|| Rejected::MissingTile(path.to_path()))?;
        if data.len() != usize::from(path.width) * 32 {
            return Err(Rejected::InconsistentTile.into());
        }
        Ok(data)
    }

    /// Checks that the right-edge tiles of the tree of `size` leaves hash to
    /// `root`, and keeps them as authenticated.
    pub fn verify_tree(&self, size: u64, root: &Hash) -> Result<(), Error> {
        if size == 0 {
            return if *root == tlog_tiles::EMPTY_HASH.0 {
                Ok(())
            } else {
                Err(Rejected::InconsistentTile.into())
            };
        }
        // The root's perfect subtrees, largest (leftmost) first: per level
        // from the top, the partial tile's hashes in runs of 128, 64, … 1.
        let edge: Vec<TilePath> = TilePath::hash_tiles(size)
            .into_iter()
            .filter(TilePath::is_partial)
            .rev()
            .collect();
        let mut fetched = Vec::with_capacity(edge.len());
        for t in &edge {
            let data = self.get(t)?;
            fetched.push((*t, data));
        }
        let got = edge_root(fetched.iter().map(|(_, d)| d.as_slice()))?;
        if got != *root {
            return Err(Rejected::InconsistentTile.into());
        }
        self.cache.borrow_mut().extend(fetched);
        Ok(())
    }

    /// The root hash of the tree's first `old_size` leaves, computed from the
    /// tiles of the tree of `size` leaves with root `root`, each checked up
    /// to that root: the check that an older checkpoint of `old_size` is
    /// consistent with this tree is that its root equals this one.
    pub fn root_at(&self, size: u64, root: &Hash, old_size: u64) -> Result<Hash, Error> {
        if old_size > size {
            return Err(Rejected::BeyondTree.into());
        }
        self.verify_tree(size, root)?;
        if old_size == 0 {
            return Ok(tlog_tiles::EMPTY_HASH.0);
        }
        // The old tree's right-edge (partial) tiles are prefixes of this
        // tree's tiles at the same place.
        let mut edge = Vec::new();
        for t in TilePath::hash_tiles(old_size)
            .into_iter()
            .filter(TilePath::is_partial)
            .rev()
        {
            let TileKind::Hashes(level) = t.kind else {
                continue;
            };
            let data = self.authenticated(size, level, t.index)?;
            let prefix = data
                .get(..usize::from(t.width) * 32)
                .ok_or(Rejected::InconsistentTile)?;
            edge.push(prefix.to_vec());
        }
        edge_root(edge.iter().map(Vec::as_slice))
    }

    /// The authenticated data of the tile at `level`, `index` in a tree of
    /// `size` leaves whose right edge [`Self::verify_tree`] authenticated.
    fn authenticated(&self, size: u64, level: u8, index: u64) -> Result<Vec<u8>, Error> {
        let avail = u128::from(size) >> (8 * u32::from(level.min(8)));
        let end = (u128::from(index) + 1) * 256;
        if end > avail {
            // The right edge: authenticated by verify_tree, or beyond the tree.
            let width = avail.saturating_sub(u128::from(index) * 256);
            let path = TilePath {
                kind: TileKind::Hashes(level),
                index,
                width: u16::try_from(width).map_err(|_| Rejected::BeyondTree)?,
            };
            return self
                .cache
                .borrow()
                .get(&path)
                .cloned()
                .ok_or(Rejected::BeyondTree.into());
        }
        let path = TilePath {
            kind: TileKind::Hashes(level),
            index,
            width: TILE_WIDTH,
        };
        if let Some(d) = self.cache.borrow().get(&path) {
            return Ok(d.clone());
        }
        let data = self.get(&path)?;
        let parent = self.authenticated(size, level + 1, index / 256)?;
        let at = usize::try_from(index % 256).unwrap_or(0) * 32;
        let want = parent.get(at..at + 32).ok_or(Rejected::InconsistentTile)?;
        if merkle::root_of_hashes(&RustCrypto, &as_hashes(&data))[..] != *want {
            return Err(Rejected::InconsistentTile.into());
        }
        self.cache.borrow_mut().insert(path, data.clone());
        Ok(data)
    }

    /// Leaf hashes `range` of the tree of `size` leaves with root `root`,
    /// each checked through the tiles up to the root.
    pub fn leaf_hashes(
        &self,
        size: u64,
        root: &Hash,
        range: Range<u64>,
    ) -> Result<Vec<Hash>, Error> {
        if range.end > size || range.start > range.end {
            return Err(Rejected::BeyondTree.into());
        }
        self.verify_tree(size, root)?;
        let mut out = Vec::new();
        for i in range {
            let data = self.authenticated(size, 0, i / 256)?;
            let at = usize::try_from(i % 256).unwrap_or(0) * 32;
            let h = data.get(at..at + 32).ok_or(Rejected::InconsistentTile)?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(h);
            out.push(hash);
        }
        Ok(out)
    }

    /// Checks an entry bundle of the tree of `size` leaves with root `root`
    /// against the (checked) level-0 tiles; returns its entries.
    pub fn verify_entry_bundle(
        &self,
        size: u64,
        root: &Hash,
        path: &TilePath,
        bundle: &[u8],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let range = path.entry_range(size)?;
        let entries = decode_entry_bundle(bundle)?;
        if entries.len() != usize::from(path.width) {
            return Err(Malformed::EntryBundle("entry count is not the bundle's width").into());
        }
        let hashes = self.leaf_hashes(size, root, range.clone())?;
        for ((i, e), h) in range.zip(&entries).zip(&hashes) {
            if leaf_hash(e) != *h {
                return Err(Rejected::EntryMismatch(i).into());
            }
        }
        Ok(entries)
    }
}

/// The root of a tree from its right-edge (partial) tiles, top level
/// first: each tile's hashes split in runs of 128, 64, … 1 are the root's
/// perfect subtrees, largest (leftmost) first.
fn edge_root<'a>(tiles: impl Iterator<Item = &'a [u8]>) -> Result<Hash, Error> {
    let mut subtrees: Vec<Hash> = Vec::new();
    for data in tiles {
        let hashes = as_hashes(data);
        let mut at = 0usize;
        for bit in (0..8).rev() {
            let run = 1usize << bit;
            if hashes.len() & run != 0 {
                subtrees.push(merkle::root_of_hashes(&RustCrypto, &hashes[at..at + run]));
                at += run;
            }
        }
    }
    let Some((&last, rest)) = subtrees.split_last() else {
        return Err(Rejected::InconsistentTile.into());
    };
    Ok(rest
        .iter()
        .rev()
        .fold(last, |acc, h| merkle::node_hash(&RustCrypto, h, &acc)))
}

fn as_hashes(data: &[u8]) -> Vec<Hash> {
    data.chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::proofs::{tree_root, MemoryHashes};

    #[test]
    fn tile_paths_parse_in_their_one_canonical_form() {
        let t = TilePath::parse("tile/0/x001/x234/067").unwrap();
        assert_eq!(
            t,
            TilePath {
                kind: TileKind::Hashes(0),
                index: 1_234_067,
                width: 256
            }
        );
        let t = TilePath::parse("tile/entries/002.p/88").unwrap();
        assert_eq!(
            t,
            TilePath {
                kind: TileKind::Entries,
                index: 2,
                width: 88
            }
        );
        assert_eq!(t.to_path(), "tile/entries/002.p/88");
        assert_eq!(
            TilePath::parse("tile/63/000").unwrap().kind,
            TileKind::Hashes(63)
        );
        for bad in [
            "tile/0/1",
            "tile/00/000",
            "tile/64/000",
            "tile/0/x000/001",
            "tile/0/001/002",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/010",
            "tile/0/000.p/",
            "tile/0/",
            "tile/0",
            "tile//000",
            "/tile/0/000",
            "tile/0/000/",
            "tile/data/000",
            "tile/8/0/000",
            "tile/0/x18446744073709551616/000",
            "tile/0/+01",
            "tile/0/x1/000",
            "tile/0/x999/x999/x999/x999/x999/x999/999",
            "tile/entries/000.p/1/2",
        ] {
            assert!(
                matches!(
                    TilePath::parse(bad),
                    Err(Error::Malformed(Malformed::TilePath(_)))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            TilePath::parse("tile/0/x018/x446/x744/x073/x709/x551/615")
                .unwrap()
                .index,
            u64::MAX
        );
    }

    #[test]
    fn a_tree_of_600_has_these_tiles_and_serves_nothing_beyond() {
        let paths: Vec<String> = TilePath::hash_tiles(600)
            .iter()
            .chain(&TilePath::entry_bundles(600))
            .map(TilePath::to_path)
            .collect();
        assert_eq!(
            paths,
            [
                "tile/0/000",
                "tile/0/001",
                "tile/0/002.p/88",
                "tile/1/000.p/2",
                "tile/entries/000",
                "tile/entries/001",
                "tile/entries/002.p/88"
            ]
        );
        let mut log = MemoryHashes::new();
        for i in 0u32..600 {
            log.push_entry(&i.to_le_bytes());
        }
        assert_eq!(
            serve_tile(&log, 600, "tile/0/002.p/88").unwrap().len(),
            88 * 32
        );
        assert_eq!(
            serve_tile(&log, 600, "tile/0/002.p/5").unwrap().len(),
            5 * 32
        );
        for beyond in [
            "tile/0/002.p/89",
            "tile/0/002",
            "tile/1/000",
            "tile/2/000.p/1",
            "tile/63/000.p/1",
        ] {
            assert!(
                matches!(
                    serve_tile(&log, 600, beyond),
                    Err(Error::Rejected(Rejected::BeyondTree))
                ),
                "{beyond}"
            );
        }
        assert!(serve_tile(&log, 600, "tile/entries/000").is_err());
        for width in [0, 257] {
            let t = TilePath {
                kind: TileKind::Hashes(0),
                index: 0,
                width,
            };
            assert!(matches!(
                read_tile(&log, 600, &t),
                Err(Error::Rejected(Rejected::BeyondTree))
            ));
        }
        assert_eq!(
            TilePath::parse("tile/entries/002.p/88")
                .unwrap()
                .entry_range(600)
                .unwrap(),
            512..600
        );
        // Level 1 hash 0 is the root of the first 256 leaves.
        let l1 = serve_tile(&log, 600, "tile/1/000.p/2").unwrap();
        assert_eq!(l1[..32], tree_root(&log, 256).unwrap());
    }

    #[test]
    fn an_auditor_checks_tiles_and_bundles_against_the_root() {
        let mut log = MemoryHashes::new();
        let entries: Vec<Vec<u8>> = (0u32..600).map(|i| i.to_le_bytes().to_vec()).collect();
        for e in &entries {
            log.push_entry(e);
        }
        let root = tree_root(&log, 600).unwrap();
        let mut served = BTreeMap::new();
        for t in TilePath::hash_tiles(600) {
            served.insert(t, read_tile(&log, 600, &t).unwrap());
        }
        let reader = FnTileReader::new(|p: &TilePath| served.get(p).cloned());
        reader.verify_tree(600, &root).unwrap();
        let path = TilePath::parse("tile/entries/002.p/88").unwrap();
        let bundle = encode_entry_bundle(entries[512..].iter().map(Vec::as_slice)).unwrap();
        assert_eq!(
            reader
                .verify_entry_bundle(600, &root, &path, &bundle)
                .unwrap(),
            entries[512..]
        );
        let mut wrong = bundle.clone();
        wrong[2] ^= 1;
        assert!(matches!(
            reader.verify_entry_bundle(600, &root, &path, &wrong),
            Err(Error::Rejected(Rejected::EntryMismatch(512)))
        ));
        assert!(matches!(
            reader.verify_tree(600, &[0; 32]),
            Err(Error::Rejected(Rejected::InconsistentTile))
        ));
        // A tampered tile.
        let mut tampered = served.clone();
        tampered
            .get_mut(&TilePath::parse("tile/0/001").unwrap())
            .unwrap()[40] ^= 1;
        let reader = FnTileReader::new(|p: &TilePath| tampered.get(p).cloned());
        // The root does not depend on tile/0/001 (tile/1/000.p/2 covers it),
        // its leaves do.
        reader.verify_tree(600, &root).unwrap();
        reader.leaf_hashes(600, &root, 0..256).unwrap();
        let got = reader.leaf_hashes(600, &root, 255..258);
        assert!(
            matches!(got, Err(Error::Rejected(Rejected::InconsistentTile))),
            "{got:?}"
        );
        tampered
            .get_mut(&TilePath::parse("tile/1/000.p/2").unwrap())
            .unwrap()[0] ^= 1;
        let reader = FnTileReader::new(|p: &TilePath| tampered.get(p).cloned());
        assert!(matches!(
            reader.verify_tree(600, &root),
            Err(Error::Rejected(Rejected::InconsistentTile))
        ));
        // A missing tile.
        let reader = FnTileReader::new(|_: &TilePath| None);
        assert!(matches!(
            reader.verify_tree(600, &root),
            Err(Error::Rejected(Rejected::MissingTile(_)))
        ));
        FnTileReader::new(|_: &TilePath| None)
            .verify_tree(0, &tlog_tiles::EMPTY_HASH.0)
            .unwrap();
    }

    #[test]
    fn the_root_of_an_older_tree_is_recomputed_from_the_checked_tiles() {
        for (size, olds) in [
            (
                600u64,
                &[0u64, 1, 2, 255, 256, 257, 300, 511, 512, 599, 600][..],
            ),
            (65_836, &[1, 255, 256, 65_535, 65_536, 65_537, 65_835][..]),
        ] {
            let mut log = MemoryHashes::new();
            for i in 0..size {
                log.push_entry(&i.to_le_bytes());
            }
            let root = tree_root(&log, size).unwrap();
            let mut served = BTreeMap::new();
            for t in TilePath::hash_tiles(size) {
                served.insert(t, read_tile(&log, size, &t).unwrap());
            }
            let reader = FnTileReader::new(|p: &TilePath| served.get(p).cloned());
            for &old in olds {
                assert_eq!(
                    reader.root_at(size, &root, old).unwrap(),
                    tree_root(&log, old).unwrap(),
                    "{size} {old}"
                );
            }
            assert!(matches!(
                reader.root_at(size, &root, size + 1),
                Err(Error::Rejected(Rejected::BeyondTree))
            ));
            // A tampered full tile under the older tree's edge is caught.
            let mut tampered = served.clone();
            tampered
                .get_mut(&TilePath::parse("tile/0/000").unwrap())
                .unwrap()[0] ^= 1;
            let reader = FnTileReader::new(|p: &TilePath| tampered.get(p).cloned());
            assert!(reader.root_at(size, &root, 100).is_err());
        }
    }

    #[test]
    fn entry_bundles_round_trip_and_truncation_is_refused() {
        let e: [&[u8]; 3] = [b"a", b"", b"xyz"];
        let b = encode_entry_bundle(e).unwrap();
        assert_eq!(b, [0, 1, b'a', 0, 0, 0, 3, b'x', b'y', b'z']);
        assert_eq!(
            decode_entry_bundle(&b).unwrap(),
            [b"a".to_vec(), vec![], b"xyz".to_vec()]
        );
        for cut in 1..b.len() {
            if cut == 3 || cut == 5 {
                continue; // entry boundaries
            }
            assert!(decode_entry_bundle(&b[..cut]).is_err(), "{cut}");
        }
        assert!(matches!(
            encode_entry_bundle([&[0u8; 65_536][..]]),
            Err(Error::Misuse(Misuse::EntryTooLong(65_536)))
        ));
    }
}
