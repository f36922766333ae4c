//! Fixtures shared by the benchmarks: realistic blocks of sealed frames.

use ed25519_dalek::SigningKey;
use gridpow_proto::block::{BlockBuilder, KeyLookup};
use gridpow_proto::crypto::{derive_meter_secret, MeterKeys, RustCrypto, SiteSecret};
use gridpow_proto::pow::PowSolver;
use gridpow_proto::wire::uplink::{self, UplinkHeader};
use gridpow_proto::wire::Reading;

pub const SITE: SiteSecret = SiteSecret([0x5e; 32]);

pub fn relay_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

pub struct Keyring(pub Vec<MeterKeys<RustCrypto>>);

impl KeyLookup<RustCrypto> for Keyring {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.0
            .get(meter_id.checked_sub(1)? as usize)
            .filter(|k| k.key_id() == key_id)
    }
}

pub fn keyring(meters: u32) -> Keyring {
    Keyring(
        (1..=meters)
            .map(|m| {
                MeterKeys::new(
                    &RustCrypto,
                    1,
                    &derive_meter_secret(&RustCrypto, &SITE, 1, m),
                )
            })
            .collect(),
    )
}

/// A signed block holding `readings` readings, `per_frame` to a frame, from distinct meters.
pub fn block(readings: usize, per_frame: usize, ring: &Keyring) -> Vec<u8> {
    let frames = readings.div_ceil(per_frame);
    let mut buf = vec![0u8; 300 * frames + 1024];
    let mut b = BlockBuilder::new(&mut buf).expect("buffer");
    let r = Reading {
        timestamp_ms: 1_767_225_600_000,
        voltage_cv: 23_000,
        current_ma: 5_000,
        active_power_dw: 11_000,
        power_factor_e4: 9_565,
        frequency_mhz: 50_000,
        energy_mwh: 1,
        flags: 0,
    };
    let mut left = readings;
    for f in 0..frames {
        let n = left.min(per_frame);
        left -= n;
        let meter_id = (f % ring.0.len()) as u32 + 1;
        let h = UplinkHeader {
            key_id: 1,
            meter_id,
            boot_epoch: 1,
            counter: f as u32,
        };
        let mut frame = [0u8; 250];
        let len = uplink::seal(
            &RustCrypto,
            &ring.0[meter_id as usize - 1],
            &h,
            0,
            &[r; 6][..n],
            &mut frame,
        )
        .expect("seal");
        b.push_leaf(&RustCrypto, &frame[..len]).expect("room");
    }
    let mut hd = b.header(&RustCrypto, 1, 1, [0; 32], 0, 12);
    let mut s = PowSolver::new(&RustCrypto, &hd, 0, 1);
    hd.nonce = loop {
        if let Some(n) = s.solve_for(&RustCrypto, 1 << 16) {
            break n;
        }
    };
    let len = b.finish(&hd, &relay_key()).expect("finish");
    buf.truncate(len);
    buf
}
