//! Commit receipts: parse and signature check must reject, never panic.
#![no_main]
use ed25519_dalek::SigningKey;
use gridpow_proto::crypto::RustCrypto;
use gridpow_proto::wire::receipt::ReceiptRepr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ReceiptRepr::parse_unverified(data);
    let _ = ReceiptRepr::parse_verified(
        &RustCrypto,
        data,
        &SigningKey::from_bytes(&[0x3c; 32]).verifying_key(),
    );
});
