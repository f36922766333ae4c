//! The relay's provisioning blob, layout 3 (`gridpow_firmware_logic::provisioning`):
//! encoded and decoded on the RV32IMC with the TLS section at the sizes
//! `gridpow keys` issues, 64 meters in the 4 KiB partition; mirrors the host
//! tests in `crates/firmware-logic/src/provisioning.rs`.

use gridpow_firmware_logic::provisioning::{
    BlobError, RelayConfig, RelayMeter, RelayMode, RelayTls, ShortStr, TlsLens,
    MAX_RELAY_BLOB_LEN, MAX_RELAY_METERS,
};
use gridpow_proto::crypto::HopSecret;

use crate::harness::Outcome;

tests![
    full_relay_blob_with_tls_round_trips_in_the_partition,
    every_flipped_byte_of_a_relay_blob_is_refused,
    a_relay_blob_larger_than_the_partition_is_refused,
];

/// A DER-looking item: a SEQUENCE tag, then `fill`.
fn der<const N: usize>(fill: u8) -> [u8; N] {
    let mut b = [fill; N];
    b[0] = 0x30;
    b
}

fn standalone() -> RelayConfig {
    let mut c = RelayConfig::bridge(7, 6);
    c.mode = RelayMode::Standalone;
    c.difficulty = 16;
    c.wifi_ssid = ShortStr::new("site-ap").unwrap_or(ShortStr::EMPTY);
    c.wifi_password = ShortStr::new("correct horse battery").unwrap_or(ShortStr::EMPTY);
    c.broker_host = ShortStr::new("broker.site.example").unwrap_or(ShortStr::EMPTY);
    c.broker_port = 8883;
    c
}

fn meter(i: u32) -> RelayMeter {
    RelayMeter {
        meter_id: 1000 + i,
        key_id: 1,
        mac: i.is_multiple_of(2).then_some([2, 0, 0, 0, 0, i as u8]),
        secret: HopSecret([i as u8; 32]),
    }
}

fn full_relay_blob_with_tls_round_trips_in_the_partition() -> Outcome {
    let c = standalone();
    let all: [RelayMeter; MAX_RELAY_METERS] = core::array::from_fn(|i| meter(i as u32));
    let (ca, cert, key) = (der::<382>(1), der::<330>(2), der::<138>(3));
    let tls = RelayTls {
        ca_der: &ca,
        cert_der: &cert,
        key_der: &key,
    };
    let mut region = [0xffu8; MAX_RELAY_BLOB_LEN];
    let n = check_ok!(c.encode_with_tls(&all, Some(&tls), &mut region));
    check_eq!(n, 3934);
    let d = check_ok!(RelayConfig::decode(&region));
    check_eq!(d.meter_count, MAX_RELAY_METERS);
    check_eq!(
        d.tls,
        Some(TlsLens {
            ca: 382,
            cert: 330,
            key: 138
        })
    );
    check_eq!(d.tls(&region), Some(tls));
    check_eq!(d.broker_host.as_str(), "broker.site.example");
    check_eq!(d.wifi_password.as_str(), "correct horse battery");
    for (i, m) in all.iter().enumerate() {
        check_eq!(d.meter(&region, i).as_ref(), Some(m), "meter {i}");
    }
    Ok(())
}

fn every_flipped_byte_of_a_relay_blob_is_refused() -> Outcome {
    let c = standalone();
    let meters = [meter(1), meter(2)];
    let (ca, cert, key) = (der::<40>(1), der::<50>(2), der::<30>(3));
    let tls = RelayTls {
        ca_der: &ca,
        cert_der: &cert,
        key_der: &key,
    };
    let mut blob = [0u8; 512];
    let n = check_ok!(c.encode_with_tls(&meters, Some(&tls), &mut blob));
    check_ok!(RelayConfig::decode(&blob[..n]));
    for i in 0..n {
        let mut t = blob;
        t[i] ^= 0x10;
        check!(RelayConfig::decode(&t[..n]).is_err(), "byte {i} flipped, blob accepted");
    }
    Ok(())
}

fn a_relay_blob_larger_than_the_partition_is_refused() -> Outcome {
    let c = standalone();
    let all: [RelayMeter; MAX_RELAY_METERS] = core::array::from_fn(|i| meter(i as u32));
    let (ca, cert, key) = (der::<600>(1), der::<600>(2), der::<138>(3));
    let tls = RelayTls {
        ca_der: &ca,
        cert_der: &cert,
        key_der: &key,
    };
    let mut out = [0u8; 2 * MAX_RELAY_BLOB_LEN];
    check_eq!(
        c.encode_with_tls(&all, Some(&tls), &mut out),
        Err(BlobError::TooLarge)
    );
    Ok(())
}
