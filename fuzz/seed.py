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
    "server_payload": [json.loads((vec / "block.json").read_text())["block"]],
}
for target, items in seeds.items():
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    for i, h in enumerate(items):
        (d / f"vector-{i}").write_bytes(bytes.fromhex(h))
print("seeded", ", ".join(seeds))
