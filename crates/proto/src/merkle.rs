//! Merkle trees as in RFC 9162 (Certificate Transparency 2.0), section 2.1:
//! leaf hash `SHA-256(0x00 ‖ data)`, node hash `SHA-256(0x01 ‖ left ‖ right)`,
//! the root of an empty tree `SHA-256("")`, and a tree of `n` leaves split at
//! the largest power of two smaller than `n`.
//!
//! [`RootBuilder`] computes a root in one pass without allocation (a stack of
//! at most 64 perfect subtrees); [`inclusion_proof`] and [`verify_inclusion`]
//! produce and check audit paths, [`consistency_proof`] and
//! [`verify_consistency`] prove that a tree extends an earlier one (sections
//! 2.1.4.1 and 2.1.4.2). Every hash runs on the caller's [`CryptoProvider`].

use crate::crypto::CryptoProvider;
use crate::{Error, Hash, Misuse};

/// Longest audit path: trees have fewer than 2^64 leaves.
pub const MAX_PROOF_LEN: usize = 64;

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash<C: CryptoProvider>(provider: &C, data: &[u8]) -> Hash {
    provider.sha256(&[&[0x00], data])
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash<C: CryptoProvider>(provider: &C, left: &Hash, right: &Hash) -> Hash {
    provider.sha256(&[&[0x01], left, right])
}

/// Root of the empty tree, `SHA-256("")`.
pub fn empty_root<C: CryptoProvider>(provider: &C) -> Hash {
    provider.sha256(&[])
}

/// Computes a Merkle root from leaves pushed one at a time, without allocation.
#[derive(Clone, Debug)]
pub struct RootBuilder {
    /// Roots of perfect subtrees, largest first; `levels[i]` is the height of `stack[i]`.
    stack: [Hash; MAX_PROOF_LEN],
    levels: [u8; MAX_PROOF_LEN],
    depth: usize,
    count: u64,
}

impl Default for RootBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RootBuilder {
    /// An empty builder.
    pub const fn new() -> Self {
        RootBuilder {
            stack: [[0; 32]; MAX_PROOF_LEN],
            levels: [0; MAX_PROOF_LEN],
            depth: 0,
            count: 0,
        }
    }

    /// Number of leaves pushed.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no leaf was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a leaf's data.
    pub fn push_leaf<C: CryptoProvider>(&mut self, provider: &C, data: &[u8]) {
        self.push_leaf_hash(provider, leaf_hash(provider, data));
    }

    /// Adds an already hashed leaf.
    pub fn push_leaf_hash<C: CryptoProvider>(&mut self, provider: &C, mut h: Hash) {
        let mut level = 0u8;
        // Merge equal-height subtrees, as binary addition carries.
        while self.depth > 0 && self.levels[self.depth - 1] == level {
            self.depth -= 1;
            h = node_hash(provider, &self.stack[self.depth], &h);
            level += 1;
        }
        // 2^64 leaves cannot be pushed, so the stack never overflows.
        if let (Some(slot), Some(lvl)) = (
            self.stack.get_mut(self.depth),
            self.levels.get_mut(self.depth),
        ) {
            *slot = h;
            *lvl = level;
            self.depth += 1;
        }
        self.count += 1;
    }

    /// The root over the leaves pushed so far.
    pub fn root<C: CryptoProvider>(&self, provider: &C) -> Hash {
        if self.depth == 0 {
            return empty_root(provider);
        }
        // RFC 9162 splits at the largest power of two: fold the smaller subtrees
        // from the right into the larger ones on their left.
        let mut acc = self.stack[self.depth - 1];
        for i in (0..self.depth - 1).rev() {
            acc = node_hash(provider, &self.stack[i], &acc);
        }
        acc
    }
}

/// Root over already hashed leaves.
pub fn root_of_hashes<C: CryptoProvider>(provider: &C, leaves: &[Hash]) -> Hash {
    let mut b = RootBuilder::new();
    for l in leaves {
        b.push_leaf_hash(provider, *l);
    }
    b.root(provider)
}

/// Largest power of two strictly smaller than `n` (`n ≥ 2`).
fn split_point(n: usize) -> usize {
    let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
    if k == n {
        k / 2
    } else {
        k
    }
}

/// Writes the audit path of leaf `index` among `leaves` into `out` (deepest
/// sibling first, as RFC 9162 orders it) and returns its length.
pub fn inclusion_proof<C: CryptoProvider>(
    provider: &C,
    leaves: &[Hash],
    index: usize,
    out: &mut [Hash],
) -> Result<usize, Error> {
    if index >= leaves.len() {
        return Err(Misuse::InvalidArgument.into());
    }
    // First pass: the path length, so the second pass can fill from the top down.
    let mut len = 0;
    let (mut lo, mut hi, mut m) = (0usize, leaves.len(), index);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if m < k {
            hi = lo + k;
        } else {
            lo += k;
            m -= k;
        }
        len += 1;
    }
    let out = out.get_mut(..len).ok_or(Misuse::BufferTooSmall)?;
    let (mut lo, mut hi, mut m, mut pos) = (0usize, leaves.len(), index, len);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        pos -= 1;
        if m < k {
            out[pos] = root_of_hashes(provider, &leaves[lo + k..hi]);
            hi = lo + k;
        } else {
            out[pos] = root_of_hashes(provider, &leaves[lo..lo + k]);
            lo += k;
            m -= k;
        }
    }
    Ok(len)
}

/// Checks that `leaf` sits at `index` of a tree of `tree_size` leaves with `root`
/// (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion<C: CryptoProvider>(
    provider: &C,
    leaf: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(provider, p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(provider, &r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && crate::crypto::ct_eq(&r, root)
}

/// Writes the consistency proof from the first `old_size` of `leaves` to all
/// of them into `out` (RFC 9162 section 2.1.4.1, deepest node first) and
/// returns its length; empty when `old_size` is 0 or the whole tree.
pub fn consistency_proof<C: CryptoProvider>(
    provider: &C,
    leaves: &[Hash],
    old_size: usize,
    out: &mut [Hash],
) -> Result<usize, Error> {
    if old_size > leaves.len() {
        return Err(Misuse::InvalidArgument.into());
    }
    if old_size == 0 || old_size == leaves.len() {
        return Ok(0);
    }
    // SUBPROOF(m, D[lo..hi], whole) walked from the top: each split adds one
    // node above the deeper ones; the walk ends at a subtree of exactly m
    // leaves, whose root is part of the proof unless it is the old tree itself.
    let walk = |emit: &mut dyn FnMut(Option<(usize, usize)>)| {
        let (mut lo, mut hi, mut m, mut whole) = (0usize, leaves.len(), old_size, true);
        loop {
            if m == hi - lo {
                if !whole {
                    emit(Some((lo, hi)));
                }
                emit(None);
                return;
            }
            let k = split_point(hi - lo);
            if m <= k {
                emit(Some((lo + k, hi)));
                hi = lo + k;
            } else {
                emit(Some((lo, lo + k)));
                lo += k;
                m -= k;
                whole = false;
            }
        }
    };
    let mut len = 0;
    walk(&mut |r| len += usize::from(r.is_some()));
    let out = out.get_mut(..len).ok_or(Misuse::BufferTooSmall)?;
    // The splits come top-down and the proof lists them bottom-up; the final
    // subtree's root (if any) comes first.
    let mut top = len;
    let mut last: Option<(usize, usize)> = None;
    walk(&mut |r| {
        if let Some(range) = r {
            if let Some(prev) = last.replace(range) {
                top -= 1;
                out[top] = root_of_hashes(provider, &leaves[prev.0..prev.1]);
            }
        } else if let Some(prev) = last.take() {
            top -= 1;
            out[top] = root_of_hashes(provider, &leaves[prev.0..prev.1]);
        }
    });
    Ok(len)
}

/// Checks that a tree of `new_size` leaves with `new_root` extends the tree
/// of its first `old_size` leaves with `old_root` (RFC 9162 section 2.1.4.2).
/// Equal sizes need equal roots and an empty proof; from the empty tree only
/// its root and an empty proof are accepted.
pub fn verify_consistency<C: CryptoProvider>(
    provider: &C,
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    use crate::crypto::ct_eq;
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && ct_eq(old_root, new_root);
    }
    if old_size == 0 {
        return proof.is_empty() && ct_eq(old_root, &empty_root(provider));
    }
    if proof.is_empty() || proof.len() > MAX_PROOF_LEN {
        return false;
    }
    // An old tree that is a perfect subtree is itself the first node of the path.
    let prepend = old_size.is_power_of_two().then_some(old_root);
    let mut path = prepend.into_iter().chain(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let Some(first) = path.next() else {
        return false;
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(provider, c, &fr);
            sr = node_hash(provider, c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(provider, &sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && ct_eq(&fr, old_root) && ct_eq(&sr, new_root)
}

#[cfg(all(test, feature = "rustcrypto"))]
mod tests {
    use super::*;
    use crate::crypto::RustCrypto;

    const P: RustCrypto = RustCrypto;

    /// The RFC's recursive definition, as the reference.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(&P),
            1 => leaves[0],
            n => {
                let k = split_point(n);
                node_hash(
                    &P,
                    &reference_root(&leaves[..k]),
                    &reference_root(&leaves[k..]),
                )
            }
        }
    }

    fn leaves(n: usize) -> [Hash; 70] {
        let mut out = [[0u8; 32]; 70];
        for (i, l) in out.iter_mut().enumerate().take(n) {
            *l = leaf_hash(&P, &[i as u8]);
        }
        out
    }

    #[test]
    fn streaming_root_matches_the_recursive_definition_for_every_size() {
        for n in 0..70 {
            let l = leaves(n);
            assert_eq!(
                root_of_hashes(&P, &l[..n]),
                reference_root(&l[..n]),
                "n = {n}"
            );
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_index_does_not() {
        for n in 1..40 {
            let l = leaves(n);
            let root = root_of_hashes(&P, &l[..n]);
            for i in 0..n {
                let mut path = [[0u8; 32]; MAX_PROOF_LEN];
                let len = inclusion_proof(&P, &l[..n], i, &mut path).unwrap();
                assert!(
                    verify_inclusion(&P, &l[i], i as u64, n as u64, &path[..len], &root),
                    "n={n} i={i}"
                );
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(!verify_inclusion(
                        &P,
                        &l[i],
                        j as u64,
                        n as u64,
                        &path[..len],
                        &root
                    ));
                }
                let other_root = node_hash(&P, &root, &root);
                assert!(!verify_inclusion(
                    &P,
                    &l[i],
                    i as u64,
                    n as u64,
                    &path[..len],
                    &other_root
                ));
            }
        }
    }

    #[test]
    fn proof_for_out_of_range_index_is_misuse() {
        let l = leaves(3);
        let mut path = [[0u8; 32]; 4];
        assert!(inclusion_proof(&P, &l[..3], 3, &mut path).is_err());
        assert!(!verify_inclusion(&P, &l[0], 3, 3, &[], &l[0]));
    }
    /// RFC 9162's recursive SUBPROOF, as the reference for the proof's nodes.
    fn reference_subproof(
        m: usize,
        d: &[Hash],
        whole: bool,
        out: &mut [Hash; 70],
        len: &mut usize,
    ) {
        let n = d.len();
        if m == n {
            if !whole {
                out[*len] = reference_root(d);
                *len += 1;
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            reference_subproof(m, &d[..k], whole, out, len);
            out[*len] = reference_root(&d[k..]);
        } else {
            reference_subproof(m - k, &d[k..], false, out, len);
            out[*len] = reference_root(&d[..k]);
        }
        *len += 1;
    }

    #[test]
    fn every_consistency_proof_is_rfc_9162s_and_verifies_and_any_change_is_refused() {
        for n in 1..34 {
            let l = leaves(n);
            let new_root = root_of_hashes(&P, &l[..n]);
            for m in 0..=n {
                let old_root = root_of_hashes(&P, &l[..m]);
                let mut proof = [[0u8; 32]; MAX_PROOF_LEN];
                let len = consistency_proof(&P, &l[..n], m, &mut proof).unwrap();
                if 0 < m && m < n {
                    let (mut want, mut want_len) = ([[0u8; 32]; 70], 0);
                    reference_subproof(m, &l[..n], true, &mut want, &mut want_len);
                    assert_eq!(&proof[..len], &want[..want_len], "m={m} n={n}");
                }
                let p = &proof[..len];
                let ok = |old: &Hash, new: &Hash, p: &[Hash]| {
                    verify_consistency(&P, m as u64, n as u64, old, new, p)
                };
                assert!(ok(&old_root, &new_root, p), "m={m} n={n}");
                let other = leaf_hash(&P, b"other");
                assert!(!ok(&other, &new_root, p), "wrong old root, m={m} n={n}");
                // Every tree extends the empty one.
                assert_eq!(
                    ok(&old_root, &other, p),
                    m == 0,
                    "other new root, m={m} n={n}"
                );
                for i in 0..len {
                    let mut bad = proof;
                    bad[i][0] ^= 1;
                    assert!(
                        !ok(&old_root, &new_root, &bad[..len]),
                        "node {i}, m={m} n={n}"
                    );
                }
                if len > 0 {
                    assert!(
                        !ok(&old_root, &new_root, &p[..len - 1]),
                        "short, m={m} n={n}"
                    );
                }
                let mut long = proof;
                long[len] = other;
                assert!(
                    !ok(&old_root, &new_root, &long[..len + 1]),
                    "long, m={m} n={n}"
                );
                if m < n {
                    assert!(
                        !verify_consistency(&P, n as u64, m as u64, &new_root, &old_root, p),
                        "shrinking, m={m} n={n}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_consistency_proof_from_beyond_the_tree_is_misuse() {
        let l = leaves(3);
        let mut proof = [[0u8; 32]; 4];
        assert!(consistency_proof(&P, &l[..3], 4, &mut proof).is_err());
        assert!(consistency_proof(&P, &l[..3], 1, &mut proof[..0]).is_err());
    }
}
