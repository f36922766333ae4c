//! Blocks: framing, header parse and full verification must reject, never panic.
#![no_main]
use ed25519_dalek::SigningKey;
use gridpow_proto::block::{verify_block, KeyLookup, VerifyPolicy};
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::wire::block::BlockPacket;
use libfuzzer_sys::fuzz_target;

struct AnyMeter(MeterKeys<RustCrypto>);
impl KeyLookup<RustCrypto> for AnyMeter {
    fn meter_keys(&self, _meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        (key_id == 1).then_some(&self.0)
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = BlockPacket::new_checked(data) {
        for _ in p.leaves() {}
    }
    let keys = AnyMeter(MeterKeys::new(&RustCrypto, 1, &MeterSecret::from_bytes(&[7; 48])));
    let vk = SigningKey::from_bytes(&[0x5a; 32]).verifying_key();
    let policy = VerifyPolicy { relay_id: 3, min_difficulty: 0 };
    let _ = verify_block(&RustCrypto, data, &vk, &policy, &keys, |_| Ok(()));
});
