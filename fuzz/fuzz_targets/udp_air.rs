//! UDP air datagrams (protocol §14): any bytes are accepted or dropped with a
//! reason, never a panic; an accepted datagram re-encodes to itself.
#![no_main]
use gridpow_radio::{decode_air, encode_air};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((src, dst, payload)) = decode_air(data) {
        assert_eq!(encode_air(&src, &dst, payload), data);
    }
});
