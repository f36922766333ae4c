//! Serial bridge stream: the decoder must resynchronise on garbage, never panic.
#![no_main]
use gridpow_proto::wire::serial::{SerialDecoder, SerialRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = SerialDecoder::new();
    for &b in data {
        if let Some(Ok(m)) = d.push(b) {
            let _ = (m.kind, m.mac, m.rssi, m.data.len());
        }
    }
    let _ = SerialRepr::parse(data);
});
