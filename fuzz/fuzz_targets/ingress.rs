//! The relay ingress fed arbitrary frames: every input is judged, none panics,
//! and the state machine keeps working afterwards.
#![no_main]
use gridpow_proto::crypto::{HopKeys, HopSecret, RustCrypto};
use gridpow_proto::ingress::{FixedMeterTable, Ingress, IngressConfig, MeterEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut t: FixedMeterTable<2> = FixedMeterTable::new();
    // Meter 4242 during a site-secret rotation: hop keys under key ids 1 and 2.
    let mut m = MeterEntry::new(4242, None, HopKeys::new(1, &HopSecret([7; 32])));
    let _ = m.add_keys(HopKeys::new(2, &HopSecret([8; 32])));
    let _ = t.insert(m);
    let mut ing = Ingress::new(RustCrypto, IngressConfig { relay_id: 1, channel: 1, require_registered_mac: false }, t);
    for chunk in data.split(|&b| b == 0xff) {
        if let Ok(v) = ing.handle_frame(&[0; 6], chunk) {
            let mut ack = [0u8; 48];
            let _ = ing.emit_ack(&v, 0, &mut ack);
        }
    }
});
