//! ACKs: parse and verify must reject, never panic.
#![no_main]
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::ack::AckPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = AckPacket::new_checked(data) {
        let _ = p.verify(&RustCrypto, &[3; 16]);
        let _ = p.repr_unverified();
    }
});
