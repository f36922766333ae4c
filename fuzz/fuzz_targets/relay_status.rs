//! Relay status messages (docs/protocol.md §11) as the server reads them:
//! anything on a status topic is kept or refused with a reason, never a panic.
#![no_main]
use gridpow_server::relay_status::{parse, RelayStatuses};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let statuses = RelayStatuses::default();
    for relay in [1, 7] {
        if let Ok(s) = parse(relay, data, 0) {
            assert_eq!(s.relay_id, relay);
            assert!(statuses.record(s));
        }
    }
});
