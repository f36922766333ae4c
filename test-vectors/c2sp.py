#!/usr/bin/env python3
"""An independent implementation of the C2SP transparency-log formats, written
from the C2SP texts alone (c2sp.org/signed-note, tlog-checkpoint,
tlog-cosignature, tlog-tiles, tlog-witness) and RFC 9162 §2.1, plus the
80-byte log entry of docs/protocol.md §15. It shares no code with gridpow's
Rust implementation nor with verify.py.

Usage:
  python3 test-vectors/c2sp.py                checks test-vectors/log.json
  python3 test-vectors/c2sp.py --self-test    checks the library on the C2SP
                                              texts' own examples and on a
                                              log it builds itself
  python3 test-vectors/c2sp.py audit --url http://HOST:PORT/log/ --vkey VKEY \\
      [--witness-vkey VKEY ...] [--origin ORIGIN]
                                              audits a live tlog-tiles log
                                              (stdlib urllib only)
Exit status 0 when everything checks out (pip install cryptography).
"""
import base64
import gzip
import hashlib
import json
import re
import struct
import sys
import unicodedata
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HERE = Path(__file__).parent
X = bytes.fromhex


class C2SPError(ValueError):
    """A note, checkpoint, tile, bundle, entry or proof refused per its specification."""


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def refused(fn, *args):
    """The C2SPError message when fn(*args) refuses its input, else None."""
    try:
        fn(*args)
    except C2SPError as e:
        return str(e) or "refused"
    return None


def must(what, fn, *args):
    """fn(*args), or a FAIL line naming what was being checked when the input is refused."""
    try:
        return fn(*args)
    except C2SPError as e:
        check(False, f"{what}: {e}")


def sha256(b):
    return hashlib.sha256(b).digest()


# ---------------------------------------------------------------- base64, decimals

def b64decode(s, what="base64"):
    """Standard base64 (RFC 4648 §4), padded; a non-canonical encoding is refused."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise C2SPError(f"{what}: not standard base64: {s!r}") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise C2SPError(f"{what}: non-canonical base64: {s!r}")
    return raw


def b64(b):
    return base64.b64encode(b).decode("ascii")


DECIMAL = re.compile(r"0|[1-9][0-9]*\Z")


def parse_decimal(s, what, limit=2**64 - 1):
    """ASCII decimal, no leading zeroes (tlog-checkpoint, tlog-witness)."""
    if not DECIMAL.fullmatch(s):
        raise C2SPError(f"{what}: not a decimal without leading zeroes: {s!r}")
    n = int(s)
    if n > limit:
        raise C2SPError(f"{what}: {n} is too large")
    return n


# ---------------------------------------------------------------- signed-note keys

SIG_ED25519 = 0x01       # signed-note: Ed25519 over the note text
SIG_COSIGNATURE = 0x04   # tlog-cosignature: timestamped Ed25519 cosignature/v1


def is_unicode_space(c):
    return c.isspace() or unicodedata.category(c) in ("Zs", "Zl", "Zp")


def check_key_name(name):
    """signed-note: key names are non-empty, without Unicode spaces or '+'."""
    if not name:
        raise C2SPError("key name is empty")
    if "+" in name:
        raise C2SPError(f"key name {name!r} contains '+'")
    if any(is_unicode_space(c) for c in name):
        raise C2SPError(f"key name {name!r} contains a space")


def key_id(name, sig_type, public):
    """SHA-256(key name || 0x0A || signature type || public key)[:4] (signed-note, tlog-cosignature)."""
    return sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public)[:4]


class Verifier:
    """A verifier key: key name, 4-byte key ID, signature type and public key."""

    def __init__(self, name, sig_type, public, kid=None):
        check_key_name(name)
        if sig_type not in (SIG_ED25519, SIG_COSIGNATURE):
            raise C2SPError(f"unsupported signature type 0x{sig_type:02x}")
        if len(public) != 32:
            raise C2SPError(f"Ed25519 public key of {len(public)} bytes")
        expected = key_id(name, sig_type, public)
        if kid is not None and kid != expected:
            # Both types define the key ID as this hash (MUST for 0x04, "generated as recommended" for 0x01).
            raise C2SPError(f"key ID {kid.hex()} is not the key hash {expected.hex()}")
        self.name, self.sig_type, self.public, self.key_id = name, sig_type, public, expected
        self.key = Ed25519PublicKey.from_public_bytes(public)

    def vkey(self):
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([self.sig_type]) + self.public)}"

    def __repr__(self):
        return f"Verifier({self.vkey()})"


HEX8 = re.compile(r"[0-9a-f]{8}")


def parse_vkey(s):
    """<key name>+hex(32-bit key ID)+base64(signature type || public key). The
    name has no '+', the hex part none either; the base64 part may contain '+'."""
    parts = s.split("+", 2)
    if len(parts) != 3:
        raise C2SPError(f"vkey {s!r}: not name+id+key")
    name, kid_hex, key_b64 = parts
    check_key_name(name)
    if not HEX8.fullmatch(kid_hex):
        raise C2SPError(f"vkey {s!r}: key ID is not 8 lowercase hex digits")
    material = b64decode(key_b64, "vkey key material")
    if not material:
        raise C2SPError(f"vkey {s!r}: no key material")
    return Verifier(name, material[0], material[1:], X(kid_hex))


def signer(seed, name, sig_type):
    """(private key, Verifier) from a 32-byte Ed25519 seed."""
    sk = Ed25519PrivateKey.from_private_bytes(seed)
    return sk, Verifier(name, sig_type, sk.public_key().public_bytes_raw())


# ---------------------------------------------------------------- signed notes

MAX_SIGNATURES = 100  # signed-note: verifiers MUST accept at least 16


def parse_note(note):
    """(text, [(key name, key ID, signature bytes)]) of a signed note (str or
    bytes), refusing what signed-note calls malformed. The text ends with its
    newline; it is separated from the signatures by the last blank line."""
    if isinstance(note, (bytes, bytearray)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise C2SPError("note is not valid UTF-8") from None
    for c in note:
        if ord(c) < 0x20 and c != "\n":
            raise C2SPError(f"note contains control character U+{ord(c):04X}")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise C2SPError("note has no blank line before its signatures")
    text, sigs = note[:cut + 1], note[cut + 2:]
    if not sigs:
        raise C2SPError("note has no signature lines")
    if not sigs.endswith("\n"):
        raise C2SPError("note's last signature line does not end in a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise C2SPError(f"note has {len(lines)} signatures")
    out = []
    for line in lines:
        if not line.startswith("\u2014 "):
            raise C2SPError(f"signature line does not start with an em dash and a space: {line!r}")
        fields = line[2:].split(" ")
        if len(fields) != 2:
            raise C2SPError(f"signature line is not '— name signature': {line!r}")
        name, sig_b64 = fields
        check_key_name(name)
        sig = b64decode(sig_b64, f"signature by {name}")
        if len(sig) < 5:
            raise C2SPError(f"signature by {name} has {len(sig)} bytes (key ID and signature needed)")
        out.append((name, sig[:4], sig[4:]))
    return text, out


def cosignature_message(text, timestamp):
    """tlog-cosignature, Ed25519 signed message: header line, time line, note text."""
    return f"cosignature/v1\ntime {timestamp}\n".encode("ascii") + text.encode("utf-8")


def verify_signature(v, text, sig):
    """Checks one note signature (bytes after the key ID) by a known key; returns
    the cosignature timestamp (None for a plain Ed25519 note signature)."""
    if v.sig_type == SIG_ED25519:
        if len(sig) != 64:
            raise C2SPError(f"Ed25519 signature by {v.name} has {len(sig)} bytes")
        msg, timestamp = text.encode("utf-8"), None
    else:
        if len(sig) != 8 + 64:
            raise C2SPError(f"cosignature by {v.name} has {len(sig)} bytes, not 8 + 64")
        timestamp = struct.unpack(">Q", sig[:8])[0]
        if timestamp > 2**63 - 1:
            raise C2SPError(f"cosignature by {v.name}: timestamp {timestamp} exceeds 2^63 - 1")
        msg, sig = cosignature_message(text, timestamp), sig[8:]
    try:
        v.key.verify(sig, msg)
    except InvalidSignature:
        raise C2SPError(f"signature by {v.name} ({v.key_id.hex()}) does not verify") from None
    return timestamp


def verify_note(note, verifiers):
    """(text, [(Verifier, timestamp or None)]) when at least one signature by a
    known key verifies. Signatures by unknown keys (name and ID not both
    matching) are ignored; a known key's signature that fails refuses the note."""
    text, sigs = parse_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    good = []
    for name, kid, sig in sigs:
        v = known.get((name, kid))
        if v is not None:
            good.append((v, verify_signature(v, text, sig)))
    if not good:
        raise C2SPError("no signature by a known key")
    return text, good


def sign_note(text, keys):
    """A signed note over text (ending in a newline) by [(private key, Verifier, timestamp or None)]."""
    if not text.endswith("\n"):
        raise C2SPError("note text does not end in a newline")
    return text + "\n" + "".join(signature_line(sk, v, text, t) for sk, v, t in keys)


def signature_line(sk, v, text, timestamp=None):
    if v.sig_type == SIG_ED25519:
        sig = sk.sign(text.encode("utf-8"))
    else:
        sig = struct.pack(">Q", timestamp) + sk.sign(cosignature_message(text, timestamp))
    return f"\u2014 {v.name} {b64(v.key_id + sig)}\n"


# ---------------------------------------------------------------- checkpoints

class Checkpoint:
    def __init__(self, origin, size, root, extensions=()):
        self.origin, self.size, self.root, self.extensions = origin, size, root, list(extensions)

    def text(self):
        return "".join(line + "\n" for line in [self.origin, str(self.size), b64(self.root)] + self.extensions)


def parse_checkpoint(text):
    """tlog-checkpoint note text: origin, tree size, base64 root hash, extension lines."""
    if not text.endswith("\n"):
        raise C2SPError("checkpoint text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise C2SPError(f"checkpoint has {len(lines)} lines, at least 3 needed")
    for i, line in enumerate(lines):
        if not line:
            raise C2SPError(f"checkpoint line {i + 1} is empty")
    size = parse_decimal(lines[1], "checkpoint tree size")
    root = b64decode(lines[2], "checkpoint root hash")
    if len(root) != 32:
        raise C2SPError(f"checkpoint root hash has {len(root)} bytes")
    return Checkpoint(lines[0], size, root, lines[3:])


def verify_checkpoint(note, log_verifiers, origin=None):
    """(Checkpoint, text, signatures) of a checkpoint note signed by a log key."""
    text, good = verify_note(note, log_verifiers)
    cp = parse_checkpoint(text)
    if origin is not None and cp.origin != origin:
        raise C2SPError(f"checkpoint origin {cp.origin!r} is not {origin!r}")
    return cp, text, good


def verify_log_note(note, log_v, witness_verifiers=(), origin=None):
    """Checkpoint of a note that must carry a valid log signature; signatures by
    the known witnesses are checked too (one that fails refuses the note)."""
    text, good = verify_note(note, [log_v] + list(witness_verifiers))
    if log_v not in [g[0] for g in good]:
        raise C2SPError(f"no valid signature by the log key {log_v.name}")
    cp = parse_checkpoint(text)
    if origin is not None and cp.origin != origin:
        raise C2SPError(f"checkpoint origin {cp.origin!r} is not {origin!r}")
    return cp


def cosignatures(note, witness_verifiers):
    """{witness name: timestamp} of the valid cosignature/v1 signatures on a note."""
    text, good = verify_note(note, witness_verifiers)
    out = {}
    for v, t in good:
        if v.sig_type != SIG_COSIGNATURE:
            raise C2SPError(f"{v.name} is not a cosignature/v1 key")
        out[v.name] = t
    return out


# ---------------------------------------------------------------- RFC 9162 Merkle trees

def leaf_hash(entry):
    return sha256(b"\x00" + entry)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


EMPTY_ROOT = sha256(b"")


def split_point(n):
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(hashes):
    """RFC 9162 §2.1.1 Merkle Tree Hash over leaf hashes."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = split_point(n)
    return node_hash(mth(hashes[:k]), mth(hashes[k:]))


def inclusion_path(m, hashes):
    """RFC 9162 §2.1.3.1 PATH(m, D[n]) over leaf hashes (self-test only)."""
    n = len(hashes)
    if n <= 1:
        return []
    k = split_point(n)
    if m < k:
        return inclusion_path(m, hashes[:k]) + [mth(hashes[k:])]
    return inclusion_path(m - k, hashes[k:]) + [mth(hashes[:k])]


def consistency_proof(m, hashes):
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (self-test only)."""
    def subproof(m, d, b):
        n = len(d)
        if m == n:
            return [] if b else [mth(d)]
        k = split_point(n)
        if m <= k:
            return subproof(m, d[:k], b) + [mth(d[k:])]
        return subproof(m - k, d[k:], False) + [mth(d[:k])]
    if m == 0 or m == len(hashes):
        return []
    return subproof(m, hashes, True)


def verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162 §2.1.3.2; raises C2SPError unless the proof verifies."""
    if any(len(p) != 32 for p in proof):
        raise C2SPError("inclusion proof hash of the wrong length")
    # 1. leaf_index >= tree_size fails.
    if index >= size:
        raise C2SPError(f"leaf index {index} not below tree size {size}")
    # 2., 3.
    fn, sn, r = index, size - 1, leaf
    # 4.
    for p in proof:
        if sn == 0:
            raise C2SPError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 5.
    if sn != 0:
        raise C2SPError("inclusion proof too short")
    if r != root:
        raise C2SPError("inclusion proof does not lead to the root")


def verify_consistency(first, second, first_hash, second_hash, proof):
    """RFC 9162 §2.1.4.2; raises C2SPError unless the proof verifies. The RFC's
    steps need 0 < first < second; an equal size needs an empty proof and equal
    roots, and the empty tree (size 0, hash of the empty string) an empty proof."""
    if any(len(p) != 32 for p in proof):
        raise C2SPError("consistency proof hash of the wrong length")
    if first > second:
        raise C2SPError(f"old size {first} above new size {second}")
    if first == second:
        if proof:
            raise C2SPError("consistency proof between equal sizes is not empty")
        if first_hash != second_hash:
            raise C2SPError("equal sizes with different roots")
        return
    if first == 0:
        if proof:
            raise C2SPError("consistency proof from the empty tree is not empty")
        if first_hash != EMPTY_ROOT:
            raise C2SPError("size 0 with a root other than the empty tree's")
        return
    path = list(proof)
    # 1.
    if not path:
        raise C2SPError("empty consistency proof")
    # 2.
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    # 3.
    fn, sn = first - 1, second - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise C2SPError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise C2SPError("consistency proof too short")
    if fr != first_hash:
        raise C2SPError("consistency proof does not lead to the old root")
    if sr != second_hash:
        raise C2SPError("consistency proof does not lead to the new root")


# ---------------------------------------------------------------- tlog-tiles

TILE_WIDTH = 256
HASH_LEN = 32


def encode_index(n):
    """Tile index as zero-padded 3-digit path elements, all but the last with 'x': 1234067 -> x001/x234/067."""
    if n < 0:
        raise C2SPError("negative tile index")
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(parts))


def tile_path(level, index, width=TILE_WIDTH):
    """tile/<L>/<N>[.p/<W>], level an int 0..63 or "entries" for an entry bundle."""
    if level != "entries" and not 0 <= level <= 63:
        raise C2SPError(f"tile level {level}")
    if not 1 <= width <= TILE_WIDTH:
        raise C2SPError(f"tile width {width}")
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_index(index)}{suffix}"


def parse_tile_path(path):
    """(level or "entries", index, width) of a tile or entry-bundle path; refuses non-canonical spellings."""
    m = re.fullmatch(r"tile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?", path)
    if not m:
        raise C2SPError(f"not a tile path: {path!r}")
    level = m.group(1) if m.group(1) == "entries" else int(m.group(1))
    index = int("".join(p.lstrip("x") for p in m.group(2).split("/")))
    width = int(m.group(3)) if m.group(3) else TILE_WIDTH
    if level != "entries" and level > 63:
        raise C2SPError(f"tile level {level} above 63: {path!r}")
    if m.group(3) and width >= TILE_WIDTH:
        raise C2SPError(f"partial tile width {width}: {path!r}")
    if tile_path(level, index, width) != path:
        raise C2SPError(f"non-canonical tile path: {path!r}")
    return level, index, width


def tiles_for_size(size):
    """[(level, index, width)] of every hash tile (full and partial) of a tree of this size, by tlog-tiles."""
    out, level = [], 0
    while size // TILE_WIDTH**level:
        count = size // TILE_WIDTH**level
        out += [(level, n, TILE_WIDTH) for n in range(count // TILE_WIDTH)]
        if count % TILE_WIDTH:
            out.append((level, count // TILE_WIDTH, count % TILE_WIDTH))
        level += 1
    return out


def bundles_for_size(size):
    return [("entries", n, w) for (level, n, w) in tiles_for_size(size) if level == 0]


def level_hashes(leaves, level):
    """The hashes a level-L tile holds: MTH of every complete 256^L-leaf subtree, in order."""
    hashes = list(leaves)
    for _ in range(level):
        hashes = [mth(hashes[i:i + TILE_WIDTH]) for i in range(0, len(hashes) - TILE_WIDTH + 1, TILE_WIDTH)]
    return hashes


def tile_bytes(leaves, level, index, width):
    """A hash tile recomputed from the leaf hashes of the tree."""
    hashes = level_hashes(leaves, level)
    lo, hi = index * TILE_WIDTH, index * TILE_WIDTH + width
    if hi > len(hashes):
        raise C2SPError(f"{tile_path(level, index, width)} lies beyond a tree of {len(leaves)} leaves")
    return b"".join(hashes[lo:hi])


def parse_bundle(data):
    """Entries of an entry bundle: big-endian uint16 length-prefixed."""
    out, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise C2SPError("entry bundle ends inside a length prefix")
        n = struct.unpack(">H", data[i:i + 2])[0]
        if i + 2 + n > len(data):
            raise C2SPError("entry bundle ends inside an entry")
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return out


def make_bundle(entries):
    return b"".join(struct.pack(">H", len(e)) + e for e in entries)


def tile_hashes(data, width):
    if len(data) != width * HASH_LEN:
        raise C2SPError(f"tile of {len(data)} bytes, {width} hashes expected")
    return [data[i:i + HASH_LEN] for i in range(0, len(data), HASH_LEN)]


def perfect_root(hashes):
    """Root of a perfect subtree over a power-of-two number of hashes."""
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def root_from_tiles(size, get_tile):
    """The RFC 9162 root of a tree of this size from its tiles alone. get_tile(level,
    index, width) returns a tile's bytes. The tree is the right fold of its
    perfect subtrees (sizes the set bits of size, largest first); one of 2^k
    leaves is the perfect tree over 2^(k mod 8) consecutive hashes of level k // 8."""
    if size == 0:
        return EMPTY_ROOT
    cache = {}

    def hash_at(level, i):
        count = size // TILE_WIDTH**level
        n = i // TILE_WIDTH
        width = TILE_WIDTH if (n + 1) * TILE_WIDTH <= count else count % TILE_WIDTH
        if (level, n) not in cache:
            cache[(level, n)] = tile_hashes(get_tile(level, n, width), width)
        return cache[(level, n)][i % TILE_WIDTH]

    subtrees, start = [], 0
    for k in range(63, -1, -1):
        if size >> k & 1:
            level, m = k // 8, k % 8
            first = start // TILE_WIDTH**level
            subtrees.append(perfect_root([hash_at(level, first + j) for j in range(1 << m)]))
            start += 1 << k
    root = subtrees[-1]
    for h in reversed(subtrees[:-1]):
        root = node_hash(h, root)
    return root


# ---------------------------------------------------------------- gridpow log entry (protocol §15)

ENTRY_LEN = 80


def make_entry(relay_id, height, block_hash, merkle_root):
    if len(block_hash) != 32 or len(merkle_root) != 32:
        raise C2SPError("block hash and Merkle root are 32 bytes")
    return struct.pack("<BBHIQ", 2, 0x05, 0, relay_id, height) + block_hash + merkle_root


def parse_entry(entry):
    """(relay id, height, block hash, Merkle root); refuses another length, version, type or reserved bytes."""
    if len(entry) != ENTRY_LEN:
        raise C2SPError(f"log entry of {len(entry)} bytes, not 80")
    version, typ, reserved, relay_id, height = struct.unpack("<BBHIQ", entry[:16])
    if version != 2:
        raise C2SPError(f"log entry version {version}")
    if typ != 0x05:
        raise C2SPError(f"log entry type 0x{typ:02x}")
    if reserved:
        raise C2SPError("log entry reserved bytes not zero")
    return relay_id, height, entry[16:48], entry[48:80]


# ---------------------------------------------------------------- tlog-witness add-checkpoint

class AddCheckpoint:
    def __init__(self, old, proof, note):
        self.old, self.proof, self.note = old, proof, note


def parse_add_checkpoint(body):
    """An add-checkpoint request body: 'old N', up to 63 base64 proof lines, a blank line, a checkpoint note."""
    cut = body.find("\n\n")
    if cut < 0:
        raise C2SPError("add-checkpoint request has no blank line")
    lines, note = body[:cut].split("\n"), body[cut + 2:]
    m = re.fullmatch(r"old (.*)", lines[0])
    if not m:
        raise C2SPError(f"add-checkpoint request does not start with an old size line: {lines[0]!r}")
    old = parse_decimal(m.group(1), "old size")
    proof = [b64decode(line, "consistency proof line") for line in lines[1:]]
    if len(proof) > 63:
        raise C2SPError(f"{len(proof)} consistency proof lines, at most 63")
    if any(len(p) != 32 for p in proof):
        raise C2SPError("consistency proof line is not a 32-byte hash")
    return AddCheckpoint(old, proof, note)


def witness_status(body, log_verifiers, witness_size, witness_root):
    """(HTTP status, reason) a tlog-witness must answer an add-checkpoint request
    with, given the log keys it trusts (for their origin) and the size and root
    of the latest checkpoint it cosigned for that origin (0 and the empty root if none)."""
    try:
        req = parse_add_checkpoint(body)
    except C2SPError as e:
        return 400, str(e)
    origin = req.note.split("\n", 1)[0]
    if origin not in {v.name for v in log_verifiers}:
        return 404, f"unknown origin {origin!r}"
    try:
        text, _ = verify_note(req.note, [v for v in log_verifiers if v.name == origin])
    except C2SPError as e:
        return 403, str(e)
    try:
        cp = parse_checkpoint(text)
    except C2SPError as e:
        return 400, str(e)
    if req.old > cp.size:
        return 400, f"old size {req.old} above checkpoint size {cp.size}"
    if req.old != witness_size:
        return 409, f"old size {req.old} is not the witness's {witness_size}"
    if cp.size == 0 and cp.root != EMPTY_ROOT:
        return 422, "size 0 with a root other than the empty tree's"
    try:
        verify_consistency(req.old, cp.size, witness_root, cp.root, req.proof)
    except C2SPError as e:
        return 422, str(e)
    return 200, "cosign"


# ---------------------------------------------------------------- log.json

def entry_from_fields(e):
    return make_entry(e["relay_id"], e["height"], X(e["block_hash"]), X(e["merkle_root"]))


def check_log(v, label="log.json"):
    """Every check of the log vector format on a parsed log.json."""
    origin = v["origin"]

    # Keys: seeds -> public keys -> vkeys, and the vkeys parse back.
    lk, wk = v["log_key"], v["witness_key"]
    log_sk, log_v = signer(X(lk["seed"]), lk["name"], SIG_ED25519)
    wit_sk, wit_v = signer(X(wk["seed"]), wk["name"], SIG_COSIGNATURE)
    check(log_v.public.hex() == lk["public"] and log_v.vkey() == lk["vkey"],
          f"{label}: log key {lk['vkey']} from its seed (Ed25519, type 0x01, key hash {log_v.key_id.hex()})")
    check(wit_v.public.hex() == wk["public"] and wit_v.vkey() == wk["vkey"],
          f"{label}: witness key {wk['vkey']} from its seed (cosignature/v1, type 0x04)")
    check(parse_vkey(lk["vkey"]).vkey() == lk["vkey"] and parse_vkey(wk["vkey"]).vkey() == wk["vkey"],
          f"{label}: both vkeys parse (name, key hash, type, 32-byte key)")
    check(lk["name"] == origin, f"{label}: the log's key name is the origin {origin}")

    # Entries (protocol §15) and leaf hashes.
    entries, leaves = [], []
    for i, e in enumerate(v["entries"]):
        entry = X(e["entry"])
        if entry != entry_from_fields(e) or parse_entry(entry) != (e["relay_id"], e["height"], X(e["block_hash"]), X(e["merkle_root"])):
            check(False, f"{label}: entry {i} bytes from its fields")
        if leaf_hash(entry).hex() != e["leaf_hash"]:
            check(False, f"{label}: entry {i} leaf hash")
        if len(v["entries"]) == 600 and (
                e["relay_id"] != 1 + i % 3 or e["height"] != i // 3
                or X(e["block_hash"]) != sha256(b"gridpow test block" + struct.pack("<Q", i))
                or X(e["merkle_root"]) != sha256(b"gridpow test root" + struct.pack("<Q", i))):
            check(False, f"{label}: entry {i} follows the generator rule")
        entries.append(entry)
        leaves.append(leaf_hash(entry))
    check(True, f"{label}: {len(entries)} entries are 80-byte §15 entries built from their fields, leaf hash SHA-256(0x00 ‖ entry)")
    n = len(entries)

    # Tree roots.
    roots = {0: EMPTY_ROOT}
    for t in v["trees"]:
        check(mth(leaves[:t["size"]]).hex() == t["root"], f"{label}: root of size {t['size']} from the leaf hashes")
        roots[t["size"]] = X(t["root"])

    def root_of(size):
        if size not in roots:
            roots[size] = mth(leaves[:size])
        return roots[size]

    # Checkpoints and cosignatures.
    for c in v["checkpoints"]:
        cp, text, good = must(f"{label}: checkpoint {c['size']}", verify_checkpoint, c["note"], [log_v], origin)
        check(cp.size == c["size"] and cp.root == root_of(cp.size) and not cp.extensions
              and [g[0] for g in good] == [log_v] and len(parse_note(c["note"])[1]) == 1,
              f"{label}: checkpoint {cp.size} is signed by the log key, origin, size and root match the tree")
        ctext, cgood = must(f"{label}: cosigned checkpoint {cp.size}", verify_note, c["cosigned_note"], [log_v])
        cos = must(f"{label}: cosigned checkpoint {cp.size}", cosignatures, c["cosigned_note"], [wit_v])
        check(ctext == text and cos == {wit_v.name: c["cosignature_time"]}
              and set(parse_note(c["note"])[1]) <= set(parse_note(c["cosigned_note"])[1]),
              f"{label}: checkpoint {cp.size} cosigned by {wit_v.name} (cosignature/v1, time {c['cosignature_time']}), log signature kept")
        check(refused(cosignatures, c["cosigned_note"].replace(f"\n{cp.size}\n", f"\n{cp.size + 1}\n", 1), [wit_v]) is not None
              and refused(verify_note, c["note"].replace(origin, origin + "x", 1), [log_v]) is not None,
              f"{label}: checkpoint {cp.size}: an altered size or origin no longer verifies")
        # The cosignature signs the time: another time refuses.
        name, kid, sig = [s for s in parse_note(c["cosigned_note"])[1] if s[0] == wit_v.name][0]
        moved = struct.pack(">Q", c["cosignature_time"] + 1) + sig[8:]
        check(refused(verify_signature, wit_v, text, moved) is not None,
              f"{label}: checkpoint {cp.size}: the cosignature with its time moved by 1 s does not verify")

    # Tiles and entry bundles.
    served = {}
    for t in v["tiles"]:
        if t["path"] in served:
            check(False, f"{label}: tile {t['path']} listed twice")
        served[t["path"]] = base64.b64decode(t["data"], validate=True)
    needed = [tile_path(*p) for p in tiles_for_size(n) + bundles_for_size(n)]
    check(set(needed) <= set(served),
          f"{label}: every tile and bundle of a size-{n} tree is served ({', '.join(needed)})")
    for path, data in served.items():
        level, index, width = must(f"{label}: tile path", parse_tile_path, path)
        if level == "entries":
            lo = index * TILE_WIDTH
            check(lo + width <= n and must(f"{label}: {path}", parse_bundle, data) == entries[lo:lo + width] and make_bundle(entries[lo:lo + width]) == data,
                  f"{label}: {path} is entries {lo}..{lo + width - 1}, uint16 BE length-prefixed")
        else:
            check(data == tile_bytes(leaves, level, index, width),
                  f"{label}: {path} recomputed from the entries ({width} hashes of {TILE_WIDTH}^{level}-leaf subtrees)")
    for size in sorted(roots):
        if 0 < size <= n:
            if size == n or all(tile_path(*p) in served for p in tiles_for_size(size)):
                got = root_from_tiles(size, lambda l, i, w: served[tile_path(l, i, w)])
                check(got == root_of(size), f"{label}: root of size {size} recomputed from the served tiles alone")

    # Inclusion and consistency proofs.
    for p in v["inclusion"]:
        proof = [X(h) for h in p["proof"]]
        i, size = p["index"], p["size"]
        must(f"{label}: inclusion of leaf {i} in tree {size}", verify_inclusion, leaves[i], i, size, proof, root_of(size))
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
            if refused(verify_inclusion, leaves[i], i, size, bad, root_of(size)) is None:
                check(False, f"{label}: inclusion {i} in {size} with hash {j} altered is refused")
        if refused(verify_inclusion, leaves[i], i, size, proof + [leaves[0]], root_of(size)) is None \
                or (proof and refused(verify_inclusion, leaves[i], i, size, proof[:-1], root_of(size)) is None):
            check(False, f"{label}: inclusion {i} in {size}, a proof one hash longer or shorter is refused")
        check(True, f"{label}: inclusion of leaf {i} in tree {size} ({len(proof)} hash{'' if len(proof) == 1 else 'es'}) verifies; each one-byte change is refused")
    for p in v["consistency"]:
        proof = [X(h) for h in p["proof"]]
        old, new = p["old"], p["new"]
        must(f"{label}: consistency {old}→{new}", verify_consistency, old, new, root_of(old), root_of(new), proof)
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
            if refused(verify_consistency, old, new, root_of(old), root_of(new), bad) is None:
                check(False, f"{label}: consistency {old}→{new} with hash {j} altered is refused")
        check(True, f"{label}: consistency {old}→{new} ({len(proof)} hash{'' if len(proof) == 1 else 'es'}) verifies; each one-byte change is refused")

    # Witness (tlog-witness add-checkpoint).
    for w in v["witness"]:
        ws = w["witness_size"]
        status, why = witness_status(w["request"], [log_v], ws, root_of(ws))
        check(status == w["status"], f"{label}: witness, {w['what']}: status {w['status']} ({why})")
        if status == 200:
            what = f"{label}: witness, {w['what']}"
            req = must(what, parse_add_checkpoint, w["request"])
            cp, _, _ = must(what, verify_checkpoint, req.note, [log_v], origin)
            must(what, verify_consistency, req.old, cp.size, root_of(req.old), cp.root, req.proof)
            resp = w["response"]
            lines = resp.split("\n")
            ok = resp.endswith("\n") and all(line.startswith("\u2014 ") for line in lines[:-1])
            cos = must(f"{what}: response", cosignatures, req.note + resp, [wit_v])
            check(ok and set(cos) == {wit_v.name} and cos[wit_v.name] > 0 and cp.root == root_of(cp.size),
                  f"{label}: witness, {w['what']}: old {req.old}, proof of {len(req.proof)} hashes verifies; "
                  f"response is a cosignature/v1 by {wit_v.name} on size {cp.size} at time {cos.get(wit_v.name)}")
        elif status == 409:
            check(w["response"] == f"{ws}\n", f"{label}: witness, {w['what']}: 409 body is the witness's size {ws}")

    # Negative notes.
    for neg in v["negative_notes"]:
        why = refused(verify_log_note, neg["note"], log_v, [wit_v], origin)
        check(why is not None, f"{label}: refused: {neg['what']} ({why or 'accepted'})")


# ---------------------------------------------------------------- self-test

def build_log(n=600, sizes=(1, 2, 3, 7, 255, 256, 257, 511, 512, 600), cp_sizes=(257, 600)):
    """A log.json-shaped vector built by this module (for --self-test before log.json exists)."""
    origin = "grid.example/gridpow/log"
    log_sk, log_v = signer(b"\x4c" * 32, origin, SIG_ED25519)
    wit_sk, wit_v = signer(b"\x57" * 32, "witness.example/w1", SIG_COSIGNATURE)
    ents = []
    for i in range(n):
        bh = sha256(b"gridpow test block" + struct.pack("<Q", i))
        mr = sha256(b"gridpow test root" + struct.pack("<Q", i))
        e = make_entry(1 + i % 3, i // 3, bh, mr)
        ents.append({"relay_id": 1 + i % 3, "height": i // 3, "block_hash": bh.hex(), "merkle_root": mr.hex(),
                     "entry": e.hex(), "leaf_hash": leaf_hash(e).hex()})
    leaves = [X(e["leaf_hash"]) for e in ents]

    def note(size):
        return sign_note(Checkpoint(origin, size, mth(leaves[:size])).text(), [(log_sk, log_v, None)])

    cps = []
    for s in cp_sizes:
        t = 1700000000 + s
        nt = note(s)
        cps.append({"size": s, "note": nt, "cosigned_note": nt + signature_line(wit_sk, wit_v, parse_note(nt)[0], t),
                    "cosignature_time": t})
    tiles = [{"path": tile_path(*p), "data": b64(tile_bytes(leaves, *p))} for p in tiles_for_size(n)]
    tiles += [{"path": tile_path(*p), "data": b64(make_bundle([X(e["entry"]) for e in ents[p[1] * 256:p[1] * 256 + p[2]]]))}
              for p in bundles_for_size(n)]
    tiles += [{"path": "tile/0/001.p/1", "data": b64(tile_bytes(leaves, 0, 1, 1))}]  # from checkpoint 257
    incl = [{"index": i, "size": s, "proof": [h.hex() for h in inclusion_path(i, leaves[:s])]}
            for i, s in [(0, 1), (0, 2), (1, 2), (2, 3), (6, 7), (0, 600), (255, 256), (256, 257), (300, 600), (599, 600), (511, 512)]]
    cons = [{"old": a, "new": b, "proof": [h.hex() for h in consistency_proof(a, leaves[:b])]}
            for a, b in [(1, 2), (1, 600), (3, 7), (255, 256), (256, 257), (257, 600), (511, 512), (512, 600), (599, 600)]]

    def request(old, size, proof=None, nt=None):
        proof = consistency_proof(old, leaves[:size]) if proof is None else proof
        return f"old {old}\n" + "".join(b64(h) + "\n" for h in proof) + "\n" + (nt or note(size))

    def cosign(size, t):
        return signature_line(wit_sk, wit_v, Checkpoint(origin, size, mth(leaves[:size])).text(), t)

    stranger_sk, stranger_v = signer(b"\x11" * 32, "other.example/log", SIG_ED25519)
    wit = [
        {"what": "first checkpoint", "witness_size": 0, "request": request(0, 257), "status": 200, "response": cosign(257, 1700000001)},
        {"what": "extends 257 to 600", "witness_size": 257, "request": request(257, 600), "status": 200, "response": cosign(600, 1700000002)},
        {"what": "same size again", "witness_size": 600, "request": request(600, 600), "status": 200, "response": cosign(600, 1700000003)},
        {"what": "stale old size", "witness_size": 600, "request": request(257, 600), "status": 409, "response": "600\n"},
        {"what": "bad proof", "witness_size": 257, "request": request(257, 600, [leaves[0]] * 3), "status": 422, "response": ""},
        {"what": "unknown origin", "witness_size": 0,
         "request": request(0, 1, [], sign_note(Checkpoint("other.example/log", 1, leaves[0]).text(), [(stranger_sk, stranger_v, None)])),
         "status": 404, "response": ""},
        {"what": "bad log signature", "witness_size": 0, "request": request(0, 257).replace("\n257\n", "\n258\n"), "status": 403, "response": ""},
        {"what": "no signature", "witness_size": 0, "request": request(0, 257).split("\n\u2014")[0], "status": 403, "response": ""},
        {"what": "old size above the checkpoint's", "witness_size": 0, "request": request(7, 3, []), "status": 400, "response": ""},
        {"what": "proof from size 0", "witness_size": 0, "request": request(0, 3, [leaves[0]]), "status": 422, "response": ""},
        {"what": "same size, other root", "witness_size": 7, "request": request(7, 7, [], sign_note(Checkpoint(origin, 7, leaves[0]).text(), [(log_sk, log_v, None)])),
         "status": 422, "response": ""},
    ]
    good = note(7)
    neg = [
        {"what": "no signature line", "note": good.split("\n\n")[0] + "\n\n"},
        {"what": "hyphen instead of em dash", "note": good.replace("\u2014", "-")},
        {"what": "altered root", "note": good.replace(b64(mth(leaves[:7])), b64(mth(leaves[:6])))},
        {"what": "signed by an unknown key only", "note": sign_note(Checkpoint(origin, 7, mth(leaves[:7])).text(), [(stranger_sk, Verifier(origin, SIG_ED25519, stranger_v.public), None)])},
        {"what": "size with a leading zero", "note": sign_note(f"{origin}\n07\n{b64(mth(leaves[:7]))}\n", [(log_sk, log_v, None)])},
        {"what": "two lines", "note": sign_note(f"{origin}\n7\n", [(log_sk, log_v, None)])},
        {"what": "carriage return", "note": sign_note(f"{origin}\r\n7\n{b64(mth(leaves[:7]))}\n", [(log_sk, log_v, None)])},
        {"what": "no final newline", "note": good[:-1]},
        {"what": "truncated root", "note": sign_note(f"{origin}\n7\n{b64(mth(leaves[:7])[:31])}\n", [(log_sk, log_v, None)])},
        {"what": "empty extension line", "note": sign_note(f"{origin}\n7\n{b64(mth(leaves[:7]))}\n\n", [(log_sk, log_v, None)])},
        {"what": "cosigned, the cosignature does not verify", "note": cps[0]["cosigned_note"].replace(cps[0]["note"], note(600))},
        {"what": "signed by the witness only", "note": sign_note(Checkpoint(origin, 7, mth(leaves[:7])).text(), [(wit_sk, wit_v, 1)])},
        {"what": "other origin", "note": sign_note(f"{origin}x\n7\n{b64(mth(leaves[:7]))}\n", [(log_sk, log_v, None)])},
    ]
    return {"origin": origin,
            "log_key": {"name": origin, "seed": "4c" * 32, "public": log_v.public.hex(), "vkey": log_v.vkey()},
            "witness_key": {"name": wit_v.name, "seed": "57" * 32, "public": wit_v.public.hex(), "vkey": wit_v.vkey()},
            "entries": ents, "trees": [{"size": s, "root": mth(leaves[:s]).hex()} for s in sizes],
            "checkpoints": cps, "tiles": tiles, "inclusion": incl, "consistency": cons, "witness": wit, "negative_notes": neg}


def self_test():
    # signed-note's own example: vkey and the note it verifies.
    v = parse_vkey("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k")
    note = ("This is an example message.\n\n"
            "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
    text, good = verify_note(note, [v])
    check(text == "This is an example message.\n" and good == [(v, None)] and v.key_id.hex() == "530d903a",
          "signed-note example: the vkey's key ID is its key hash; the example note verifies")
    check(refused(verify_note, note.replace("example message", "example massage"), [v]) is not None,
          "signed-note example: an altered text does not verify")
    other = Verifier("example.com/bar", SIG_ED25519, v.public)
    check(refused(verify_note, note, [other]) == "no signature by a known key",
          "signed-note example: a key of another name ignores the signature, so the note is refused")
    # tlog-cosignature example: the cosignature's timestamp is the example message's time line.
    cos = "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA=="
    raw = b64decode(cos)
    check(len(raw) == 4 + 8 + 64 and struct.unpack(">Q", raw[4:12])[0] == 1679315147,
          "tlog-cosignature example: 4-byte key ID, u64 BE timestamp 1679315147 (its 'time' line), 64-byte signature")
    cp = parse_checkpoint("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
    check((cp.origin, cp.size, len(cp.root)) == ("example.com/behind-the-sofa", 20852163, 32),
          "tlog-checkpoint example parses")
    check(cosignature_message(cp.text(), 1679315147) ==
          b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
          "tlog-cosignature: the Ed25519 signed message of the example")
    req = parse_add_checkpoint(
        "old 20852014\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\njrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
        "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\n"
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n")
    check(req.old == 20852014 and len(req.proof) == 4 and parse_checkpoint(parse_note(req.note)[0]).size == 20852163,
          "tlog-witness example request parses (old size, 4 proof lines, checkpoint)")
    # tlog-tiles examples.
    check(encode_index(1234067) == "x001/x234/067" and parse_tile_path("tile/0/x001/x234/067") == (0, 1234067, 256),
          "tlog-tiles: index 1234067 is x001/x234/067")
    t70000 = tiles_for_size(70000)
    check(sum(1 for t in t70000 if t[0] == 0 and t[2] == 256) == 273 and (0, 273, 112) in t70000
          and (1, 0, 256) in t70000 and (1, 1, 17) in t70000 and (2, 0, 1) in t70000 and len(t70000) == 277,
          "tlog-tiles: size 70,000 is 273 full level-0 tiles, level 0 width 112, a full level-1 tile, level 1 width 17, level 2 width 1")
    check(tiles_for_size(256) == [(0, 0, 256), (1, 0, 1)], "tlog-tiles: size 256 is a full level-0 tile and a level-1 tile of width 1")
    for bad in ["tile/0/x000/067", "tile/00/000", "tile/64/000", "tile/0/67", "tile/0/000.p/256", "tile/0/000.p/0",
                "tile/0/000.p/07", "tile/entries/x1/000", "tile/0/001/002", "tile/-1/000"]:
        if refused(parse_tile_path, bad) is None:
            check(False, f"tile path {bad!r} is refused")
    check(parse_tile_path("tile/entries/x001/002.p/9") == ("entries", 1002, 9) and tile_path(63, 0, 1) == "tile/63/000.p/1",
          "tlog-tiles: entry bundle and partial paths round-trip; non-canonical paths are refused")
    check(parse_bundle(make_bundle([b"", b"a", b"x" * 300])) == [b"", b"a", b"x" * 300]
          and refused(parse_bundle, b"\x00\x05abc") and refused(parse_bundle, b"\x00"),
          "entry bundles: uint16 BE length prefixes; truncated bundles are refused")
    # Merkle: proofs for every pair of small sizes, and the tiles root for many sizes.
    leaves = [leaf_hash(bytes([i % 256, i // 256])) for i in range(1100)]
    for n in range(1, 40):
        root = mth(leaves[:n])
        for m in range(n):
            verify_inclusion(leaves[m], m, n, inclusion_path(m, leaves[:n]), root)
        for m in range(0, n + 1):
            verify_consistency(m, n, mth(leaves[:m]), root, consistency_proof(m, leaves[:n]))
            if 0 < m < n and refused(verify_consistency, m, n, mth(leaves[:m]), leaves[0], consistency_proof(m, leaves[:n])) is None:
                check(False, f"consistency {m}->{n} with a wrong new root is refused")
    check(True, "RFC 9162: every inclusion and consistency proof of trees up to 39 leaves verifies")
    mj = json.loads((HERE / "merkle.json").read_text())
    for c in mj["cases"]:
        ls = [leaf_hash(f"leaf-{i}".encode()) for i in range(c["leaves"])]
        proof = [X(h) for h in c["proof"]]
        verify_inclusion(ls[c["proof_index"]], c["proof_index"], c["leaves"], proof, X(c["root"]))
        check(mth(ls).hex() == c["root"] and inclusion_path(c["proof_index"], ls) == proof,
              f"merkle.json: root of {c['leaves']} leaves and the inclusion proof of leaf {c['proof_index']}")
    for c in mj["consistency"]:
        ls = [leaf_hash(f"leaf-{i}".encode()) for i in range(c["new_size"])]
        proof = [X(h) for h in c["proof"]]
        verify_consistency(c["old_size"], c["new_size"], X(c["old_root"]), X(c["new_root"]), proof)
        check(consistency_proof(c["old_size"], ls) == proof,
              f"merkle.json: consistency proof {c['old_size']}→{c['new_size']}")
    check(refused(verify_inclusion, leaves[0], 0, 1, [], leaves[1]) and refused(verify_inclusion, leaves[1], 1, 1, [], leaves[1])
          and refused(verify_consistency, 1, 1, leaves[0], leaves[1], []) and refused(verify_consistency, 0, 5, EMPTY_ROOT, mth(leaves[:5]), [leaves[0]])
          and refused(verify_consistency, 3, 2, mth(leaves[:3]), mth(leaves[:2]), []),
          "RFC 9162: wrong roots, an index out of range, a proof from size 0 and a shrinking tree are refused")
    for n in [1, 2, 255, 256, 257, 511, 512, 513, 600, 767, 768, 1024, 1100]:
        tiles = {(l, i, w): tile_bytes(leaves[:n], l, i, w) for (l, i, w) in tiles_for_size(n)}
        if root_from_tiles(n, lambda l, i, w: tiles[(l, i, w)]) != mth(leaves[:n]):
            check(False, f"root of {n} leaves from its tiles")
    check(True, "tlog-tiles: the root of trees of 1 to 1100 leaves recomputed from their tiles alone")
    # A signed-note round trip and what the spec calls malformed.
    sk, me = signer(b"\x01" * 32, "me.example/k", SIG_ED25519)
    n1 = sign_note("a\n\nb\n", [(sk, me, None)])
    check(verify_note(n1, [me])[0] == "a\n\nb\n", "signed-note: a text with a blank line is split at the last blank line")
    wsk, wv = signer(b"\x02" * 32, "me.example/w", SIG_COSIGNATURE)
    check(refused(verify_note, n1 + "\u2014 me.example/k AB!D\n", [me]) is not None
          and refused(verify_note, n1 + signature_line(wsk, wv, "a\n\nb\n", 5).replace("=\n", "\n"), [me, wv]) is not None
          and refused(verify_note, n1 + "\u2014 me.example/k AAAA\n", [me]) is not None
          and refused(verify_note, n1 + "\u2014 me.example/k " + b64(me.key_id + b"\x00" * 64) + "\n", [me]) is not None
          and refused(parse_note, "a\n\n\u2014 a+b AAAAAAAA\n")
          and refused(parse_note, "a\n\n\u2014 a\u00a0b AAAAAAAA\n")
          and refused(parse_note, "a\n\n\u2014 ab AAAAAAAA\n\n")
          and refused(parse_note, b"a\xff\n\n\xe2\x80\x94 ab AAAAAAAA\n")
          and refused(parse_vkey, me.vkey().replace("+", "+0", 1))
          and refused(parse_vkey, "me.example/k+00000000+" + me.vkey().split("+", 2)[2]),
          "signed-note: bad base64, a failing known-key signature, '+' or a space in a key name, a blank line after "
          "the signatures, invalid UTF-8, a key ID not the key hash are refused")
    check(verify_note(n1 + "\u2014 me.example/k " + b64(b"\x00\x00\x00\x00" + b"\x00" * 64) + "\n", [me])[1] == [(me, None)],
          "signed-note: a signature by an unknown key ID of a known name is ignored")
    # A whole log built here, checked as log.json is.
    check_log(build_log(), "self-built log")
    print("self-test passed")


# ---------------------------------------------------------------- audit of a live log

def http_get(url):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip, identity", "User-Agent": "gridpow-c2sp-audit"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            if r.headers.get("Content-Encoding", "identity") == "gzip":
                data = gzip.decompress(data)
            return 200, data
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def audit(url, vkey, witness_vkeys, origin=None):
    """Audits a tlog-tiles log under url; returns a one-line summary, raises C2SPError."""
    if not url.endswith("/"):
        url += "/"
    log_v = parse_vkey(vkey)
    if log_v.sig_type != SIG_ED25519:
        raise C2SPError(f"log vkey {vkey} is not an Ed25519 (type 0x01) key")
    wits = [parse_vkey(w) for w in witness_vkeys]
    for w in wits:
        if w.sig_type != SIG_COSIGNATURE:
            raise C2SPError(f"witness vkey {w.vkey()} is not a cosignature/v1 (type 0x04) key")

    status, body = http_get(url + "checkpoint")
    if status != 200:
        raise C2SPError(f"GET {url}checkpoint: HTTP {status}")
    note = body.decode("utf-8", errors="strict") if isinstance(body, bytes) else body
    cp, text, _ = verify_checkpoint(note, [log_v], origin)
    cos = {}
    for w in wits:
        try:
            cos.update(cosignatures(note, [w]))
        except C2SPError as e:
            raise C2SPError(f"cosignature by {w.vkey()}: {e}") from None
        if cos[w.name] == 0:
            raise C2SPError(f"cosignature by {w.name} has timestamp 0")

    fetched = {}

    def get(level, index, width):
        path = tile_path(level, index, width)
        if path not in fetched:
            status, data = http_get(url + path)
            if status == 404 and width < TILE_WIDTH:
                # tlog-tiles: a partial tile may be gone once the full tile exists.
                status, full = http_get(url + tile_path(level, index))
                if status == 200:
                    if level == "entries":
                        items = parse_bundle(full)
                        if len(items) != TILE_WIDTH:
                            raise C2SPError(f"{tile_path(level, index)}: {len(items)} entries in a full bundle")
                        data = make_bundle(items[:width])
                    else:
                        data = full[:width * HASH_LEN] if len(full) == TILE_WIDTH * HASH_LEN else full
            if status != 200:
                raise C2SPError(f"GET {url}{path}: HTTP {status}")
            fetched[path] = data
        return fetched[path]

    n = cp.size
    hashes = {}  # level -> list of hashes from that level's tiles
    for level, index, width in tiles_for_size(n):
        hashes.setdefault(level, []).extend(tile_hashes(get(level, index, width), width))
    # Every tile hash at level L+1 is the tree hash of the matching full level-L tile.
    for level in sorted(hashes):
        if level > 0:
            for i, h in enumerate(hashes[level]):
                if perfect_root(hashes[level - 1][i * TILE_WIDTH:(i + 1) * TILE_WIDTH]) != h:
                    raise C2SPError(f"hash {i} of level {level} is not the root of {tile_path(level - 1, i)}")
    root = root_from_tiles(n, get)
    if root != cp.root:
        raise C2SPError(f"root from the tiles {b64(root)} is not the checkpoint's {b64(cp.root)}")
    count = 0
    for _, index, width in bundles_for_size(n):
        items = parse_bundle(get("entries", index, width))
        if len(items) != width:
            raise C2SPError(f"{tile_path('entries', index, width)}: {len(items)} entries, {width} expected")
        for j, e in enumerate(items):
            i = index * TILE_WIDTH + j
            try:
                parse_entry(e)
            except C2SPError as err:
                raise C2SPError(f"entry {i}: {err}") from None
            if leaf_hash(e) != hashes[0][i]:
                raise C2SPError(f"entry {i} does not hash to leaf {i} of the level-0 tiles")
            count += 1
    if count != n:
        raise C2SPError(f"{count} entries for a tree of size {n}")
    wtxt = "".join(f", cosigned by {name} at {t}" for name, t in sorted(cos.items()))
    return (f"audit ok: {cp.origin} size {n} root {b64(cp.root)} signed by {log_v.name}{wtxt}; "
            f"{count} entries and {len(fetched)} tiles/bundles checked")


def main(argv):
    if argv[:1] == ["--self-test"]:
        self_test()
        return 0
    if argv[:1] == ["audit"]:
        import argparse
        ap = argparse.ArgumentParser(prog="c2sp.py audit", description="Audit a live tlog-tiles log.")
        ap.add_argument("--url", required=True, help="the log's prefix, e.g. http://127.0.0.1:8080/log/")
        ap.add_argument("--vkey", required=True, help="the log's verifier key (Ed25519, type 0x01)")
        ap.add_argument("--witness-vkey", action="append", default=[], help="a witness's cosignature/v1 vkey (type 0x04), repeatable")
        ap.add_argument("--origin", help="the origin the checkpoint must carry")
        a = ap.parse_args(argv[1:])
        try:
            print(audit(a.url, a.vkey, a.witness_vkey, a.origin))
        except (C2SPError, OSError, UnicodeDecodeError) as e:
            print(f"FAIL: audit of {a.url}: {e}")
            return 1
        return 0
    if argv:
        print(__doc__)
        return 2
    path = HERE / "log.json"
    if not path.exists():
        print(f"FAIL: {path} is missing (it is generated by the Rust log's vector test)")
        return 1
    try:
        check_log(json.loads(path.read_text()))
    except (C2SPError, KeyError, ValueError, TypeError, IndexError) as e:
        print(f"FAIL: log.json does not follow the expected schema or format: {type(e).__name__}: {e}")
        return 1
    print("all log.json checks passed (independent C2SP implementation)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
