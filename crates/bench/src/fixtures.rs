//! Realistic inputs for the benchmarks: meters' keys, sealed frames and
//! signed, chained blocks, built with the protocol core as a relay builds them.

use ed25519_dalek::SigningKey;
use gridpow_proto::block::{BlockBuilder, KeyLookup};
use gridpow_proto::crypto::{derive_meter_secret, MeterKeys, RustCrypto, SiteSecret};
use gridpow_proto::pow::solve_blocking;
use gridpow_proto::wire::uplink::{seal, UplinkHeader, MAX_LEN, MAX_READINGS};
use gridpow_proto::wire::Reading;

/// The site secret of in-memory benchmarks (a test key, never deployed).
pub const TEST_SITE: SiteSecret = SiteSecret([0x5e; 32]);

/// The relay signing key of in-memory benchmarks (a test key, never deployed).
pub fn test_relay_key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// A header no nonce solves (difficulty 255): every solver call tries all
/// the nonces it is given, as a relay's solver thread does.
pub fn unsolvable_header() -> gridpow_proto::wire::block::BlockHeaderRepr {
    gridpow_proto::wire::block::BlockHeaderRepr {
        difficulty: 255,
        relay_id: 1,
        height: 1,
        prev_hash: [1; 32],
        merkle_root: [2; 32],
        leaf_count: 1,
        time_ms: 0,
        nonce: 0,
    }
}

/// Meter keys looked up by meter id (meter `m` at index `m - 1`).
pub struct MeterRing(pub Vec<MeterKeys<RustCrypto>>);

impl MeterRing {
    /// Keys of meters `1..=meters` derived from [`TEST_SITE`] under key id 1.
    pub fn test(meters: u32) -> Self {
        MeterRing(
            (1..=meters)
                .map(|m| {
                    MeterKeys::new(
                        &RustCrypto,
                        1,
                        &derive_meter_secret(&RustCrypto, &TEST_SITE, 1, m),
                    )
                })
                .collect(),
        )
    }
}

impl KeyLookup<RustCrypto> for MeterRing {
    fn meter_keys(&self, meter_id: u32, key_id: u8) -> Option<&MeterKeys<RustCrypto>> {
        self.0
            .get(meter_id.checked_sub(1)? as usize)
            .filter(|k| k.key_id() == key_id)
    }
}

/// A plausible reading of `meter`'s `seq`-th measurement, ten seconds apart from `t0`.
pub fn reading(t0: u64, meter: u32, seq: u32) -> Reading {
    let ma = 1_000 + (meter.wrapping_mul(53).wrapping_add(seq.wrapping_mul(17))) % 9_000;
    let v = 22_800 + (seq % 40) as u16;
    Reading {
        timestamp_ms: t0 + u64::from(seq) * 10_000,
        voltage_cv: v,
        current_ma: ma,
        active_power_dw: (f64::from(v) * f64::from(ma) * 0.97 / 10_000.0).round() as i32,
        power_factor_e4: 9_700,
        frequency_mhz: 50_000,
        energy_mwh: u64::from(seq) * 3_000,
        flags: 0,
    }
}

/// The shape of the blocks a run builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    /// Readings per block.
    pub readings: usize,
    /// Readings per frame (1 to 6); the last frame of a block may hold fewer.
    pub per_frame: usize,
    /// Proof-of-work difficulty.
    pub difficulty: u8,
}

/// Builds one relay's chain of blocks: meters take turns, each frame carries
/// the meter's next readings under its next counter.
pub struct ChainBuilder<'a> {
    ring: &'a MeterRing,
    relay_key: SigningKey,
    relay_id: u32,
    t0: u64,
    next_seq: Vec<u32>,
    counter: Vec<u32>,
    turn: usize,
    height: u64,
    prev: [u8; 32],
}

impl<'a> ChainBuilder<'a> {
    /// A chain of `relay_id`, signed with `relay_key`, starting at height 0.
    pub fn new(ring: &'a MeterRing, relay_id: u32, relay_key: SigningKey, t0: u64) -> Self {
        let meters = ring.0.len();
        ChainBuilder {
            ring,
            relay_key,
            relay_id,
            t0,
            next_seq: vec![0; meters],
            counter: vec![0; meters],
            turn: 0,
            height: 0,
            prev: [0; 32],
        }
    }

    /// The next block of the chain, signed and with its proof of work.
    pub fn next_block(&mut self, shape: BlockShape) -> Result<Vec<u8>, gridpow_proto::Error> {
        let per_frame = shape.per_frame.clamp(1, MAX_READINGS);
        let frames = shape.readings.div_ceil(per_frame);
        let mut buf = vec![0u8; frames * (MAX_LEN + 2) + 1024];
        let mut block = BlockBuilder::new(&mut buf)?;
        let mut left = shape.readings;
        for _ in 0..frames {
            let n = left.min(per_frame);
            left -= n;
            let m = self.turn % self.ring.0.len();
            self.turn += 1;
            let meter_id = m as u32 + 1;
            let first = self.next_seq[m];
            let readings: Vec<Reading> = (first..first + n as u32)
                .map(|s| reading(self.t0, meter_id, s))
                .collect();
            let h = UplinkHeader {
                key_id: self.ring.0[m].key_id(),
                meter_id,
                boot_epoch: 1,
                counter: self.counter[m],
            };
            let mut frame = [0u8; MAX_LEN];
            let len = seal(
                &RustCrypto,
                &self.ring.0[m],
                &h,
                first,
                &readings,
                &mut frame,
            )?;
            block.push_leaf(&RustCrypto, &frame[..len])?;
            self.next_seq[m] += n as u32;
            self.counter[m] += 1;
        }
        let mut header = block.header(
            &RustCrypto,
            self.relay_id,
            self.height,
            self.prev,
            self.t0 + self.height * 1_000,
            shape.difficulty,
        );
        solve_blocking(&mut header);
        let len = block.finish(&header, &self.relay_key)?;
        buf.truncate(len);
        self.prev = header.hash(&RustCrypto);
        self.height += 1;
        Ok(buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use gridpow_proto::block::{verify_block, VerifyPolicy};

    #[test]
    fn built_blocks_verify_and_chain() {
        let ring = MeterRing::test(5);
        let mut chain = ChainBuilder::new(&ring, 1, test_relay_key(), 1_767_225_600_000);
        let shape = BlockShape {
            readings: 64,
            per_frame: 6,
            difficulty: 8,
        };
        let policy = VerifyPolicy {
            relay_id: 1,
            min_difficulty: 8,
        };
        let vk = test_relay_key().verifying_key();
        let mut prev = None;
        for height in 0..3u64 {
            let b = chain.next_block(shape).unwrap();
            let mut readings = 0;
            let v = verify_block(&RustCrypto, &b, &vk, &policy, &ring, |leaf| {
                readings += leaf.body.readings().count();
                Ok(())
            })
            .unwrap();
            assert_eq!(readings, 64);
            assert_eq!(v.header.height, height);
            gridpow_proto::block::check_link(&v.header, prev.as_ref().map(|(h, x)| (*h, x)))
                .unwrap();
            prev = Some((height, v.hash));
        }
    }
}
