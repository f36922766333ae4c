//! Uplink frames: the checked view and AEAD open must reject, never panic.
#![no_main]
use gridpow_proto::crypto::{MeterKeys, MeterSecret, RustCrypto};
use gridpow_proto::wire::uplink::{UplinkPacket, MAX_BODY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = UplinkPacket::new_checked(data) {
        let _ = (p.meter_id(), p.boot_epoch(), p.counter(), p.reading_count(), p.first_seq(), p.e2e_tag(), p.hop_tag());
        let keys = MeterKeys::new(&RustCrypto, p.key_id(), &MeterSecret::from_bytes(&[7; 48]));
        let mut scratch = [0u8; MAX_BODY_LEN];
        if let Ok(body) = p.open(&RustCrypto, &keys, &mut scratch) {
            for _ in body.readings() {}
        }
    }
});
