#!/usr/bin/env python3
"""Checks test-vectors/*.json with an independent implementation (Python's
`cryptography` package), written from docs/protocol.md alone.

Usage: python3 test-vectors/verify.py   (pip install cryptography)
Exit status 0 when every vector checks out.
"""
import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).parent
X = bytes.fromhex


def load(name):
    return json.loads((HERE / name).read_text())


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


VERSION = 2
TYPE_UPLINK = 0x01
READING_LEN = 32
UPLINK_OVERHEAD = 20 + 16 + 16  # clear header, end-to-end (CCM) tag, hop tag
UPLINK_MIN, UPLINK_MAX = UPLINK_OVERHEAD + READING_LEN, UPLINK_OVERHEAD + 6 * READING_LEN


def kdf(site, prefix, key_id, meter_id, length):
    info = prefix + bytes([key_id]) + struct.pack("<I", meter_id)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"gridpow v2 key derivation", info=info).derive(site)


def meter_keys(site, key_id, meter_id):
    """(hop_secret, e2e_key): hop_secret[0:16] tags frames per hop, [16:32] tags ACKs."""
    return kdf(site, b"gridpow v2 hop", key_id, meter_id, 32), kdf(site, b"gridpow v2 e2e", key_id, meter_id, 16)


def reading_bytes(r):
    return struct.pack("<QHIihHQH", r["timestamp_ms"], r["voltage_cv"], r["current_ma"], r["active_power_dw"],
                       r["power_factor_e4"], r["frequency_mhz"], r["energy_mwh"], r["flags"])


def hop_tag(hop_frame_key, covered):
    return hmac.new(hop_frame_key, covered, hashlib.sha256).digest()[:16]


def seal_uplink(e2e_key, hop_frame_key, key_id, meter_id, boot_epoch, counter, first_seq, readings):
    header = struct.pack("<BBBBIIII", VERSION, TYPE_UPLINK, key_id, 0, meter_id, boot_epoch, counter, first_seq)
    sealed = AESCCM(e2e_key, tag_length=16).encrypt(b"\x01" + header[4:16], readings, header)
    body = header + sealed
    return body + hop_tag(hop_frame_key, body)


def open_uplink(frame, e2e_key):
    """Readings of a parsed frame; raises InvalidTag when the end-to-end tag does not verify."""
    return AESCCM(e2e_key, tag_length=16).decrypt(b"\x01" + frame[4:16], frame[20:-16], frame[:20])


def parse_uplink(frame):
    """None when the frame is well formed, else the message of the first failing parse check, in protocol order."""
    if len(frame) < 1:
        return "malformed: message too short"
    if frame[0] != VERSION:
        return f"malformed: unsupported protocol version {frame[0]}"
    if len(frame) < 2:
        return "malformed: message too short"
    if frame[1] != TYPE_UPLINK:
        return f"malformed: unexpected message type {frame[1]:#04x}"
    if len(frame) < UPLINK_MIN:
        return "malformed: message too short"
    if len(frame) > UPLINK_MAX:
        return "malformed: message too long"
    if (len(frame) - UPLINK_OVERHEAD) % READING_LEN:
        return "malformed: length does not hold 1 to 6 whole readings"
    if frame[3] != 0:
        return "malformed: reserved field is not zero"
    count = (len(frame) - UPLINK_OVERHEAD) // READING_LEN
    if struct.unpack("<I", frame[16:20])[0] + count - 1 > 0xFFFFFFFF:
        return "malformed: sequence numbers run past 2^32-1 (a meter starts a new epoch first)"
    return None


def judge_uplink(frame, hop_secret, e2e_key=None):
    """Verdict of a relay (hop keys only: e2e_key None) or of the grid server (both keys)."""
    fault = parse_uplink(frame)
    if fault:
        return fault
    if not hmac.compare_digest(hop_tag(hop_secret[:16], frame[:-16]), frame[-16:]):
        return "rejected: authentication tag does not verify"
    if e2e_key is not None:
        try:
            open_uplink(frame, e2e_key)
        except InvalidTag:
            return "rejected: end-to-end tag does not verify"
    return "accept"


def ed25519_ok(public_key, signature, message):
    try:
        public_key.verify(signature, message)
        return True
    except InvalidSignature:
        return False


# Strict Ed25519 (protocol §9.2), written from RFC 8032 §5.1 for the negative vectors.
ED_P = 2 ** 255 - 19
ED_L = 2 ** 252 + 27742317777372353535851937790883648493
ED_D = -121665 * pow(121666, ED_P - 2, ED_P) % ED_P
ED_I = pow(2, (ED_P - 1) // 4, ED_P)


def ed_decode(b):
    """The point encoded by 32 bytes, or a reason it is none: (point, None) or (None, why)."""
    y = int.from_bytes(b, "little") & (2 ** 255 - 1)
    sign = b[31] >> 7
    if y >= ED_P:
        return None, "not canonical"
    xx = (y * y - 1) * pow(ED_D * y * y + 1, ED_P - 2, ED_P) % ED_P
    x = pow(xx, (ED_P + 3) // 8, ED_P)
    if (x * x - xx) % ED_P:
        x = x * ED_I % ED_P
    if (x * x - xx) % ED_P:
        return None, "not a point"
    if x == 0 and sign:
        return None, "not canonical"
    if x & 1 != sign:
        x = ED_P - x
    return (x, y, 1, x * y % ED_P), None


def ed_add(P, Q):
    x1, y1, z1, t1 = P
    x2, y2, z2, t2 = Q
    a = (y1 - x1) * (y2 - x2) % ED_P
    b = (y1 + x1) * (y2 + x2) % ED_P
    c = 2 * t1 * t2 * ED_D % ED_P
    dd = 2 * z1 * z2 % ED_P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return (e * f % ED_P, g * h % ED_P, f * g % ED_P, e * h % ED_P)


def ed_mul(s, P):
    Q = (0, 1, 1, 0)
    while s:
        if s & 1:
            Q = ed_add(Q, P)
        P = ed_add(P, P)
        s >>= 1
    return Q


def ed_eq(P, Q):
    return (P[0] * Q[2] - Q[0] * P[2]) % ED_P == 0 and (P[1] * Q[2] - Q[1] * P[2]) % ED_P == 0


ED_B = ed_decode(bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666"))[0]
ED_O = (0, 1, 1, 0)


def ed25519_strict(a_bytes, sig, msg):
    """gridpow's verdict: 'accept' or 'reject: <why>' (S < L, canonical A and R,
    neither of small order, cofactorless [S]B = R + [k]A)."""
    r_bytes, s = sig[:32], int.from_bytes(sig[32:], "little")
    if s >= ED_L:
        return "reject: S not below L"
    A, why = ed_decode(a_bytes)
    if A is None:
        return "reject: A " + why
    if ed_eq(ed_mul(8, A), ED_O):
        return "reject: A of small order"
    R, why = ed_decode(r_bytes)
    if R is None:
        return "reject: R " + why
    if ed_eq(ed_mul(8, R), ED_O):
        return "reject: R of small order"
    k = int.from_bytes(hashlib.sha512(r_bytes + a_bytes + msg).digest(), "little") % ED_L
    if not ed_eq(ed_mul(s, ED_B), ed_add(R, ed_mul(k, A))):
        return "reject: equation"
    return "accept"


def leaf_hash(d):
    return hashlib.sha256(b"\x00" + d).digest()


def node_hash(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def mth(hs):
    if len(hs) == 1:
        return hs[0]
    k = 1
    while k * 2 < len(hs):
        k *= 2
    return node_hash(mth(hs[:k]), mth(hs[k:]))


def verify_inclusion(leaf, index, size, proof, root):
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not (fn & 1) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size, new_size, old_root, new_root, proof):
    """RFC 9162 section 2.1.4.2, for 0 < old_size < new_size."""
    if not proof:
        return False
    if old_size & (old_size - 1) == 0:
        proof = [old_root] + proof
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not (fn & 1) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def lzb(h):
    n = 0
    for b in h:
        if b == 0:
            n += 8
            continue
        return n + 8 - b.bit_length()
    return n


BLOCK_HEADER_LEN, BLOCK_SIG_LEN, MAX_LEAVES, ESPNOW_MAX = 100, 64, 65535, 250
# §10: refusals that are final (receipt status 3); every other refusal of a parsed header gets 2.
FINAL_REASONS = {"insufficient_work", "malformed_frame", "bad_hop_tag", "bad_tag", "fork", "bad_genesis"}


def judge_block(blk, relays, min_difficulty, meters):
    """The grid server's stateless verdict on a block message (§9.2, §9.5, §10):
    (verdict, class, reason, leaf index, receipt status). `relays` maps relay id to
    public key bytes, `meters` maps (meter id, key id) to (hop secret, e2e key)."""
    def refuse(cls, reason, leaf=None, receipt=True):
        status = (3 if reason in FINAL_REASONS else 2) if receipt else None
        return "refuse", cls, reason, leaf, status

    header = blk[:BLOCK_HEADER_LEN]
    # The header does not parse: nothing to name in a receipt.
    if (len(header) < BLOCK_HEADER_LEN or header[0] != VERSION or header[1] != 3 or header[3] != 0
            or struct.unpack("<I", header[80:84])[0] > MAX_LEAVES):
        return refuse("malformed", "malformed", receipt=False)
    difficulty, relay_id, count = header[2], struct.unpack("<I", header[4:8])[0], struct.unpack("<I", header[80:84])[0]
    # Framing: leaf_count prefixed leaves of 1..250 bytes consume the message exactly.
    rest, leaves = blk[BLOCK_HEADER_LEN + BLOCK_SIG_LEN:], []
    if len(blk) < BLOCK_HEADER_LEN + BLOCK_SIG_LEN:
        return refuse("malformed", "malformed")
    for _ in range(count):
        if len(rest) < 2:
            return refuse("malformed", "malformed")
        n = struct.unpack("<H", rest[:2])[0]
        if not 1 <= n <= ESPNOW_MAX or len(rest) < 2 + n:
            return refuse("malformed", "malformed")
        leaves.append(rest[2:2 + n])
        rest = rest[2 + n:]
    if rest:
        return refuse("malformed", "malformed")
    if relay_id not in relays:
        return refuse("rejected", "unknown_relay")
    if difficulty < min_difficulty:
        return refuse("rejected", "low_difficulty")
    hh = hashlib.sha256(header).digest()
    if lzb(hh) < difficulty:
        return refuse("rejected", "insufficient_work")
    sig = blk[BLOCK_HEADER_LEN:BLOCK_HEADER_LEN + BLOCK_SIG_LEN]
    if ed25519_strict(relays[relay_id], sig, b"gridpow-block-v2" + hh) != "accept":
        return refuse("rejected", "bad_signature")
    root = mth([leaf_hash(l) for l in leaves]) if leaves else hashlib.sha256(b"").digest()
    if root != header[48:80]:
        return refuse("rejected", "merkle_mismatch")
    for i, l in enumerate(leaves):
        if parse_uplink(l):
            return refuse("rejected", "malformed_frame", i)
        keys = meters.get((struct.unpack("<I", l[4:8])[0], l[2]))
        if keys is None:
            return refuse("rejected", "unknown_meter", i)
        verdict = judge_uplink(l, keys[0], keys[1])
        if verdict == "rejected: authentication tag does not verify":
            return refuse("rejected", "bad_hop_tag", i)
        if verdict != "accept":
            return refuse("rejected", "bad_tag", i)
    return "accept", None, None, None, 0


# §10: the commit receipt, type 0x06, 140 bytes: 76 signed bytes (the log index and
# tree size at 60..76) and a strict Ed25519 signature over the context and those bytes.
TYPE_RECEIPT = 0x06
RECEIPT_LEN, RECEIPT_SIGNED = 140, 76
RECEIPT_CONTEXT = b"gridpow-rcpt-v3\x00"


def receipt_body(status, relay_id, height, block_hash, server_id, time_ms, log_index, tree_size, rtype=TYPE_RECEIPT):
    return struct.pack("<BBBBIQ32sIQQQ", VERSION, rtype, status, 0, relay_id, height, block_hash, server_id, time_ms,
                       log_index, tree_size)


def judge_receipt(b, server_public_key):
    """A relay's verdict on a receipt (§10), in the order of the rules: version,
    type, length, reserved byte, status, log fields, then the signature. Returns
    ("accept", status, (log index, tree size) or None) or a refusal string."""
    if len(b) < 2:
        return "malformed: too short"
    if b[0] != VERSION:
        return "malformed: unsupported version"
    if b[1] != TYPE_RECEIPT:
        return "malformed: wrong type"
    if len(b) != RECEIPT_LEN:
        return "malformed: " + ("too short" if len(b) < RECEIPT_LEN else "too long")
    if b[3] != 0:
        return "malformed: reserved byte"
    status = b[2]
    if status > 3:
        return "malformed: unknown status"
    index, size = struct.unpack_from("<QQ", b, 60)
    if status in (0, 1):
        if not index < size:
            return "malformed: log index not inside its tree"
        log = (index, size)
    else:
        if (index, size) != (0, 0):
            return "malformed: a refusal with a log position"
        log = None
    if not ed25519_strict(server_public_key, b[RECEIPT_SIGNED:], RECEIPT_CONTEXT + b[:RECEIPT_SIGNED]) == "accept":
        return "rejected: bad signature"
    return "accept", status, log


def check_receipts():
    r = load("receipt.json")
    seed, pk = X(r["server_signing_seed"]), X(r["server_public_key"])
    key = Ed25519PrivateKey.from_private_bytes(seed)
    check(key.public_key().public_bytes_raw() == pk, "server key pair")
    fields = (r["relay_id"], r["height"], X(r["block_hash"]), r["server_id"], r["time_ms"])

    def sign(body):
        return body + key.sign(RECEIPT_CONTEXT + body)

    rb, rr = X(r["bytes"]), X(r["refused_bytes"])
    signed = receipt_body(r["status"], *fields, r["log_index"], r["tree_size"])
    check(len(signed) == RECEIPT_SIGNED and len(rb) == RECEIPT_LEN and rb[:RECEIPT_SIGNED] == signed,
          f"receipt layout: type 0x06, status {r['status']}, log index {r['log_index']} at 60..68, tree size {r['tree_size']} at 68..76")
    check(ed25519_ok(Ed25519PublicKey.from_public_bytes(pk), rb[RECEIPT_SIGNED:], RECEIPT_CONTEXT + signed) and sign(signed) == rb,
          "receipt signature over \"gridpow-rcpt-v3\\0\" || bytes 0..76 (and Ed25519 re-signs it byte for byte)")
    check(judge_receipt(rb, pk) == ("accept", 0, (r["log_index"], r["tree_size"])), "receipt accepted: stored, with its log position")
    check(rr == sign(receipt_body(3, *fields, 0, 0)) and judge_receipt(rr, pk) == ("accept", 3, None),
          "receipt refused for good: status 3, log index and tree size zero, same signature rule")
    for i in range(RECEIPT_LEN):
        t = bytearray(rb)
        t[i] ^= 0x01
        if judge_receipt(bytes(t), pk)[0] == "accept":
            check(False, f"receipt with byte {i} altered is refused")
    check(True, "receipt with any one byte altered is refused")
    # The log-field rules hold even under a valid signature: these are re-signed with the server's key.
    for what, body, want in [
        ("status 0 with index = tree size", receipt_body(0, *fields, 9, 9), "malformed: log index not inside its tree"),
        ("status 1 with no log position", receipt_body(1, *fields, 0, 0), "malformed: log index not inside its tree"),
        ("status 2 with a log position", receipt_body(2, *fields, 0, 1), "malformed: a refusal with a log position"),
        ("status 3 with tree size 1", receipt_body(3, *fields, 0, 1), "malformed: a refusal with a log position"),
        ("type 0x04 (retired)", receipt_body(0, *fields, 5, 9, rtype=0x04), "malformed: wrong type"),
    ]:
        check(judge_receipt(sign(body), pk) == want, f"receipt {what}, validly signed: {want}")
    check(judge_receipt(sign(receipt_body(1, *fields, 0, 1)), pk) == ("accept", 1, (0, 1)), "receipt status 1 at index 0 of a tree of 1: accepted")
    old = receipt_body(0, *fields, 0, 0, rtype=0x04)[:60]
    old += key.sign(b"gridpow-rcpt-v2\x00" + old)
    check(len(old) == 124 and judge_receipt(old, pk) == "malformed: wrong type", "a version-2 receipt of the old layout (type 0x04, 124 bytes) is refused as a wrong type")
    body = receipt_body(0, *fields, 5, 9)
    check(judge_receipt(body + key.sign(b"gridpow-rcpt-v2\x00" + body), pk) == "rejected: bad signature",
          "a receipt signed under the old context gridpow-rcpt-v2 is refused")


# §16: log proof request (type 0x07, 24 bytes) and log proof (type 0x08, 24 + 32 n bytes, n <= 64).
TYPE_LOG_PROOF_REQUEST, TYPE_LOG_PROOF = 0x07, 0x08
LOG_PROOF_HEAD, LOG_PROOF_MAX_HASHES = 24, 64
INCLUSION, CONSISTENCY = 1, 2


def log_proof_head(rtype, kind, count, relay_id, first, second):
    return struct.pack("<BBBBIQQ", VERSION, rtype, kind, count, relay_id, first, second)


def judge_log_proof_numbers(b):
    kind = b[2]
    if kind not in (INCLUSION, CONSISTENCY):
        return "malformed: unknown kind"
    relay_id, first, second = struct.unpack_from("<IQQ", b, 4)
    if not (first < second if kind == INCLUSION else 0 < first < second):
        return "malformed: names no proof"
    return kind, relay_id, first, second


def judge_log_proof_request(b):
    """The server's parse of a request (§16): ("accept", kind, relay id, first, second) or a refusal."""
    if len(b) < 2 or b[0] != VERSION or b[1] != TYPE_LOG_PROOF_REQUEST:
        return "malformed: version or type"
    if len(b) != LOG_PROOF_HEAD:
        return "malformed: " + ("too short" if len(b) < LOG_PROOF_HEAD else "too long")
    if b[3] != 0:
        return "malformed: reserved byte"
    r = judge_log_proof_numbers(b)
    return r if isinstance(r, str) else ("accept",) + r


def judge_log_proof(b):
    """The relay's parse of a proof (§16): ("accept", kind, relay id, first, second, hashes) or a refusal."""
    if len(b) < 2 or b[0] != VERSION or b[1] != TYPE_LOG_PROOF:
        return "malformed: version or type"
    if len(b) < LOG_PROOF_HEAD:
        return "malformed: too short"
    n = b[3]
    if n > LOG_PROOF_MAX_HASHES:
        return "malformed: more than 64 hashes"
    if len(b) != LOG_PROOF_HEAD + 32 * n:
        return "malformed: " + ("too short" if len(b) < LOG_PROOF_HEAD + 32 * n else "too long")
    r = judge_log_proof_numbers(b)
    if isinstance(r, str):
        return r
    return ("accept",) + r + ([b[LOG_PROOF_HEAD + 32 * i:LOG_PROOF_HEAD + 32 * (i + 1)] for i in range(n)],)


def check_log_proofs():
    lp, log = load("log_proof.json"), load("log.json")
    # The tree from log.json's entries, hashed here (§15: leaf SHA-256(0x00 || entry)).
    leaves = [leaf_hash(X(e["entry"])) for e in log["entries"]]
    check([h.hex() for h in leaves] == [e["leaf_hash"] for e in log["entries"]], f"log.json: {len(leaves)} entries and their leaf hashes")
    roots = {t["size"]: X(t["root"]) for t in log["trees"]}
    check(all(mth(leaves[:n]) == root for n, root in roots.items()), f"log.json: roots of sizes {sorted(roots)}")

    def proven(kind, first, second, path):
        if kind == INCLUSION:
            return verify_inclusion(leaves[first], first, second, path, mth(leaves[:second]))
        return verify_consistency(first, second, mth(leaves[:first]), mth(leaves[:second]), path)

    kinds = set()
    for c in lp["cases"]:
        kind, relay_id, first, second = c["kind"], c["relay_id"], c["first"], c["second"]
        kinds.add(kind)
        what = f"log proof {'inclusion of entry' if kind == INCLUSION else 'consistency of size'} {first} in {second}"
        req, proof = X(c["request"]), X(c["proof"])
        check(req == log_proof_head(TYPE_LOG_PROOF_REQUEST, kind, 0, relay_id, first, second), f"{what}: request bytes (type 0x07, 24 bytes)")
        check(judge_log_proof_request(req) == ("accept", kind, relay_id, first, second), f"{what}: request accepted")
        got = judge_log_proof(proof)
        check(got != "accept" and got[0] == "accept" and got[1:5] == (kind, relay_id, first, second), f"{what}: proof parses and repeats the request")
        path = got[5]
        check(proof == log_proof_head(TYPE_LOG_PROOF, kind, len(path), relay_id, first, second) + b"".join(path),
              f"{what}: proof bytes (type 0x08, 24 + 32 x {len(path)} bytes)")
        if kind == INCLUSION:
            same = [p for p in log["inclusion"] if (p["index"], p["size"]) == (first, second)]
        else:
            same = [p for p in log["consistency"] if (p["old"], p["new"]) == (first, second)]
        check(same and [h.hex() for h in path] == same[0]["proof"], f"{what}: the path is log.json's")
        check(proven(kind, first, second, path), f"{what}: the path verifies against log.json's tree (RFC 9162)")
        for i in range(len(path)):
            bad = list(path)
            bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
            if proven(kind, first, second, bad):
                check(False, f"{what}: hash {i} altered is refused")
        check(not proven(kind, first, second, path[:-1]) and not proven(kind, first, second, path + [path[0]]),
              f"{what}: any hash altered, one missing or one more is refused")
        if kind == INCLUSION:
            check(not proven(kind, first + 1, second, path), f"{what}: the same path does not prove entry {first + 1}")
        # What a receiver refuses (§16).
        for bad_what, b, want in [
            ("request with a non-zero reserved byte", req[:3] + b"\x01" + req[4:], "malformed: reserved byte"),
            ("request of 25 bytes", req + b"\x00", "malformed: too long"),
            ("request of kind 3", req[:2] + b"\x03" + req[3:], "malformed: unknown kind"),
        ]:
            check(judge_log_proof_request(b) == want, f"{what}: {bad_what}: {want}")
        for bad_what, b, want in [
            ("proof one byte short", proof[:-1], "malformed: too short"),
            ("proof one byte long", proof + b"\x00", "malformed: too long"),
            ("proof claiming 65 hashes", proof[:3] + bytes([65]) + proof[4:] + bytes(32 * (65 - len(path))), "malformed: more than 64 hashes"),
            ("proof with a request's type", proof[:1] + bytes([TYPE_LOG_PROOF_REQUEST]) + proof[2:], "malformed: version or type"),
        ]:
            check(judge_log_proof(b) == want, f"{what}: {bad_what}: {want}")
    check(kinds == {INCLUSION, CONSISTENCY}, "log_proof.json holds an inclusion and a consistency proof")
    for what, kind, first, second in [("inclusion of entry 5 in a tree of 5", INCLUSION, 5, 5),
                                      ("consistency from size 0", CONSISTENCY, 0, 5),
                                      ("consistency from size 5 to 5", CONSISTENCY, 5, 5),
                                      ("consistency from size 6 to 5", CONSISTENCY, 6, 5)]:
        check(judge_log_proof_request(log_proof_head(TYPE_LOG_PROOF_REQUEST, kind, 0, 3, first, second)) == "malformed: names no proof",
              f"log proof request for {what}: refused, names no proof")
    check(judge_log_proof_request(log_proof_head(TYPE_LOG_PROOF_REQUEST, INCLUSION, 0, 3, 0, 1))[0] == "accept",
          "log proof request for entry 0 of a tree of 1: accepted")



class LogWatch:
    """The relay's watch over the server's log (protocol §16.5), modelled from the
    text: checkpoints opened with the log's note key (c2sp.py), a trusted head on
    first use, newer checkpoints adopted after a consistency proof, older ones
    proven prefixes, receipts proven by inclusion once the trusted head covers
    them, one request at a time (asked again after 5 s), alarms."""
    RETRY_MS = 5000

    def __init__(self, c2sp, log_key, relay_id, trusted=None):
        self.c2sp, self.key, self.relay_id, self.trusted = c2sp, log_key, relay_id, trusted
        self.ahead = self.behind = self.asked = None
        self.checks, self.alarms = [], []
        self.stats = dict(refused=0, adopted=0, older_proven=0, proven=0, proofs_refused=0)

    def alarm(self, a):
        if not self.alarms or self.alarms[-1] != a:
            self.alarms.append(a)

    def checkpoint(self, note):
        try:
            cp = self.c2sp.verify_log_note(note, self.key, origin=self.key.name)
        except self.c2sp.C2SPError:
            self.stats["refused"] += 1
            return
        head = (cp.size, cp.root)
        if self.trusted is None:
            self.trusted = head
            return
        t = self.trusted
        if head[0] == t[0]:
            if head[1] != t[1]:
                self.alarm(("split view", head[0]))
            return
        if head[0] == 0:
            return
        slot = "ahead" if head[0] > t[0] else "behind"
        c = getattr(self, slot)
        if c is not None and c[0] == head[0] and c[1] != head[1]:
            self.alarm(("split view", head[0]))
        elif c is None or (slot == "ahead" and head[0] > c[0]):
            setattr(self, slot, head)

    def receipt(self, entry, index, tree_size):
        self.checks.append((entry, index, tree_size))

    def request(self, now_ms):
        if self.asked is not None and now_ms < self.asked[1] + self.RETRY_MS:
            return None
        if self.trusted is None:
            return None
        t = self.trusted[0]
        if t == 0:
            if self.ahead is not None:
                self.trusted, self.ahead = self.ahead, None
            return None
        if self.ahead is not None:
            req = (CONSISTENCY, self.relay_id, t, self.ahead[0])
        elif self.behind is not None:
            req = (CONSISTENCY, self.relay_id, self.behind[0], t)
        else:
            covered = [c for c in self.checks if c[2] <= t]
            if not covered:
                return None
            req = (INCLUSION, self.relay_id, covered[0][1], t)
        self.asked = (req, now_ms)
        return log_proof_head(TYPE_LOG_PROOF_REQUEST, req[0], 0, *req[1:])

    def proof(self, b):
        got = judge_log_proof(b)
        if got[0] != "accept" or self.asked is None or tuple(got[1:5]) != self.asked[0]:
            self.stats["proofs_refused"] += 1
            return
        (kind, _, first, second), path = self.asked[0], got[5]
        self.asked = None
        t = self.trusted
        if kind == CONSISTENCY and first == t[0]:
            a = self.ahead
            if a is None or a[0] != second:
                return
            self.ahead = None
            if verify_consistency(t[0], a[0], t[1], a[1], path):
                self.trusted = a
                self.stats["adopted"] += 1
            else:
                self.alarm(("inconsistent", t[0], a[0]))
        elif kind == CONSISTENCY:
            b_ = self.behind
            if b_ is None or b_[0] != first or second != t[0]:
                return
            self.behind = None
            if verify_consistency(b_[0], t[0], b_[1], t[1], path):
                self.stats["older_proven"] += 1
            else:
                self.alarm(("inconsistent", b_[0], t[0]))
        elif second == t[0]:
            c = next((c for c in self.checks if c[1] == first and c[2] <= t[0]), None)
            if c is None:
                return
            self.checks.remove(c)
            if verify_inclusion(leaf_hash(c[0]), first, t[0], path, t[1]):
                self.stats["proven"] += 1
            else:
                self.alarm(("not in log", first, t[0]))


def check_log_watch():
    """§16.5 over log.json's signed checkpoints and log_proof.json's messages."""
    sys.path.insert(0, str(HERE))
    import c2sp
    lp, log = load("log_proof.json"), load("log.json")
    key = c2sp.parse_vkey(log["log_key"]["vkey"])
    check(key.name == log["origin"], "log.json: the note key's name is the log's origin")
    roots = {t["size"]: X(t["root"]) for t in log["trees"]}
    notes = {c["size"]: c for c in log["checkpoints"]}
    for size, c in notes.items():
        for n in (c["note"], c["cosigned_note"]):
            cp = c2sp.verify_log_note(n, key, origin=key.name)
            check((cp.size, cp.root) == (size, roots[size]), f"checkpoint {size} opens under the log's key with log.json's root")
    cons = next(c for c in lp["cases"] if c["kind"] == CONSISTENCY)
    incl = next(c for c in lp["cases"] if c["kind"] == INCLUSION)
    old, new = cons["first"], cons["second"]
    check({old, new} <= set(notes), f"log_proof.json's consistency proof runs between log.json's checkpoints ({old} -> {new})")
    entry = X(log["entries"][incl["first"]]["entry"])

    def watched(proof):
        w = LogWatch(c2sp, key, cons["relay_id"])
        w.checkpoint(notes[old]["cosigned_note"])
        w.checkpoint(notes[new]["note"])
        req = w.request(0)
        check(req == X(cons["request"]), f"watch trusting {old} on first use, shown {new}: asks log_proof.json's consistency request")
        check(w.request(4999) is None and w.request(5000) == req, "one request at a time, asked again after 5 s")
        w.proof(proof)
        return w

    w = watched(X(cons["proof"]))
    check(w.trusted == (new, roots[new]) and not w.alarms, f"the consistency proof verifies: checkpoint {new} adopted, no alarm")
    w.receipt(entry, incl["first"], old)
    req = w.request(0)
    check(req == X(incl["request"]), f"a receipt at index {incl['first']} under tree size {old}: asks log_proof.json's inclusion request under {new}")
    w.proof(X(cons["proof"]))
    check(w.stats["proofs_refused"] == 1 and w.asked is not None, "a proof answering another request is refused; the request stays outstanding")
    w.proof(X(incl["proof"]))
    check(w.stats["proven"] == 1 and not w.checks and not w.alarms, "the inclusion proof proves the receipt's entry")
    w.receipt(entry[:8] + bytes([entry[8] ^ 1]) + entry[9:], incl["first"], old)
    w.request(0)
    w.proof(X(incl["proof"]))
    check(w.alarms == [("not in log", incl["first"], new)], "a receipt for a block the log does not hold there: not-in-log alarm")
    w.checkpoint(notes[old]["note"])
    w.request(0)
    w.proof(X(cons["proof"]))
    check(w.stats["older_proven"] == 1, f"an older checkpoint ({old}) arriving late is proven a prefix of the trusted {new}")
    bad = bytearray(X(cons["proof"]))
    bad[-1] ^= 1
    w = watched(bytes(bad))
    check(w.trusted == (old, roots[old]) and w.alarms == [("inconsistent", old, new)],
          f"an altered consistency proof: {new} not adopted, inconsistent alarm")
    sk, _ = c2sp.signer(X(log["log_key"]["seed"]), key.name, c2sp.SIG_ED25519)
    forged = c2sp.sign_note(c2sp.Checkpoint(log["origin"], old, roots[old][::-1]).text(), [(sk, key, None)])
    w = LogWatch(c2sp, key, 3)
    w.checkpoint(notes[old]["note"])
    w.checkpoint(forged)
    w.checkpoint(forged)
    check(w.alarms == [("split view", old)], f"another root at the trusted size {old}, signed by the log's key: one split-view alarm")
    w = LogWatch(c2sp, key, 3)
    for n in log["negative_notes"]:
        w.checkpoint(n["note"])
    check(w.trusted is None and w.stats["refused"] == len(log["negative_notes"]),
          f"the {len(log['negative_notes'])} negative notes are refused and trusted by nobody")


def main():
    k = load("keys.json")
    site = X(k["site_secret"])
    hop_secret, e2e_key = meter_keys(site, k["key_id"], k["meter_id"])
    check(hop_secret.hex() == k["hop_secret"], "HKDF hop secret")
    check(e2e_key.hex() == k["e2e_key"], "HKDF end-to-end key")
    check(hop_secret[:16].hex() == k["hop_frame_key"] and hop_secret[16:].hex() == k["ack_key"], "hop frame key and ACK key")
    check((hop_secret + e2e_key).hex() == k["meter_secret"], "meter secret = hop secret || end-to-end key")

    u = load("uplink.json")
    frame = X(u["frame"])
    u_hop, u_e2e = meter_keys(site, u["key_id"], u["meter_id"])
    check(u_e2e.hex() == u["e2e_key"] and u_hop[:16].hex() == u["hop_frame_key"], "uplink keys derive from the site secret")
    readings = b""
    for i, r in enumerate(u["readings"]):
        check(reading_bytes(r) == X(r["bytes"]), f"reading {i} layout")
        readings += reading_bytes(r)
    check(readings.hex() == u["plaintext"], "uplink plaintext is the readings")
    hdr = struct.pack("<BBBBIIII", VERSION, TYPE_UPLINK, u["key_id"], 0, u["meter_id"], u["boot_epoch"], u["counter"], u["first_seq"])
    check(hdr.hex() == u["aad"] and (b"\x01" + hdr[4:16]).hex() == u["nonce"], "uplink header (aad) and nonce")
    sealed = seal_uplink(u_e2e, u_hop[:16], u["key_id"], u["meter_id"], u["boot_epoch"], u["counter"], u["first_seq"], readings)
    check(sealed == frame and len(frame) == UPLINK_OVERHEAD + READING_LEN * len(u["readings"]), "uplink frame reseals byte for byte")
    check(frame[-32:-16].hex() == u["e2e_tag"] and frame[-16:].hex() == u["hop_tag"], "uplink end-to-end and hop tags")
    check(open_uplink(frame, u_e2e) == readings, "uplink opens to the readings")
    check(judge_uplink(frame, u_hop) == "accept" and judge_uplink(frame, u_hop, u_e2e) == "accept", "uplink accepted by relay and server")

    n = load("uplink_negative.json")
    for c in n["cases"]:
        f = X(c["frame"])
        relay, server = judge_uplink(f, hop_secret), judge_uplink(f, hop_secret, e2e_key)
        got = "" if (relay, server) == (c["relay"], c["server"]) else f" (got relay: {relay}; server: {server})"
        check(not got, f"uplink '{c['case']}': relay {c['relay']}; server {c['server']}{got}")

    a = load("ack.json")
    b = X(a["bytes"])
    ack_key = meter_keys(site, a["key_id"], a["meter_id"])[0][16:]
    check(ack_key.hex() == a["ack_key"], "ACK key derives from the site secret")
    body = struct.pack("<BBBBIIIQIB3x", VERSION, 2, a["key_id"], a["flags"], a["meter_id"], a["boot_epoch"], a["counter"],
                       a["relay_time_ms"], a["relay_id"], a["channel"])
    tag = hmac.new(ack_key, body, hashlib.sha256).digest()[:16]
    check(b == body + tag, "ACK layout and HMAC tag")

    hv = load("block_header.json")
    hb = X(hv["solved_header"])
    check(len(hb) == 100 and hb == struct.pack("<BBBBIQ32s32sIQQ", VERSION, 3, hv["difficulty"], 0, hv["relay_id"], hv["height"],
                                                X(hv["prev_hash"]), X(hv["merkle_root"]), hv["leaf_count"], hv["time_ms"],
                                                hv["pow_nonce"]), "block header layout")
    hh = hashlib.sha256(hb).digest()
    check(hh.hex() == hv["solved_hash"] and lzb(hh) == hv["leading_zero_bits"] >= hv["difficulty"], "header hash meets the PoW difficulty")
    check(hb[:92] + bytes(8) == X(hv["unsolved_header"]) and hashlib.sha256(X(hv["unsolved_header"])).hexdigest() == hv["unsolved_hash"]
          and hv["tries"] == hv["pow_nonce"] + 1, "unsolved header, its hash and the number of tries")
    smaller = [n for n in range(hv["pow_nonce"]) if lzb(hashlib.sha256(hb[:92] + struct.pack("<Q", n)).digest()) >= hv["difficulty"]]
    check(not smaller, "PoW nonce is the smallest solution")

    m = load("merkle.json")
    for c in m["cases"]:
        hs = [leaf_hash(f"leaf-{i}".encode()) for i in range(c["leaves"])]
        root = mth(hs)
        check(root.hex() == c["root"], f"Merkle root of {c['leaves']} leaves")
        proof = [X(p) for p in c["proof"]]
        check(verify_inclusion(hs[c["proof_index"]], c["proof_index"], c["leaves"], proof, root), f"inclusion proof, {c['leaves']} leaves")
    for c in m["consistency"]:
        hs = [leaf_hash(f"leaf-{i}".encode()) for i in range(c["new_size"])]
        old_root, new_root = mth(hs[: c["old_size"]]), mth(hs)
        what = f"consistency {c['old_size']} -> {c['new_size']}"
        check(old_root.hex() == c["old_root"] and new_root.hex() == c["new_root"], f"{what}: roots")
        proof = [X(p) for p in c["proof"]]
        check(verify_consistency(c["old_size"], c["new_size"], old_root, new_root, proof), f"{what}: proof verifies")
        bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
        check(not verify_consistency(c["old_size"], c["new_size"], old_root, new_root, bad), f"{what}: a changed node is refused")

    bv = load("block.json")
    blk = X(bv["block"])
    header, sig, rest = blk[:100], blk[100:164], blk[164:]
    pub = Ed25519PublicKey.from_public_bytes(X(bv["relay_public_key"]))
    check(Ed25519PrivateKey.from_private_bytes(X(bv["relay_signing_seed"])).public_key().public_bytes_raw() == pub.public_bytes_raw(), "relay key pair")
    hh = hashlib.sha256(header).digest()
    check(ed25519_ok(pub, sig, b"gridpow-block-v2" + hh) and hh.hex() == bv["header_hash"], "block signature and hash")
    check(header[0] == VERSION and header[1] == 3 and header[3] == 0 and struct.unpack("<I", header[4:8])[0] == bv["relay_id"],
          "block header version, type and relay id")
    leaves = []
    while rest:
        n = struct.unpack("<H", rest[:2])[0]
        leaves.append(rest[2:2 + n])
        rest = rest[2 + n:]
    count = struct.unpack("<I", header[80:84])[0]
    check(len(leaves) == count and [l.hex() for l in leaves] == bv["frames"], "block leaves")
    check(mth([leaf_hash(l) for l in leaves]) == header[48:80], "block Merkle root")
    check(lzb(hh) >= header[2] == bv["difficulty"], "block PoW")
    b_hop, b_e2e = meter_keys(site, bv["key_id"], bv["meter_id"])
    for i, l in enumerate(leaves):
        check(l[2] == bv["key_id"] and struct.unpack("<I", l[4:8])[0] == bv["meter_id"], f"leaf {i} names the block's meter")
        check(judge_uplink(l, b_hop, b_e2e) == "accept", f"leaf {i}: parses, hop tag and end-to-end tag verify")

    bn = load("block_negative.json")
    relays = {r["relay_id"]: X(r["public_key"]) for r in bn["relays"]}
    check(relays.get(bv["relay_id"]) == X(bv["relay_public_key"]), "block_negative.json names block.json's relay key")
    meters = {(m["meter_id"], m["key_id"]): meter_keys(site, m["key_id"], m["meter_id"]) for m in bn["meters"]}
    check(X(bn["cases"][0]["block"]) == blk, "block_negative.json starts with block.json's block")
    for c in bn["cases"]:
        want = (c["verdict"], c["class"], c["reason"], c["leaf"], c["status"])
        got = judge_block(X(c["block"]), relays, bn["min_difficulty"], meters)
        check(got == want, f"block '{c['name']}': {c['verdict']}, {c['reason']}, leaf {c['leaf']}, receipt status {c['status']}"
              + ("" if got == want else f" (got {got})"))

    check_receipts()
    check_log_proofs()
    check_log_watch()

    st = load("status.json")
    for m in st["messages"]:
        body = {"height": m["height"], "relay_id": m["relay_id"], "state": "online" if m["online"] else "offline", "time_ms": m["time_ms"]}
        if m["radio"] is not None:
            body["radio"] = m["radio"]
        days = m["tls_expiry_days"]
        if days is not None:
            body["tls_expiry_days"] = days
        limit = 240 if days is None else 279
        check(m["json"] == json.dumps(body, sort_keys=True, separators=(",", ":")) and len(m["json"]) <= limit,
              f"status of relay {m['relay_id']}" + ("" if days is None else f" (tls_expiry_days {days})")
              + f": keys sorted, no spaces, at most {limit} bytes")
    check(any(m["tls_expiry_days"] is not None and m["tls_expiry_days"] < 0 for m in st["messages"])
          and any(m["tls_expiry_days"] is not None and m["tls_expiry_days"] > 0 for m in st["messages"]),
          "status messages with tls_expiry_days both positive and negative (expired)")
    check(max(len(m["json"]) for m in st["messages"] if m["tls_expiry_days"] is None) == 240
          and max(len(m["json"]) for m in st["messages"]) == 279,
          "the longest status messages: 240 bytes without tls_expiry_days, 279 with it")

    def judge_status(topic_relay, text):
        try:
            v = json.loads(text)
            ok = isinstance(v, dict) and v.get("state") in ("online", "offline") and all(
                isinstance(v.get(k), int) and v[k] >= 0 for k in ("relay_id", "time_ms")) and (
                v.get("height") is None or (isinstance(v["height"], int) and v["height"] >= 0)) and "height" in v and (
                v.get("tls_expiry_days") is None or (isinstance(v["tls_expiry_days"], int)
                                                     and not isinstance(v["tls_expiry_days"], bool)))
        except ValueError:
            ok = False
        if not ok:
            return "malformed"
        return "kept" if v["relay_id"] == topic_relay else "wrong_relay"
    for r in st["refused"]:
        check(judge_status(r["topic_relay"], r["json"]) == r["reason"], f"status {r['json']!r} on relay {r['topic_relay']}'s topic: {r['reason']}")
    for m in st["messages"]:
        check(judge_status(m["relay_id"], m["json"]) == "kept", f"status of relay {m['relay_id']} kept")

    s = load("serial.json")
    enc = X(s["encoded"])
    check(enc[-1] == 0 and 0 not in enc[:-1], "serial message is zero-delimited")
    out, i, data = bytearray(), 0, enc[:-1]
    while i < len(data):
        code = data[i]
        out += data[i + 1:i + code]
        i += code
        if code != 0xFF and i < len(data):
            out.append(0)
    import zlib
    body, crc = bytes(out[:-4]), struct.unpack("<I", out[-4:])[0]
    check(zlib.crc32(body) == crc, "serial CRC-32")
    check(body[0] == s["kind"] and body[1:7].hex() == s["mac"] and struct.unpack("<b", body[7:8])[0] == s["rssi"] and body[8:].hex() == s["data"], "serial fields")
    ua = load("udp_air.json")

    def judge_air(d):
        if len(d) < 16:
            return "drop: short"
        if d[:4] != b"GPA1":
            return "drop: magic"
        if len(d) - 16 > 250:
            return "drop: too long"
        return "accept"

    dg = X(ua["datagram"])
    check(dg == b"GPA1" + X(ua["src_mac"]) + X(ua["dst_mac"]) + X(ua["payload"]) and X(ua["payload"]) == frame,
          "UDP air datagram carries the uplink")
    check(judge_air(dg) == "accept", "UDP air datagram accepted")
    for c in ua["cases"]:
        check(judge_air(X(c["datagram"])) == c["verdict"], f"UDP air: {c['description']}")
    sn = load("signature_negative.json")
    for c in sn["cases"]:
        check(ed25519_strict(X(c["public_key"]), X(c["signature"]), X(c["message"])) == c["verdict"],
              f"strict Ed25519: {c['description']} -> {c['verdict']}")
    # §4 nonce uniqueness across the files: every frame whose end-to-end tag verifies is a
    # sealing by its meter; one (key, nonce) must always seal the same header and readings.
    def block_leaves(b):
        rest, out = b[164:], []
        while len(rest) >= 2:
            n = struct.unpack("<H", rest[:2])[0]
            if n == 0 or len(rest) < 2 + n:
                break
            out.append(rest[2:2 + n])
            rest = rest[2 + n:]
        return out

    frames = [frame] + [X(c["frame"]) for c in load("uplink_negative.json")["cases"]] + [X(f) for f in bv["frames"]] + block_leaves(blk)
    for c in bn["cases"]:
        frames += block_leaves(X(c["block"]))
    frames += [X(d)[16:] for d in [ua["datagram"]] + [c["datagram"] for c in ua["cases"]]]
    sealed, reused = {}, []
    for f in frames:
        if len(f) < UPLINK_MIN - READING_LEN:
            continue
        key_id, meter_id = f[2], struct.unpack("<I", f[4:8])[0]
        try:
            open_uplink(f, meter_keys(site, key_id, meter_id)[1])
        except InvalidTag:
            continue
        if sealed.setdefault((key_id, meter_id, f[4:16]), f[:-16]) != f[:-16]:
            reused.append(f"meter {meter_id} epoch {struct.unpack('<I', f[8:12])[0]} counter {struct.unpack('<I', f[12:16])[0]}")
    check(not reused and len(sealed) > 20,
          f"{len(sealed)} distinct end-to-end sealings across the vector files, no (key, nonce) seals two frames" + (f": {reused}" if reused else ""))
    import verify_chain
    verify_chain.main()
    print("all vectors verified")


if __name__ == "__main__":
    main()
