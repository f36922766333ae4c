//! Binary provisioning blobs: what `espflash write-bin` puts into the
//! `gp_config` flash partition of a meter or a relay.
//!
//! Secrets and site settings never live in the firmware source or image: the
//! same image runs on every meter, and each board gets its own blob. The blob
//! is a fixed little-endian layout ending in a CRC-32 (IEEE, as zlib's), so a
//! blank (all `0xFF`) or half-written partition is refused rather than used.
//!
//! ## Meter blob (128 bytes, magic `GPWM`)
//!
//! ```text
//! offset size field
//! 0      4    magic "GPWM"
//! 4      1    layout version = 2
//! 5      1    flags: bit 0 relay MAC present; others 0
//! 6      2    blob length = 128 (u16)
//! 8      4    meter_id (u32)
//! 12     1    key_id
//! 13     1    channel 1–14 (the relay's radio channel)
//! 14     2    nominal line frequency in Hz (50 or 60)
//! 16     4    interval_s: seconds per reading, ≥ 1
//! 20     4    min_epoch: the boot epoch never goes below this (u32; see below)
//! 24     6    relay MAC (zeros when absent: broadcast until the first ACK)
//! 30     2    reserved = 0
//! 32     48   meter secret: hop secret (32) ‖ end-to-end key (16). SECRET
//! 80     4    voltage gain, V per ADC code (f32; 0 = firmware default)
//! 84     4    voltage noise offset, codes (f32)
//! 88     4    current gain, A per ADC code (f32; 0 = firmware default)
//! 92     4    current noise offset, codes (f32)
//! 96     4    phase correction, samples (f32; positive delays the voltage)
//! 100    4    active-power offset, codes² (f32)
//! 104    4    sample rate per channel, Hz (u32; 0 = firmware default 4000)
//! 108    4    energy checkpoint period, s (u32; 0 = firmware default 300)
//! 112    12   reserved = 0
//! 124    4    CRC-32 of bytes 0..124 (u32)
//! ```
//!
//! `min_epoch` protects nonce uniqueness when the state partition was erased
//! (for example by `espflash erase-flash`) but the meter keeps its key: the
//! key derives deterministically from the site secret and the meter id, so the
//! provisioning tool must then write a `min_epoch` above every epoch the
//! meter used (the relay's replay window knows the last one).
//!
//! ## Relay blob (magic `GPWR`)
//!
//! ```text
//! offset size field
//! 0      4    magic "GPWR"
//! 4      1    layout version = 3 (version 2 is still read: no TLS section)
//! 5      1    mode: 1 bridge, 2 standalone
//! 6      2    blob length (u16): 256 + 44·n + 4 in version 2,
//!             256 + 44·n + 8 + a + c + k + 4 in version 3
//! 8      4    relay_id (u32)
//! 12     1    channel 1–14 (the access point's channel in standalone mode)
//! 13     1    PoW difficulty (standalone)
//! 14     1    n: number of meter entries (standalone), ≤ MAX_RELAY_METERS
//! 15     1    flags: bit 0 require registered MACs; others 0
//! 16     32   Ed25519 signing key seed (standalone; zeros in bridge mode). SECRET
//! 48     32   grid server's Ed25519 public key (verifies commit receipts)
//! 80     4    block interval, s (u32; 0 = firmware default 10)
//! 84     2    MQTT broker port (u16; 0 = 8883)
//! 86     2    reserved = 0
//! 88     33   Wi-Fi SSID: length (1) ‖ 32 bytes
//! 121    65   Wi-Fi passphrase: length (1) ‖ 64 bytes. SECRET
//! 186    65   MQTT broker host name: length (1) ‖ 64 bytes (also the TLS
//!             server name the broker's certificate must carry)
//! 251    5    reserved = 0
//! 256    44·n meter entries: meter_id u32 ‖ key_id u8 ‖ flags u8 (bit 0 MAC
//!             present) ‖ MAC (6) ‖ the meter's hop secret (32); never its
//!             end-to-end key: the relay checks frames but cannot open or make readings.
//!             A meter is listed once per key id: twice during a site-secret
//!             rotation (protocol §3), and the relay takes its frames under both
//! t=256+44·n  TLS section (version 3 only):
//! t      2    a: site CA certificate length (u16; 0 = no TLS material)
//! t+2    2    c: the relay's client certificate length (u16)
//! t+4    2    k: the relay's client key length (u16)
//! t+6    2    reserved = 0
//! t+8    a    CA certificate, DER (X.509, starts with a SEQUENCE, 0x30)
//! ...    c    client certificate, DER
//! ...    k    client private key, DER (PKCS#8 or SEC1, P-256). SECRET
//! end    4    CRC-32 of everything before it
//! ```
//!
//! `a`, `c` and `k` are all zero (a relay that does not publish: bridge mode,
//! or standalone without a broker) or all non-zero. The whole blob must fit
//! the `gp_config` partition ([`MAX_RELAY_BLOB_LEN`]). With the P-256
//! certificates `gridpow keys` issues (CA 382 B, client certificate 330 B,
//! PKCS#8 key 138 B) 64 meters take 3 934 of the 4 096 bytes; larger
//! certificates leave room for fewer meters, and the encoder says so.

use gridpow_proto::crypto::{HopSecret, MeterSecret, METER_SECRET_LEN};
use gridpow_proto::wire::serial::crc32;
use gridpow_proto::MacAddr;

/// Why a blob was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlobError {
    /// The region is erased (all `0xFF`): nothing was flashed.
    Blank,
    /// The magic is not the expected one (a blob for the other device kind?).
    BadMagic,
    /// A layout version this firmware does not know.
    UnsupportedVersion(u8),
    /// The length field does not match the layout or the buffer.
    BadLength,
    /// The CRC does not match: a damaged or half-written blob.
    BadChecksum,
    /// A reserved byte or flag bit is not zero.
    NonZeroReserved,
    /// A field is out of range (which one, for the log).
    InvalidField(&'static str),
    /// The output buffer is too small.
    BufferTooSmall,
    /// The blob would not fit the `gp_config` partition (too many meters
    /// with the TLS material).
    TooLarge,
}

impl core::fmt::Display for BlobError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlobError::Blank => f.write_str("configuration region is blank"),
            BlobError::BadMagic => f.write_str("configuration magic does not match"),
            BlobError::UnsupportedVersion(v) => write!(f, "configuration layout {v} unknown"),
            BlobError::BadLength => f.write_str("configuration length is wrong"),
            BlobError::BadChecksum => f.write_str("configuration CRC does not match"),
            BlobError::NonZeroReserved => f.write_str("configuration reserved bytes are not zero"),
            BlobError::InvalidField(n) => write!(f, "configuration field {n} is out of range"),
            BlobError::BufferTooSmall => f.write_str("buffer too small for the configuration"),
            BlobError::TooLarge => write!(
                f,
                "configuration is larger than the {MAX_RELAY_BLOB_LEN}-byte partition"
            ),
        }
    }
}

/// Layout version of the meter blob.
pub const LAYOUT_VERSION: u8 = 2;
/// Layout version of the relay blob this firmware writes (it reads 2 and 3).
pub const RELAY_LAYOUT_VERSION: u8 = 3;
/// Magic of a meter blob.
pub const METER_MAGIC: [u8; 4] = *b"GPWM";
/// Magic of a relay blob.
pub const RELAY_MAGIC: [u8; 4] = *b"GPWR";
/// Length of a meter blob.
pub const METER_BLOB_LEN: usize = 128;
/// Fixed part of a relay blob.
pub const RELAY_HEADER_LEN: usize = 256;
/// One meter entry in a relay blob.
pub const RELAY_METER_ENTRY_LEN: usize = 44;
/// Most meters a relay blob lists (the blob then fills most of a 4 KiB sector).
pub const MAX_RELAY_METERS: usize = 64;
/// Fixed part of the TLS section of a version 3 relay blob.
pub const RELAY_TLS_HEADER_LEN: usize = 8;
/// Largest relay blob: the `gp_config` partition.
pub const MAX_RELAY_BLOB_LEN: usize = crate::layout::CONFIG_SIZE as usize;

/// How many meter entries a layout version 3 relay blob has room for beside
/// `tls_len` bytes of TLS material (CA, certificate and key, DER). A meter is
/// listed once per key id its hop keys are given under: twice while a site
/// secret is rotated (protocol §3), and the relay then takes its frames under both.
pub const fn relay_blob_meter_room(tls_len: usize) -> usize {
    let fixed = RELAY_HEADER_LEN + RELAY_TLS_HEADER_LEN + 4;
    let room = MAX_RELAY_BLOB_LEN.saturating_sub(fixed + tls_len) / RELAY_METER_ENTRY_LEN;
    if room < MAX_RELAY_METERS {
        room
    } else {
        MAX_RELAY_METERS
    }
}

/// Default sample rate per channel.
pub const DEFAULT_SAMPLE_RATE_HZ: u32 = 4000;
/// Default energy checkpoint period.
pub const DEFAULT_CHECKPOINT_S: u32 = 300;
/// Default voltage gain for the documented ZMPT101B wiring (V per code), used
/// until the meter is calibrated (`docs/hardware.md`).
pub const DEFAULT_VOLTAGE_GAIN: f32 = 0.397;
/// Default current gain for an ACS712-20A behind the documented 1:1 divider
/// (A per code), used until the meter is calibrated.
pub const DEFAULT_CURRENT_GAIN: f32 = 0.0122;

fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(get(b, at))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(get(b, at))
}
fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(get(b, at))
}

/// Checks blankness, magic, version, length and CRC of a blob occupying
/// `b[..len]` where `len` comes from the blob's length field.
fn check_envelope(
    b: &[u8],
    magic: [u8; 4],
    versions: &[u8],
    min_len: usize,
) -> Result<usize, BlobError> {
    if b.len() >= 8 && b[..8].iter().all(|&x| x == 0xff) {
        return Err(BlobError::Blank);
    }
    if b.get(0..4) != Some(&magic[..]) {
        return Err(BlobError::BadMagic);
    }
    if b.len() < min_len {
        return Err(BlobError::BadLength);
    }
    if !versions.contains(&b[4]) {
        return Err(BlobError::UnsupportedVersion(b[4]));
    }
    let len = usize::from(u16_at(b, 6));
    if len < min_len || len > b.len() {
        return Err(BlobError::BadLength);
    }
    let (body, crc) = b[..len].split_at(len - 4);
    if crc32(body).to_le_bytes() != crc {
        return Err(BlobError::BadChecksum);
    }
    Ok(len)
}

fn valid_channel(c: u8) -> bool {
    (1..=14).contains(&c)
}

/// Metering calibration as stored in the blob (zeros select defaults).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct StoredCalibration {
    /// V per code; 0 selects [`DEFAULT_VOLTAGE_GAIN`].
    pub voltage_gain: f32,
    /// Voltage noise offset, codes.
    pub voltage_offset_codes: f32,
    /// A per code; 0 selects [`DEFAULT_CURRENT_GAIN`].
    pub current_gain: f32,
    /// Current noise offset, codes.
    pub current_offset_codes: f32,
    /// Phase correction in samples (positive delays the voltage channel).
    pub phase_samples: f32,
    /// Active-power offset in codes².
    pub power_offset_codes: f32,
}

impl StoredCalibration {
    /// The metering crate's calibration, with defaults for zero gains.
    pub fn to_calibration(&self) -> gridpow_metering::Calibration {
        let or = |g: f32, d: f32| if g == 0.0 { d } else { g };
        gridpow_metering::Calibration {
            voltage: gridpow_metering::ChannelCalibration {
                gain: or(self.voltage_gain, DEFAULT_VOLTAGE_GAIN),
                offset_codes: self.voltage_offset_codes,
            },
            current: gridpow_metering::ChannelCalibration {
                gain: or(self.current_gain, DEFAULT_CURRENT_GAIN),
                offset_codes: self.current_offset_codes,
            },
            phase: gridpow_metering::PhaseCorrection::Samples(self.phase_samples),
            power_offset_codes: self.power_offset_codes,
        }
    }
}

/// A meter's configuration, decoded from its blob.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterConfig {
    /// Meter id.
    pub meter_id: u32,
    /// Key id of the meter secret.
    pub key_id: u8,
    /// Radio channel (1–14).
    pub channel: u8,
    /// Nominal line frequency, 50 or 60 Hz.
    pub nominal_hz: u16,
    /// Seconds per reading.
    pub interval_s: u32,
    /// Lowest boot epoch the meter may use.
    pub min_epoch: u32,
    /// The relay's MAC; `None` sends to broadcast until an ACK names the relay.
    pub relay_mac: Option<MacAddr>,
    /// The meter secret.
    pub secret: MeterSecret,
    /// Calibration.
    pub calibration: StoredCalibration,
    /// Samples per second per channel (0 = default).
    pub sample_rate_hz: u32,
    /// Energy checkpoint period in seconds (0 = default).
    pub checkpoint_s: u32,
}

impl MeterConfig {
    /// A configuration with defaults for everything but identity and key.
    pub fn new(
        meter_id: u32,
        key_id: u8,
        secret: MeterSecret,
        channel: u8,
        interval_s: u32,
    ) -> Self {
        MeterConfig {
            meter_id,
            key_id,
            channel,
            nominal_hz: 50,
            interval_s,
            min_epoch: 0,
            relay_mac: None,
            secret,
            calibration: StoredCalibration::default(),
            sample_rate_hz: 0,
            checkpoint_s: 0,
        }
    }

    /// The sample rate in use.
    pub fn effective_sample_rate_hz(&self) -> u32 {
        if self.sample_rate_hz == 0 {
            DEFAULT_SAMPLE_RATE_HZ
        } else {
            self.sample_rate_hz
        }
    }

    /// The energy checkpoint period in use.
    pub fn effective_checkpoint_s(&self) -> u32 {
        if self.checkpoint_s == 0 {
            DEFAULT_CHECKPOINT_S
        } else {
            self.checkpoint_s
        }
    }

    /// Decodes and validates a meter blob (extra bytes after it are ignored,
    /// so the whole partition can be passed).
    pub fn decode(b: &[u8]) -> Result<MeterConfig, BlobError> {
        let len = check_envelope(b, METER_MAGIC, &[LAYOUT_VERSION], METER_BLOB_LEN)?;
        if len != METER_BLOB_LEN {
            return Err(BlobError::BadLength);
        }
        let flags = b[5];
        if flags & !1 != 0 || b[30..32] != [0, 0] || b[112..124].iter().any(|&x| x != 0) {
            return Err(BlobError::NonZeroReserved);
        }
        let channel = b[13];
        if !valid_channel(channel) {
            return Err(BlobError::InvalidField("channel"));
        }
        let nominal_hz = u16_at(b, 14);
        if nominal_hz != 50 && nominal_hz != 60 {
            return Err(BlobError::InvalidField("nominal frequency"));
        }
        let interval_s = u32_at(b, 16);
        if interval_s == 0 {
            return Err(BlobError::InvalidField("interval"));
        }
        let calibration = StoredCalibration {
            voltage_gain: f32_at(b, 80),
            voltage_offset_codes: f32_at(b, 84),
            current_gain: f32_at(b, 88),
            current_offset_codes: f32_at(b, 92),
            phase_samples: f32_at(b, 96),
            power_offset_codes: f32_at(b, 100),
        };
        if calibration.to_calibration().validate().is_err() {
            return Err(BlobError::InvalidField("calibration"));
        }
        let sample_rate_hz = u32_at(b, 104);
        if sample_rate_hz != 0 && !(2000..=20_000).contains(&sample_rate_hz) {
            return Err(BlobError::InvalidField("sample rate"));
        }
        Ok(MeterConfig {
            meter_id: u32_at(b, 8),
            key_id: b[12],
            channel,
            nominal_hz,
            interval_s,
            min_epoch: u32_at(b, 20),
            relay_mac: (flags & 1 != 0).then(|| get(b, 24)),
            secret: MeterSecret::from_bytes(&get::<METER_SECRET_LEN>(b, 32)),
            calibration,
            sample_rate_hz,
            checkpoint_s: u32_at(b, 108),
        })
    }

    /// Encodes the blob.
    pub fn encode(&self) -> [u8; METER_BLOB_LEN] {
        let mut b = [0u8; METER_BLOB_LEN];
        b[0..4].copy_from_slice(&METER_MAGIC);
        b[4] = LAYOUT_VERSION;
        b[5] = u8::from(self.relay_mac.is_some());
        b[6..8].copy_from_slice(&(METER_BLOB_LEN as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.meter_id.to_le_bytes());
        b[12] = self.key_id;
        b[13] = self.channel;
        b[14..16].copy_from_slice(&self.nominal_hz.to_le_bytes());
        b[16..20].copy_from_slice(&self.interval_s.to_le_bytes());
        b[20..24].copy_from_slice(&self.min_epoch.to_le_bytes());
        b[24..30].copy_from_slice(&self.relay_mac.unwrap_or([0; 6]));
        b[32..80].copy_from_slice(&self.secret.to_bytes());
        let c = &self.calibration;
        let floats = [
            c.voltage_gain,
            c.voltage_offset_codes,
            c.current_gain,
            c.current_offset_codes,
            c.phase_samples,
            c.power_offset_codes,
        ];
        for (i, v) in floats.iter().enumerate() {
            b[80 + 4 * i..84 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[104..108].copy_from_slice(&self.sample_rate_hz.to_le_bytes());
        b[108..112].copy_from_slice(&self.checkpoint_s.to_le_bytes());
        let crc = crc32(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// What the relay firmware does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// ESP-NOW ⇄ USB-serial bridge to the Linux relay.
    Bridge = 1,
    /// Ingress, blocks, PoW and signing on the ESP32 itself.
    Standalone = 2,
}

/// A meter a standalone relay accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayMeter {
    /// Meter id.
    pub meter_id: u32,
    /// Key id.
    pub key_id: u8,
    /// Registered MAC, if any.
    pub mac: Option<MacAddr>,
    /// The meter's hop secret (never its end-to-end key).
    pub secret: HopSecret,
}

/// A short string field (SSID, passphrase, host name) stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortStr<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> ShortStr<N> {
    /// An empty string.
    pub const EMPTY: Self = ShortStr {
        len: 0,
        bytes: [0; N],
    };

    /// `s` if it fits.
    pub fn new(s: &str) -> Option<Self> {
        if s.len() > N {
            return None;
        }
        let mut bytes = [0u8; N];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(ShortStr {
            len: s.len() as u8,
            bytes,
        })
    }

    /// The text (empty if it is not UTF-8, which decoding refuses anyway).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    fn decode(b: &[u8], field: &'static str) -> Result<Self, BlobError> {
        let len = usize::from(b[0]);
        if len > N {
            return Err(BlobError::InvalidField(field));
        }
        let text = &b[1..1 + len];
        if core::str::from_utf8(text).is_err() || b[1 + len..1 + N].iter().any(|&x| x != 0) {
            return Err(BlobError::InvalidField(field));
        }
        let mut bytes = [0u8; N];
        bytes[..len].copy_from_slice(text);
        Ok(ShortStr { len: b[0], bytes })
    }

    fn encode(&self, out: &mut [u8]) {
        out[0] = self.len;
        out[1..1 + N].copy_from_slice(&self.bytes);
    }
}

impl<const N: usize> core::fmt::Debug for ShortStr<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A relay's configuration, decoded from its blob. Meter entries are read
/// with [`RelayConfig::meter`] straight from the blob bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    /// Bridge or standalone.
    pub mode: RelayMode,
    /// Relay id.
    pub relay_id: u32,
    /// Radio channel.
    pub channel: u8,
    /// PoW difficulty (standalone).
    pub difficulty: u8,
    /// Refuse frames from MACs not registered.
    pub require_registered_mac: bool,
    /// Ed25519 signing key seed (standalone).
    pub signing_seed: [u8; 32],
    /// The grid server's receipt key.
    pub server_public_key: [u8; 32],
    /// Seconds between blocks (0 = default).
    pub block_interval_s: u32,
    /// MQTT broker port (0 = 8883).
    pub broker_port: u16,
    /// Wi-Fi SSID.
    pub wifi_ssid: ShortStr<32>,
    /// Wi-Fi passphrase.
    pub wifi_password: ShortStr<64>,
    /// MQTT broker host.
    pub broker_host: ShortStr<64>,
    /// Number of meter entries.
    pub meter_count: usize,
    /// Where the TLS material lies in the blob (version 3 with a TLS
    /// section); read it with [`RelayConfig::tls`].
    pub tls: Option<TlsLens>,
}

/// Lengths of the DER items of a relay blob's TLS section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsLens {
    /// CA certificate.
    pub ca: u16,
    /// Client certificate.
    pub cert: u16,
    /// Client private key.
    pub key: u16,
}

/// The relay's TLS material, borrowed from its blob (or, when encoding, from
/// the caller): everything `gridpow-relay-net` needs besides the host name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RelayTls<'a> {
    /// The site CA's certificate (DER): the broker's chain must end here.
    pub ca_der: &'a [u8],
    /// The relay's client certificate (DER).
    pub cert_der: &'a [u8],
    /// The relay's private key (DER, PKCS#8 or SEC1).
    pub key_der: &'a [u8],
}

impl core::fmt::Debug for RelayTls<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The key is a secret: lengths only.
        f.debug_struct("RelayTls")
            .field("ca_der", &self.ca_der.len())
            .field("cert_der", &self.cert_der.len())
            .field("key_der", &self.key_der.len())
            .finish()
    }
}

/// A DER item must be a SEQUENCE: catches a PEM file or a swapped argument.
fn is_der_sequence(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x30
}

impl RelayConfig {
    /// A bridge-mode configuration.
    pub fn bridge(relay_id: u32, channel: u8) -> Self {
        RelayConfig {
            mode: RelayMode::Bridge,
            relay_id,
            channel,
            difficulty: 0,
            require_registered_mac: false,
            signing_seed: [0; 32],
            server_public_key: [0; 32],
            block_interval_s: 0,
            broker_port: 0,
            wifi_ssid: ShortStr::EMPTY,
            wifi_password: ShortStr::EMPTY,
            broker_host: ShortStr::EMPTY,
            meter_count: 0,
            tls: None,
        }
    }

    /// Seconds between blocks in use.
    pub fn effective_block_interval_s(&self) -> u32 {
        if self.block_interval_s == 0 {
            10
        } else {
            self.block_interval_s
        }
    }

    /// Decodes and validates a relay blob, layout version 2 or 3 (trailing
    /// bytes are ignored, so the whole partition can be passed).
    pub fn decode(b: &[u8]) -> Result<RelayConfig, BlobError> {
        let len = check_envelope(
            b,
            RELAY_MAGIC,
            &[2, RELAY_LAYOUT_VERSION],
            RELAY_HEADER_LEN + 4,
        )?;
        let n = usize::from(b[14]);
        let meters_end = RELAY_HEADER_LEN + n * RELAY_METER_ENTRY_LEN;
        if n > MAX_RELAY_METERS || len > MAX_RELAY_BLOB_LEN {
            return Err(BlobError::BadLength);
        }
        let tls = if b[4] == 2 {
            if len != meters_end + 4 {
                return Err(BlobError::BadLength);
            }
            None
        } else {
            Self::decode_tls(&b[..len], meters_end)?
        };
        let mode = match b[5] {
            1 => RelayMode::Bridge,
            2 => RelayMode::Standalone,
            _ => return Err(BlobError::InvalidField("mode")),
        };
        if b[15] & !1 != 0 || b[86..88] != [0, 0] || b[251..256].iter().any(|&x| x != 0) {
            return Err(BlobError::NonZeroReserved);
        }
        let channel = b[12];
        if !valid_channel(channel) {
            return Err(BlobError::InvalidField("channel"));
        }
        for i in 0..n {
            let e = RELAY_HEADER_LEN + i * RELAY_METER_ENTRY_LEN;
            if b[e + 5] & !1 != 0 {
                return Err(BlobError::NonZeroReserved);
            }
        }
        Ok(RelayConfig {
            mode,
            relay_id: u32_at(b, 8),
            channel,
            difficulty: b[13],
            require_registered_mac: b[15] & 1 != 0,
            signing_seed: get(b, 16),
            server_public_key: get(b, 48),
            block_interval_s: u32_at(b, 80),
            broker_port: u16_at(b, 84),
            wifi_ssid: ShortStr::decode(&b[88..121], "wifi ssid")?,
            wifi_password: ShortStr::decode(&b[121..186], "wifi password")?,
            broker_host: ShortStr::decode(&b[186..251], "broker host")?,
            meter_count: n,
            tls,
        })
    }

    /// The TLS section of a version 3 blob `b` (exactly the blob's length)
    /// starting at `at`.
    fn decode_tls(b: &[u8], at: usize) -> Result<Option<TlsLens>, BlobError> {
        let head = b
            .get(at..at + RELAY_TLS_HEADER_LEN)
            .ok_or(BlobError::BadLength)?;
        let lens = TlsLens {
            ca: u16_at(head, 0),
            cert: u16_at(head, 2),
            key: u16_at(head, 4),
        };
        if head[6..8] != [0, 0] {
            return Err(BlobError::NonZeroReserved);
        }
        let total = usize::from(lens.ca) + usize::from(lens.cert) + usize::from(lens.key);
        if at + RELAY_TLS_HEADER_LEN + total + 4 != b.len() {
            return Err(BlobError::BadLength);
        }
        if total == 0 {
            return Ok(None);
        }
        let tls = tls_slices(b, at, lens);
        check_tls(&tls)?;
        Ok(Some(lens))
    }

    /// The TLS material of a blob that [`RelayConfig::decode`] accepted.
    pub fn tls<'b>(&self, blob: &'b [u8]) -> Option<RelayTls<'b>> {
        let lens = self.tls?;
        let at = RELAY_HEADER_LEN + self.meter_count * RELAY_METER_ENTRY_LEN;
        let end = at
            + RELAY_TLS_HEADER_LEN
            + usize::from(lens.ca)
            + usize::from(lens.cert)
            + usize::from(lens.key);
        if blob.len() < end {
            return None;
        }
        Some(tls_slices(blob, at, lens))
    }

    /// Meter entry `i` of a blob that [`RelayConfig::decode`] accepted.
    pub fn meter(&self, blob: &[u8], i: usize) -> Option<RelayMeter> {
        if i >= self.meter_count {
            return None;
        }
        let e = RELAY_HEADER_LEN + i * RELAY_METER_ENTRY_LEN;
        let b = blob.get(e..e + RELAY_METER_ENTRY_LEN)?;
        Some(RelayMeter {
            meter_id: u32_at(b, 0),
            key_id: b[4],
            mac: (b[5] & 1 != 0).then(|| get(b, 6)),
            secret: HopSecret(get(b, 12)),
        })
    }

    /// Encodes the blob (layout version 3) with `meters` and no TLS material
    /// into `out`; returns its length.
    pub fn encode_into(&self, meters: &[RelayMeter], out: &mut [u8]) -> Result<usize, BlobError> {
        self.encode_with_tls(meters, None, out)
    }

    /// Encodes the blob (layout version 3) with `meters` and the relay's TLS
    /// material into `out`; returns its length. `self.tls` is ignored (it
    /// describes a decoded blob).
    pub fn encode_with_tls(
        &self,
        meters: &[RelayMeter],
        tls: Option<&RelayTls<'_>>,
        out: &mut [u8],
    ) -> Result<usize, BlobError> {
        if meters.len() > MAX_RELAY_METERS {
            return Err(BlobError::InvalidField("meter count"));
        }
        let empty = RelayTls {
            ca_der: &[],
            cert_der: &[],
            key_der: &[],
        };
        let tls = tls.unwrap_or(&empty);
        let total = tls.ca_der.len() + tls.cert_der.len() + tls.key_der.len();
        if total != 0 {
            check_tls(tls)?;
        }
        let item_len =
            |b: &[u8], name| u16::try_from(b.len()).map_err(|_| BlobError::InvalidField(name));
        let lens = [
            item_len(tls.ca_der, "ca certificate")?,
            item_len(tls.cert_der, "client certificate")?,
            item_len(tls.key_der, "client key")?,
        ];
        let at = RELAY_HEADER_LEN + meters.len() * RELAY_METER_ENTRY_LEN;
        let len = at + RELAY_TLS_HEADER_LEN + total + 4;
        if len > MAX_RELAY_BLOB_LEN {
            return Err(BlobError::TooLarge);
        }
        let b = out.get_mut(..len).ok_or(BlobError::BufferTooSmall)?;
        b.fill(0);
        b[0..4].copy_from_slice(&RELAY_MAGIC);
        b[4] = RELAY_LAYOUT_VERSION;
        b[5] = self.mode as u8;
        b[6..8].copy_from_slice(&(len as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.relay_id.to_le_bytes());
        b[12] = self.channel;
        b[13] = self.difficulty;
        b[14] = meters.len() as u8;
        b[15] = u8::from(self.require_registered_mac);
        b[16..48].copy_from_slice(&self.signing_seed);
        b[48..80].copy_from_slice(&self.server_public_key);
        b[80..84].copy_from_slice(&self.block_interval_s.to_le_bytes());
        b[84..86].copy_from_slice(&self.broker_port.to_le_bytes());
        self.wifi_ssid.encode(&mut b[88..121]);
        self.wifi_password.encode(&mut b[121..186]);
        self.broker_host.encode(&mut b[186..251]);
        for (i, m) in meters.iter().enumerate() {
            let e = RELAY_HEADER_LEN + i * RELAY_METER_ENTRY_LEN;
            b[e..e + 4].copy_from_slice(&m.meter_id.to_le_bytes());
            b[e + 4] = m.key_id;
            b[e + 5] = u8::from(m.mac.is_some());
            b[e + 6..e + 12].copy_from_slice(&m.mac.unwrap_or([0; 6]));
            b[e + 12..e + 44].copy_from_slice(&m.secret.0);
        }
        for (i, l) in lens.iter().enumerate() {
            b[at + 2 * i..at + 2 * i + 2].copy_from_slice(&l.to_le_bytes());
        }
        let mut p = at + RELAY_TLS_HEADER_LEN;
        for item in [tls.ca_der, tls.cert_der, tls.key_der] {
            b[p..p + item.len()].copy_from_slice(item);
            p += item.len();
        }
        let crc = crc32(&b[..len - 4]);
        b[len - 4..len].copy_from_slice(&crc.to_le_bytes());
        Ok(len)
    }
}

/// The three DER items after the TLS header at `at` (lengths already checked).
fn tls_slices(b: &[u8], at: usize, lens: TlsLens) -> RelayTls<'_> {
    let ca = at + RELAY_TLS_HEADER_LEN;
    let cert = ca + usize::from(lens.ca);
    let key = cert + usize::from(lens.cert);
    RelayTls {
        ca_der: &b[ca..cert],
        cert_der: &b[cert..key],
        key_der: &b[key..key + usize::from(lens.key)],
    }
}

/// All three items present and each a DER SEQUENCE.
fn check_tls(t: &RelayTls<'_>) -> Result<(), BlobError> {
    for (item, name) in [
        (t.ca_der, "ca certificate"),
        (t.cert_der, "client certificate"),
        (t.key_der, "client key"),
    ] {
        if !is_der_sequence(item) {
            return Err(BlobError::InvalidField(name));
        }
    }
    Ok(())
}

/// Host side (`std` feature): the blob `gridpow keys add-meter` should write
/// next to `meters/<id>.toml`, for `espflash write-bin 0x150000 <id>.bin`
/// ([`crate::layout::CONFIG_OFFSET`]).
#[cfg(feature = "std")]
pub fn encode_provisioning(config: &MeterConfig) -> std::vec::Vec<u8> {
    config.encode().to_vec()
}

/// Host side (`std` feature): a relay blob, with the relay's TLS material
/// when it publishes (standalone mode).
#[cfg(feature = "std")]
pub fn encode_relay_provisioning(
    config: &RelayConfig,
    meters: &[RelayMeter],
    tls: Option<&RelayTls<'_>>,
) -> Result<std::vec::Vec<u8>, BlobError> {
    let mut out = std::vec![0u8; MAX_RELAY_BLOB_LEN];
    let n = config.encode_with_tls(meters, tls, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> MeterConfig {
        let mut c = MeterConfig::new(4242, 1, MeterSecret::from_bytes(&[7; 48]), 6, 10);
        c.relay_mac = Some([0x24, 0x6f, 0x28, 1, 2, 3]);
        c.calibration.voltage_gain = 0.25;
        c.min_epoch = 9;
        c
    }

    #[test]
    fn meter_blob_round_trips() {
        let c = meter();
        assert_eq!(MeterConfig::decode(&c.encode()), Ok(c));
    }

    /// A known-answer blob, so a second encoder (the CLI, a Python tool) can
    /// check itself byte for byte.
    #[test]
    fn meter_blob_matches_the_golden_bytes() {
        let secret = "214c0539eb95d2e33a609cdb21b27047872ecbe6d44e3249051690591236615b\
                      00112233445566778899aabbccddeeff";
        let mut s = [0u8; 48];
        for (i, b) in s.iter_mut().enumerate() {
            *b = u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap();
        }
        let mut c = MeterConfig::new(42, 1, MeterSecret::from_bytes(&s), 6, 10);
        c.calibration.voltage_gain = 0.33;
        let golden = "4750574d020080002a000000010632000a000000000000000000000000000000\
                      214c0539eb95d2e33a609cdb21b27047872ecbe6d44e3249051690591236615b\
                      00112233445566778899aabbccddeeffc3f5a83e000000000000000000000000\
                      0000000000000000000000000000000000000000000000000000000004308461";
        let mut hex = [0u8; 2 * METER_BLOB_LEN];
        for (i, b) in c.encode().iter().enumerate() {
            let d = b"0123456789abcdef";
            hex[2 * i] = d[usize::from(b >> 4)];
            hex[2 * i + 1] = d[usize::from(b & 15)];
        }
        assert_eq!(core::str::from_utf8(&hex).unwrap(), golden);
    }

    #[test]
    fn every_flipped_byte_of_a_meter_blob_is_refused() {
        let b = meter().encode();
        for i in 0..b.len() {
            let mut t = b;
            t[i] ^= 0x10;
            assert!(MeterConfig::decode(&t).is_err(), "byte {i}");
        }
    }

    #[test]
    fn blank_region_is_reported_as_blank() {
        assert_eq!(MeterConfig::decode(&[0xff; 4096]), Err(BlobError::Blank));
        assert_eq!(RelayConfig::decode(&[0xff; 4096]), Err(BlobError::Blank));
    }

    #[test]
    fn meter_blob_with_trailing_erased_flash_decodes() {
        let mut region = [0xffu8; 4096];
        region[..METER_BLOB_LEN].copy_from_slice(&meter().encode());
        assert_eq!(MeterConfig::decode(&region), Ok(meter()));
    }

    #[test]
    fn relay_blob_round_trips_with_meters() {
        let mut c = RelayConfig::bridge(3, 11);
        c.mode = RelayMode::Standalone;
        c.difficulty = 16;
        c.wifi_ssid = ShortStr::new("site-ap").unwrap();
        c.broker_host = ShortStr::new("broker.example").unwrap();
        let meters = [
            RelayMeter {
                meter_id: 1,
                key_id: 1,
                mac: None,
                secret: HopSecret([1; 32]),
            },
            RelayMeter {
                meter_id: 2,
                key_id: 1,
                mac: Some([2; 6]),
                secret: HopSecret([2; 32]),
            },
        ];
        let mut buf = [0u8; MAX_RELAY_BLOB_LEN];
        let n = c.encode_into(&meters, &mut buf).unwrap();
        c.meter_count = 2;
        let d = RelayConfig::decode(&buf[..n]).unwrap();
        assert_eq!(d, c);
        assert_eq!(d.meter(&buf, 1), Some(meters[1].clone()));
        assert_eq!(d.meter(&buf, 2), None);
        buf[n - 1] ^= 1;
        assert_eq!(RelayConfig::decode(&buf[..n]), Err(BlobError::BadChecksum));
    }

    #[test]
    fn a_meter_blob_is_not_a_relay_blob() {
        assert_eq!(
            RelayConfig::decode(&meter().encode()),
            Err(BlobError::BadMagic)
        );
    }

    fn encode_blob(
        c: &RelayConfig,
        meters: &[RelayMeter],
        tls: Option<&RelayTls<'_>>,
    ) -> Result<std::vec::Vec<u8>, BlobError> {
        let mut out = std::vec![0u8; MAX_RELAY_BLOB_LEN];
        let n = c.encode_with_tls(meters, tls, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    fn der(tag: u8, len: usize) -> std::vec::Vec<u8> {
        let mut v = std::vec![tag; len];
        v[0] = 0x30;
        v
    }

    fn standalone() -> (RelayConfig, [RelayMeter; 1]) {
        let mut c = RelayConfig::bridge(9, 6);
        c.mode = RelayMode::Standalone;
        c.wifi_ssid = ShortStr::new("site-ap").unwrap();
        c.wifi_password = ShortStr::new("correct horse").unwrap();
        c.broker_host = ShortStr::new("broker.site.example").unwrap();
        c.broker_port = 8883;
        let m = RelayMeter {
            meter_id: 1,
            key_id: 1,
            mac: None,
            secret: HopSecret([1; 32]),
        };
        (c, [m])
    }

    #[test]
    fn relay_blob_with_tls_round_trips_and_hands_back_the_der() {
        let (c, meters) = standalone();
        let (ca, cert, key) = (der(1, 420), der(2, 470), der(3, 138));
        let tls = RelayTls {
            ca_der: &ca,
            cert_der: &cert,
            key_der: &key,
        };
        let blob = encode_blob(&c, &meters, Some(&tls)).unwrap();
        assert_eq!(blob.len(), 256 + 44 + 8 + 420 + 470 + 138 + 4);
        assert_eq!(blob[4], 3);
        let mut region = std::vec![0xffu8; MAX_RELAY_BLOB_LEN];
        region[..blob.len()].copy_from_slice(&blob);
        let d = RelayConfig::decode(&region).unwrap();
        assert_eq!(
            d.tls,
            Some(TlsLens {
                ca: 420,
                cert: 470,
                key: 138
            })
        );
        assert_eq!(d.tls(&region), Some(tls));
        assert_eq!(d.meter(&region, 0), Some(meters[0].clone()));
        assert_eq!(d.broker_host.as_str(), "broker.site.example");
        assert_eq!(d.wifi_password.as_str(), "correct horse");
    }

    #[test]
    fn every_flipped_byte_of_a_relay_blob_with_tls_is_refused() {
        let (c, meters) = standalone();
        let (ca, cert, key) = (der(1, 40), der(2, 50), der(3, 30));
        let tls = RelayTls {
            ca_der: &ca,
            cert_der: &cert,
            key_der: &key,
        };
        let blob = encode_blob(&c, &meters, Some(&tls)).unwrap();
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x10;
            assert!(RelayConfig::decode(&t).is_err(), "byte {i}");
        }
    }

    #[test]
    fn version_2_relay_blob_without_tls_section_still_decodes() {
        let (c, meters) = standalone();
        let v3 = encode_blob(&c, &meters, None).unwrap();
        // Version 2: the same bytes without the (empty) TLS header.
        let mut v2 = v3[..v3.len() - 4 - RELAY_TLS_HEADER_LEN].to_vec();
        v2[4] = 2;
        let len = (v2.len() + 4) as u16;
        v2[6..8].copy_from_slice(&len.to_le_bytes());
        let crc = crc32(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        let d2 = RelayConfig::decode(&v2).unwrap();
        let d3 = RelayConfig::decode(&v3).unwrap();
        assert_eq!(d2, d3);
        assert_eq!(d2.tls, None);
    }

    #[test]
    fn relay_blob_too_large_for_the_partition_is_refused() {
        let (c, _) = standalone();
        let meters: std::vec::Vec<RelayMeter> = (0..MAX_RELAY_METERS as u32)
            .map(|id| RelayMeter {
                meter_id: id,
                key_id: 1,
                mac: None,
                secret: HopSecret([7; 32]),
            })
            .collect();
        let (ca, cert, key) = (der(1, 500), der(2, 500), der(3, 138));
        let tls = RelayTls {
            ca_der: &ca,
            cert_der: &cert,
            key_der: &key,
        };
        assert_eq!(
            encode_blob(&c, &meters, Some(&tls)),
            Err(BlobError::TooLarge)
        );
        // Without the TLS material the same meters fit.
        assert!(encode_blob(&c, &meters, None).is_ok());
        // The room left beside the TLS material is exactly what encodes.
        let room = relay_blob_meter_room(1138);
        assert!(room < MAX_RELAY_METERS);
        assert!(encode_blob(&c, &meters[..room], Some(&tls)).is_ok());
        assert_eq!(
            encode_blob(&c, &meters[..room + 1], Some(&tls)),
            Err(BlobError::TooLarge)
        );
        assert_eq!(relay_blob_meter_room(0), MAX_RELAY_METERS);
    }

    #[test]
    fn partial_or_non_der_tls_material_is_refused() {
        let (c, meters) = standalone();
        let (ca, cert) = (der(1, 40), der(2, 50));
        let no_key = RelayTls {
            ca_der: &ca,
            cert_der: &cert,
            key_der: &[],
        };
        assert_eq!(
            encode_blob(&c, &meters, Some(&no_key)),
            Err(BlobError::InvalidField("client key"))
        );
        let pem = b"-----BEGIN CERTIFICATE-----";
        let pem_ca = RelayTls {
            ca_der: pem,
            cert_der: &cert,
            key_der: &cert,
        };
        assert_eq!(
            encode_blob(&c, &meters, Some(&pem_ca)),
            Err(BlobError::InvalidField("ca certificate"))
        );
    }

    /// A known-answer relay blob (layout 3 with a TLS section), so a second
    /// encoder can check itself byte for byte.
    #[test]
    fn relay_blob_matches_the_golden_bytes() {
        let mut c = RelayConfig::bridge(1, 6);
        c.mode = RelayMode::Standalone;
        c.difficulty = 16;
        c.signing_seed = [1; 32];
        c.server_public_key = [2; 32];
        c.wifi_ssid = ShortStr::new("ap").unwrap();
        c.wifi_password = ShortStr::new("password1").unwrap();
        c.broker_host = ShortStr::new("b.example").unwrap();
        c.broker_port = 8883;
        let m = RelayMeter {
            meter_id: 42,
            key_id: 1,
            mac: Some([2, 0, 0, 0, 0, 42]),
            secret: HopSecret([3; 32]),
        };
        let tls = RelayTls {
            ca_der: &[0x30, 0x01, 0xaa],
            cert_der: &[0x30, 0x01, 0xbb],
            key_der: &[0x30, 0x01, 0xcc],
        };
        let blob = encode_blob(&c, &[m], Some(&tls)).unwrap();
        let hex: std::string::String = blob.iter().map(|b| std::format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_RELAY_BLOB);
    }

    const GOLDEN_RELAY_BLOB: &str =
        "4750575203024101010000000610010001010101010101010101010101010101\
        0101010101010101010101010101010102020202020202020202020202020202\
        0202020202020202020202020202020200000000b32200000261700000000000\
        000000000000000000000000000000000000000000000000000970617373776f\
        7264310000000000000000000000000000000000000000000000000000000000\
        000000000000000000000000000000000000000000000000000009622e657861\
        6d706c6500000000000000000000000000000000000000000000000000000000\
        0000000000000000000000000000000000000000000000000000000000000000\
        2a000000010102000000002a0303030303030303030303030303030303030303\
        03030303030303030303030303000300030000003001aa3001bb3001cc83bc43\
        46";
}
