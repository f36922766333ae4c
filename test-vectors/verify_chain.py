#!/usr/bin/env python3
"""Judges test-vectors/chain_policy.json from docs/protocol.md §9.5 and §10
alone: a model of the grid server's chain position, replay policy,
de-duplication and equivocation rules, and of which refusal gets which
receipt status. Block and frame checks reuse verify.py's independent code.
Run by verify.py; standalone: python3 test-vectors/verify_chain.py"""

import hashlib
import struct

import verify as v

def need(cond, what):
    """A stateless check every block of this vector passes: silent unless it fails."""
    if not cond:
        v.check(False, what)


def open_block(b, relays, meters, key_id, min_difficulty):
    """The header fields and readings [(meter, epoch, seq, 32 bytes)] of a block that
    verify.py's judge_block accepts: every block of this vector passes the
    stateless checks; the verdicts are about its chain position."""
    keyed = {(m, key_id): k for m, k in meters.items()}
    verdict = v.judge_block(b, relays, min_difficulty, keyed)
    need(verdict[0] == "accept", f"chain vector: stateless checks pass ({verdict})")
    relay, height = struct.unpack_from("<IQ", b, 4)
    (leaf_count,) = struct.unpack_from("<I", b, 80)
    h = {"relay": relay, "height": height, "prev": b[16:48], "hash": hashlib.sha256(b[:100]).digest()}
    readings, rest = [], b[164:]
    for _ in range(leaf_count):
        (n,) = struct.unpack_from("<H", rest, 0)
        f, rest = rest[2:2 + n], rest[2 + n:]
        meter, epoch, _counter, first_seq = struct.unpack_from("<IIII", f, 4)
        plain = v.open_uplink(f, meters[meter][1])
        for i in range(len(plain) // 32):
            readings.append((meter, epoch, first_seq + i, plain[32 * i:32 * i + 32]))
    return h, readings


def main():
    c = v.load("chain_policy.json")
    site = bytes.fromhex(c["site_secret"])
    meters = {m: v.meter_keys(site, c["key_id"], m) for m in c["meters"]}
    relays = {r["relay_id"]: bytes.fromhex(r["public_key"]) for r in c["relays"]}
    chain = {}  # (relay, height) -> (hash, prev_hash)
    stored = {}  # (meter, epoch, seq) -> reading bytes, first committed
    equivocations, forks = [], {}
    for step in c["steps"]:
        b = bytes.fromhex(step["block"])
        h, readings = open_block(b, relays, meters, c["key_id"], c["min_difficulty"])
        relay, height = h["relay"], h["height"]
        heads = [hh for (r, hh) in chain if r == relay]
        head = max(heads) if heads else 0
        got = None
        if height > head + c["max_height_ahead"]:
            got = {"outcome": "refused", "reason": "too_far_ahead"}
        elif (relay, height) in chain:
            got = ({"outcome": "already_stored", "reason": None} if chain[relay, height][0] == h["hash"]
                   else {"outcome": "refused", "reason": "fork"})
        elif height == 0 and h["prev"] != bytes(32):
            got = {"outcome": "refused", "reason": "bad_genesis"}
        elif height > 0 and (relay, height - 1) in chain and chain[relay, height - 1][0] != h["prev"]:
            got = {"outcome": "refused", "reason": "fork"}
        elif (relay, height + 1) in chain and chain[relay, height + 1][1] != h["hash"]:
            got = {"outcome": "refused", "reason": "fork"}
        if got is None:
            linked = height == 0 or (relay, height - 1) in chain
            chain[relay, height] = (h["hash"], h["prev"])
            new, repeated, eq = 0, 0, []
            for (m, e, s, r) in sorted(readings, key=lambda x: (x[0], x[1], x[2])):
                if (m, e, s) not in stored:
                    stored[m, e, s] = r
                    new += 1
                    continue
                repeated += 1
                if stored[m, e, s] != r:
                    eq.append([m, e, s])
                    equivocations.append({"relay_id": relay, "height": height, "meter_id": m, "epoch": e, "seq": s})
            got = {"outcome": "stored", "reason": None, "linked": linked, "new_readings": new,
                   "repeated_readings": repeated, "equivocations": eq}
        if got["outcome"] == "refused" and got["reason"] == "fork":
            forks.setdefault(relay, set()).add(height)
        got["receipt_status"] = {"stored": 0, "already_stored": 1}.get(
            got["outcome"], 3 if got["reason"] in v.FINAL_REASONS else 2)
        v.check(got == step["expect"], f"chain policy: {step['name']} -> {step['expect']['outcome']}")
    # The ledger check: linked runs, gaps below each orphan, forks, equivocations.
    gaps = []
    for relay in sorted({r for (r, _) in chain}):
        prev = None
        for height in sorted(hh for (r, hh) in chain if r == relay):
            if height > 0 and prev != height - 1:
                gaps.append([relay, 0 if prev is None else prev + 1, height - 1])
            prev = height
    ledger = c["ledger"]
    v.check(gaps == ledger["gaps"], "chain policy: the ledger's gaps")
    v.check([{"relay_id": r, "heights": sorted(hs)} for r, hs in sorted(forks.items())] == ledger["forks"],
            "chain policy: the ledger's forks")
    v.check(equivocations == ledger["equivocations"], "chain policy: the ledger's equivocations")
    v.check(len(stored) == ledger["readings"] and ledger["ok"] == (not forks), "chain policy: readings stored once")
    print("chain policy vector verified")


if __name__ == "__main__":
    main()
