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


def meter_secret(site, key_id, meter_id):
    info = b"gridpow v1 meter" + bytes([key_id]) + struct.pack("<I", meter_id)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gridpow v1 key derivation", info=info).derive(site)


def reading_bytes(r):
    return struct.pack("<QHIihHQH", r["timestamp_ms"], r["voltage_cv"], r["current_ma"], r["active_power_dw"],
                       r["power_factor_e4"], r["frequency_mhz"], r["energy_mwh"], r["flags"])


def open_uplink(frame, secret):
    aad, ct, tag = frame[:16], frame[16:-16], frame[-16:]
    nonce = b"\x01" + frame[4:16]
    return AESCCM(secret[:16], tag_length=16).decrypt(nonce, ct + tag, aad)


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


def lzb(h):
    n = 0
    for b in h:
        if b == 0:
            n += 8
            continue
        return n + 8 - b.bit_length()
    return n


def main():
    k = load("keys.json")
    ms = meter_secret(X(k["site_secret"]), k["key_id"], k["meter_id"])
    check(ms.hex() == k["meter_secret"], "HKDF meter secret")

    u = load("uplink.json")
    frame = X(u["frame"])
    pt = open_uplink(frame, X(u["meter_secret"]))
    check(pt.hex() == u["plaintext"], "uplink opens to the plaintext")
    check(struct.unpack("<I", pt[:4])[0] == u["first_seq"], "uplink first_seq")
    for i, r in enumerate(u["readings"]):
        check(pt[4 + 32 * i: 36 + 32 * i] == reading_bytes(r) == X(r["bytes"]), f"reading {i} layout")
    hdr = struct.pack("<BBBBIII", 1, 1, u["key_id"], 0, u["meter_id"], u["boot_epoch"], u["counter"])
    check(frame[:16] == hdr and len(frame) == 36 + 32 * len(u["readings"]), "uplink header and length")

    a = load("ack.json")
    b = X(a["bytes"])
    body = struct.pack("<BBBBIIIQIB3x", 1, 2, a["key_id"], a["flags"], a["meter_id"], a["boot_epoch"], a["counter"],
                       a["relay_time_ms"], a["relay_id"], a["channel"])
    tag = hmac.new(X(a["ack_key"]), body, hashlib.sha256).digest()[:16]
    check(b == body + tag, "ACK layout and HMAC tag")

    hv = load("block_header.json")
    hb = X(hv["solved_header"])
    check(len(hb) == 100 and hb == struct.pack("<BBBBIQ32s32sIQQ", 1, 3, hv["difficulty"], 0, hv["relay_id"], hv["height"],
                                                X(hv["prev_hash"]), X(hv["merkle_root"]), hv["leaf_count"], hv["time_ms"],
                                                hv["pow_nonce"]), "block header layout")
    hh = hashlib.sha256(hb).digest()
    check(hh.hex() == hv["solved_hash"] and lzb(hh) >= hv["difficulty"], "header hash meets the PoW difficulty")
    smaller = [n for n in range(hv["pow_nonce"]) if lzb(hashlib.sha256(hb[:92] + struct.pack("<Q", n)).digest()) >= hv["difficulty"]]
    check(not smaller, "PoW nonce is the smallest solution")

    m = load("merkle.json")
    for c in m["cases"]:
        hs = [leaf_hash(f"leaf-{i}".encode()) for i in range(c["leaves"])]
        root = mth(hs)
        check(root.hex() == c["root"], f"Merkle root of {c['leaves']} leaves")
        proof = [X(p) for p in c["proof"]]
        check(verify_inclusion(hs[c["proof_index"]], c["proof_index"], c["leaves"], proof, root), f"inclusion proof, {c['leaves']} leaves")

    bv = load("block.json")
    blk = X(bv["block"])
    header, sig, rest = blk[:100], blk[100:164], blk[164:]
    pub = Ed25519PublicKey.from_public_bytes(X(bv["relay_public_key"]))
    check(Ed25519PrivateKey.from_private_bytes(X(bv["relay_signing_seed"])).public_key().public_bytes_raw() == pub.public_bytes_raw(), "relay key pair")
    hh = hashlib.sha256(header).digest()
    pub.verify(sig, b"gridpow-block-v1" + hh)
    check(hh.hex() == bv["header_hash"], "block signature and hash")
    leaves = []
    while rest:
        n = struct.unpack("<H", rest[:2])[0]
        leaves.append(rest[2:2 + n])
        rest = rest[2 + n:]
    count = struct.unpack("<I", header[80:84])[0]
    check(len(leaves) == count and [l.hex() for l in leaves] == bv["frames"], "block leaves")
    check(mth([leaf_hash(l) for l in leaves]) == header[48:80], "block Merkle root")
    check(lzb(hh) >= header[2] == bv["difficulty"], "block PoW")
    secret = meter_secret(X(k["site_secret"]), bv["key_id"], bv["meter_id"])
    for i, l in enumerate(leaves):
        open_uplink(l, secret)
    check(True, "every leaf's meter tag verifies")

    r = load("receipt.json")
    rb = X(r["bytes"])
    signed = struct.pack("<BBBBIQ32sIQ", 1, 4, r["status"], 0, r["relay_id"], r["height"], X(r["block_hash"]), r["server_id"], r["time_ms"])
    Ed25519PublicKey.from_public_bytes(X(r["server_public_key"])).verify(rb[60:], b"gridpow-rcpt-v1\x00" + signed)
    check(rb[:60] == signed, "receipt layout and signature")

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
    print("all vectors verified")


if __name__ == "__main__":
    main()
