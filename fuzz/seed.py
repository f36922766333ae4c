#!/usr/bin/env python3
"""Seeds fuzz corpora from the known-answer vectors (test-vectors/*.json)."""
import json
from pathlib import Path

root = Path(__file__).resolve().parent
vec = root.parent / "test-vectors"
corpus = root / "corpus"
seeds = {
    "uplink": [json.loads((vec / "uplink.json").read_text())["frame"]],
    "ack": [json.loads((vec / "ack.json").read_text())["bytes"]],
    "block": [json.loads((vec / "block.json").read_text())["block"]],
    "receipt": [json.loads((vec / "receipt.json").read_text())["bytes"]],
    "serial": [json.loads((vec / "serial.json").read_text())["encoded"]],
    "ingress": json.loads((vec / "block.json").read_text())["frames"],
    "server_payload": [json.loads((vec / "block.json").read_text())["block"]]
    + [c["block"] for c in json.loads((vec / "block_negative.json").read_text())["cases"]]
    + [s["block"] for s in json.loads((vec / "chain_policy.json").read_text())["steps"]],
    "udp_air": [json.loads((vec / "udp_air.json").read_text())["datagram"]]
    + [c["datagram"] for c in json.loads((vec / "udp_air.json").read_text())["cases"]],
}
# HTTP requests (fuzz_targets/http.rs): request line, then headers; test tokens.
admin = "gpt_" + "ab" * 32
customer = "gpt_" + "cd" * 32
http = [
    "GET /healthz\nHost: 127.0.0.1:8080\n",
    f"GET /api/v1/meters\nHost: localhost\nAuthorization: Bearer {admin}\n",
    f"GET /api/v1/meters/1/readings?limit=5&from=0\nHost: 127.0.0.1\nAuthorization: Bearer {customer}\n",
    f"GET /api/v1/quarantine?limit=99999\nHost: localhost\nCookie: gridpow_token={admin}\n",
    f"GET /api/v1/readings/1/proof\nHost: localhost\nAuthorization: Bearer {admin}\n",
    f"GET /login?token={customer}\nHost: localhost\n",
    f"GET /metrics\nHost: evil.example\nAuthorization: Bearer {admin}\n",
    f"GET /api/v1/blocks?relay=1&limit=10\nHost: localhost\nAuthorization: Bearer {admin}\n",
]
seeds["http"] = [h.encode().hex() for h in http]
# Relay status messages (fuzz_targets/relay_status.rs), as crates/relay writes them.
status = [
    '{"height":1,"radio":{"accepted":30,"duplicates":7,"frames":40,"rejected":3},"relay_id":1,"state":"online","time_ms":5}',
    '{"height":null,"relay_id":7,"state":"offline","time_ms":0}',
]
seeds["relay_status"] = [t.encode().hex() for t in status]
# The transparency log's texts and bytes (fuzz_targets/tlog.rs), from log.json.
log = json.loads((vec / "log.json").read_text())
tlog = [c["cosigned_note"] for c in log["checkpoints"]] + [w["request"] for w in log["witness"]]
tlog += [n["note"] for n in log["negative_notes"]] + [t["path"] for t in log["tiles"][:4]]
seeds["tlog"] = [t.encode().hex() for t in tlog] + [log["entries"][0]["entry"]]
# The relay's log watch (fuzz_targets/logwatch.rs): records op ‖ len ‖ bytes.
def record(op, b):
    return bytes([op]) + len(b).to_bytes(2, "little") + b
proofs = json.loads((vec / "log_proof.json").read_text())["cases"]
old, new = log["checkpoints"][0], log["checkpoints"][-1]
watch = record(0, old["note"].encode()) + record(0, new["cosigned_note"].encode()) + record(3, bytes(8))
for c in proofs:
    watch += record(1, bytes.fromhex(c["proof"]))
seeds["logwatch"] = [watch.hex()] + [c["request"] for c in proofs] + [c["proof"] for c in proofs]
for target, items in seeds.items():
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    for i, h in enumerate(items):
        (d / f"vector-{i}").write_bytes(bytes.fromhex(h))
print("seeded", ", ".join(seeds))
