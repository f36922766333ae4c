//! The grid server's MQTT payload path: whatever arrives on a blocks topic goes
//! through `verify_payload` (framing, relay, PoW, signature, Merkle root, every
//! leaf's hop and end-to-end tags) and `classify`; it must be judged, never panic.
//! The keyring holds the test vectors' site secret, relay 3 and meter 4242, so
//! mutations of the vector block reach the leaf checks.
#![no_main]
use std::sync::{Mutex, OnceLock};

use gridpow_keys::KeyDir;
use gridpow_server::keyring::Keyring;
use gridpow_server::verify::verify_payload;
use libfuzzer_sys::fuzz_target;

fn keyring() -> &'static Mutex<Keyring> {
    static KEYS: OnceLock<Mutex<Keyring>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gridpow-fuzz-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
        // Test keys from test-vectors/keys.json and block.json: public on purpose.
        write(
            "site.toml",
            "current_key_id = 1\n[[key]]\nid = 1\nsecret = \"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\"\n",
        );
        write(
            "relays.toml",
            "[[relay]]\nid = 3\npublic_key = \"0d7550754e0800a5d237eef5826035766b9b3e5a15868a940ab289958788e3b0\"\n",
        );
        write("meters.toml", "[[meter]]\nid = 4242\nkey_id = 1\n");
        Mutex::new(Keyring::load(&KeyDir::new(&dir)).expect("fuzz keyring"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut keys) = keyring().lock() else {
        return;
    };
    match verify_payload(&mut keys, 0, data) {
        Ok(v) => assert_eq!(v.raw, data),
        Err(r) => assert!(!r.kind.as_str().is_empty() && !r.detail.is_empty()),
    }
});
