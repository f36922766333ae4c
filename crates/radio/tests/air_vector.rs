//! The UDP air envelope (docs/protocol.md §14) against its known-answer
//! vector `test-vectors/udp_air.json`: the datagram carrying the uplink of
//! `uplink.json`, and the datagrams a receiver must drop, with the reason.
//! `GRIDPOW_REGEN_VECTORS=1` rewrites the file after a documented change.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use gridpow_radio::{decode_air, encode_air, AirMalformed};
use serde_json::{json, Value};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-vectors")
}

fn verdict(d: &[u8]) -> String {
    match decode_air(d) {
        Ok(_) => "accept".into(),
        Err(AirMalformed::Short(_)) => "drop: short".into(),
        Err(AirMalformed::BadMagic) => "drop: magic".into(),
        Err(AirMalformed::TooLong(_)) => "drop: too long".into(),
    }
}

#[test]
fn the_air_envelope_matches_its_vector_and_receivers_drop_what_is_not_air() {
    let uplink: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("uplink.json")).unwrap()).unwrap();
    let frame = hex::decode(uplink["frame"].as_str().unwrap()).unwrap();
    let src = [0x02, 0x00, 0x00, 0x00, 0x10, 0x92];
    let dst = [0x02, 0x52, 0x45, 0x4c, 0x00, 0x03];
    let datagram = encode_air(&src, &dst, &frame);
    let (s, d, p) = decode_air(&datagram).unwrap();
    assert_eq!((s, d, p), (src, dst, &frame[..]));

    let mut bad_magic = datagram.clone();
    bad_magic[3] = b'2';
    let cases = [
        ("empty datagram", Vec::new()),
        ("15 bytes: a header cut short", datagram[..15].to_vec()),
        (
            "header only: an empty payload is an air frame (the ingress refuses it)",
            datagram[..16].to_vec(),
        ),
        ("magic GPA2", bad_magic),
        (
            "251-byte payload: longer than ESP-NOW allows",
            encode_air(&src, &dst, &[0xAB; 251]),
        ),
        (
            "250-byte payload: the longest",
            encode_air(&src, &dst, &[0xAB; 250]),
        ),
    ];
    let negative: Vec<Value> = cases
        .iter()
        .map(|(what, d)| json!({"description": what, "datagram": hex::encode(d), "verdict": verdict(d)}))
        .collect();
    let v = json!({
        "description": "UDP air datagram (protocol §14): \"GPA1\" ‖ source MAC ‖ destination MAC ‖ payload; the payload is the uplink of uplink.json",
        "src_mac": hex::encode(src),
        "dst_mac": hex::encode(dst),
        "payload": hex::encode(&frame),
        "datagram": hex::encode(&datagram),
        "cases": negative,
    });
    let path = dir().join("udp_air.json");
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("GRIDPOW_REGEN_VECTORS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with GRIDPOW_REGEN_VECTORS=1)", path.display()));
    assert_eq!(
        stored, text,
        "udp_air.json differs from what the code produces"
    );
}
