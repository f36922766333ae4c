//! The few fields of an X.509 certificate the verifier reads itself: validity
//! dates and the names (subject alternative names, common name). embedded-tls
//! checks the chain's signatures; it reports every certificate problem as one
//! `InvalidCertificate`, so dates and names are checked here to tell them apart.
//!
//! The broker's certificate is untrusted input until the chain is verified.
//! It is decoded with the `der` crate (0.8, the version embedded-tls decodes
//! certificates with), without allocation: the fields we do not read stay
//! borrowed slices, and the subject alternative names, walked again for each
//! name check, are all decoded once in [`CertInfo::parse`], so a later walk
//! cannot fail.

use core::net::Ipv4Addr;

use der::asn1::{
    AnyRef, BitStringRef, GeneralizedTime, ObjectIdentifier, OctetStringRef, SequenceRef, UtcTime,
};
use der::{Choice, Decode, DecodeValue, Reader, Sequence, SliceReader, Tag, TagNumber, Tagged};

/// 2.5.4.3 (commonName).
const OID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// 2.5.29.17 (subjectAltName).
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// 2.5.29.37 (extKeyUsage), 1.3.6.1.5.5.7.3.1 (serverAuth), 2.5.29.37.0 (any).
const OID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
const OID_ANY_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
/// GeneralName `[2]` dNSName and `[7]` iPAddress (IMPLICIT, so primitive).
const SAN_DNS: Tag = Tag::ContextSpecific {
    constructed: false,
    number: TagNumber(2),
};
const SAN_IP: Tag = Tag::ContextSpecific {
    constructed: false,
    number: TagNumber(7),
};

// The structures derive only `DecodeValue` and mark themselves `Sequence`
// (which gives them `Decode`): `derive(Sequence)` would add encoders too,
// which we do not need and which `&SequenceRef` lacks in der 0.8.

/// RFC 5280 `Certificate`.
#[derive(DecodeValue)]
struct Certificate<'a> {
    tbs_certificate: TbsCertificate<'a>,
    _signature_algorithm: &'a SequenceRef,
    _signature: BitStringRef<'a>,
}
impl<'a> Sequence<'a> for Certificate<'a> {}

/// RFC 5280 `TBSCertificate`. The fields we do not read (`_`) stay undecoded
/// where their type allows.
#[derive(DecodeValue)]
struct TbsCertificate<'a> {
    #[asn1(context_specific = "0", optional = "true")]
    _version: Option<AnyRef<'a>>,
    _serial_number: AnyRef<'a>,
    _signature: &'a SequenceRef,
    _issuer: &'a SequenceRef,
    validity: Validity,
    /// A Name: SEQUENCE OF RelativeDistinguishedName.
    subject: &'a SequenceRef,
    _subject_public_key_info: &'a SequenceRef,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    _issuer_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    _subject_unique_id: Option<BitStringRef<'a>>,
    /// Extensions: SEQUENCE OF Extension.
    #[asn1(context_specific = "3", optional = "true")]
    extensions: Option<&'a SequenceRef>,
}
impl<'a> Sequence<'a> for TbsCertificate<'a> {}

#[derive(DecodeValue)]
struct Validity {
    not_before: Time,
    not_after: Time,
}
impl Sequence<'_> for Validity {}

/// RFC 5280 `Time`: UTCTime until 2049, GeneralizedTime after.
#[derive(Choice)]
enum Time {
    #[asn1(type = "UTCTime")]
    Utc(UtcTime),
    #[asn1(type = "GeneralizedTime")]
    General(GeneralizedTime),
}

impl Time {
    fn unix_seconds(&self) -> u64 {
        match self {
            Time::Utc(t) => t.to_unix_duration().as_secs(),
            Time::General(t) => t.to_unix_duration().as_secs(),
        }
    }
}

#[derive(DecodeValue)]
struct Extension<'a> {
    extn_id: ObjectIdentifier,
    /// DEFAULT FALSE, which DER omits; `Option` also accepts an explicit
    /// FALSE, as embedded-tls does.
    #[asn1(optional = "true")]
    _critical: Option<bool>,
    extn_value: &'a OctetStringRef,
}
impl<'a> Sequence<'a> for Extension<'a> {}

#[derive(DecodeValue)]
struct AttributeTypeAndValue<'a> {
    oid: ObjectIdentifier,
    value: AnyRef<'a>,
}
impl<'a> Sequence<'a> for AttributeTypeAndValue<'a> {}

/// What the verifier needs from one certificate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CertInfo<'a> {
    /// Validity start and end, Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
    /// The contents of the subjectAltName extension (GeneralNames, each
    /// checked to decode), if there is one.
    san: Option<&'a [u8]>,
    /// No extendedKeyUsage, or one listing serverAuth or anyExtendedKeyUsage.
    server_auth: bool,
    /// The subject's first common name, if any.
    pub common_name: Option<&'a [u8]>,
}

impl<'a> CertInfo<'a> {
    /// Reads a DER certificate; `None` if it is not one.
    pub fn parse(der: &'a [u8]) -> Option<Self> {
        Self::read(der).ok()
    }

    fn read(der: &'a [u8]) -> der::Result<Self> {
        let tbs = Certificate::from_der(der)?.tbs_certificate;
        let (mut san, mut eku) = (None, None);
        if let Some(extensions) = tbs.extensions {
            for ext in elements::<Extension<'a>>(extensions.as_bytes()) {
                let ext = ext?;
                // The first of each counts (RFC 5280 allows one).
                if ext.extn_id == OID_SAN && san.is_none() {
                    san = Some(ext.extn_value.decode_into::<&SequenceRef>()?.as_bytes());
                } else if ext.extn_id == OID_EKU && eku.is_none() {
                    eku = Some(ext.extn_value.decode_into::<&SequenceRef>()?.as_bytes());
                }
            }
        }
        if let Some(names) = san {
            for name in elements::<AnyRef<'a>>(names) {
                name?;
            }
        }
        let server_auth = match eku {
            None => true,
            Some(purposes) => {
                let mut allowed = false;
                for oid in elements::<ObjectIdentifier>(purposes) {
                    let oid = oid?;
                    allowed |= oid == OID_SERVER_AUTH || oid == OID_ANY_EKU;
                }
                allowed
            }
        };
        Ok(CertInfo {
            not_before: tbs.validity.not_before.unix_seconds(),
            not_after: tbs.validity.not_after.unix_seconds(),
            san,
            server_auth,
            common_name: first_cn(tbs.subject)?,
        })
    }

    /// Whether the certificate may authenticate a TLS server: no extended key
    /// usage, or one that lists serverAuth (site client certificates list
    /// only clientAuth).
    pub fn allows_server_auth(&self) -> bool {
        self.server_auth
    }

    /// The subject alternative names: (tag, contents). `parse` decoded them
    /// all, so none is dropped here.
    fn alt_names(&self) -> impl Iterator<Item = (Tag, &'a [u8])> {
        elements::<AnyRef<'a>>(self.san.unwrap_or_default())
            .map_while(Result::ok)
            .map(|name| (name.tag(), name.value()))
    }

    /// Whether the certificate names `host` (a DNS name or an IPv4 literal),
    /// by RFC 6125: the subject alternative names when there are any, the
    /// common name only when there are none. Exact, case-insensitive; no
    /// wildcards (the site CA issues exact names).
    pub fn names(&self, host: &str) -> bool {
        let ip = parse_ipv4(host);
        match self.san {
            Some(_) => self.alt_names().any(|(tag, value)| match ip {
                Some(ip) => tag == SAN_IP && value == ip,
                None => tag == SAN_DNS && value.eq_ignore_ascii_case(host.as_bytes()),
            }),
            None => self
                .common_name
                .is_some_and(|cn| cn.eq_ignore_ascii_case(host.as_bytes())),
        }
    }

    /// A DNS name the certificate carries (first dNSName, else the common
    /// name), to hand to embedded-tls's own name check.
    pub fn any_dns_name(&self) -> Option<&'a [u8]> {
        self.alt_names()
            .find_map(|(tag, value)| (tag == SAN_DNS).then_some(value))
    }

    /// Whether the certificate has a dNSName or a common name (embedded-tls
    /// requires a name to match when either is present).
    pub fn has_dns_name_or_cn(&self) -> bool {
        self.any_dns_name().is_some() || self.common_name.is_some()
    }
}

/// The elements of a SEQUENCE OF or SET OF, given its contents; nothing
/// more after an error.
fn elements<'a, T>(contents: &'a [u8]) -> impl Iterator<Item = der::Result<T>> + use<'a, T>
where
    T: Decode<'a, Error = der::Error>,
{
    let mut reader = Some(SliceReader::new(contents));
    core::iter::from_fn(move || {
        let item = match reader.as_mut()? {
            Ok(r) if r.is_finished() => return None,
            Ok(r) => T::decode(r),
            Err(e) => Err(*e),
        };
        if item.is_err() {
            reader = None;
        }
        Some(item)
    })
}

/// The value of the first commonName in a Name (SEQUENCE OF SET OF
/// AttributeTypeAndValue), whatever its string type.
fn first_cn(name: &SequenceRef) -> der::Result<Option<&[u8]>> {
    let mut cn = None;
    for rdn in elements::<AnyRef<'_>>(name.as_bytes()) {
        let rdn = rdn?;
        rdn.tag().assert_eq(Tag::Set)?;
        for atv in elements::<AttributeTypeAndValue<'_>>(rdn.value()) {
            let atv = atv?;
            if atv.oid == OID_CN && cn.is_none() {
                cn = Some(atv.value.value());
            }
        }
    }
    Ok(cn)
}

/// An IPv4 literal's octets (core's parser: four decimal octets, no leading
/// zeros), `None` for a DNS name.
fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    s.parse::<Ipv4Addr>().ok().map(|ip| ip.octets())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;

    /// A validity time given as its tag and contents, in Unix seconds.
    fn parse_time(tag: u8, contents: &[u8]) -> Option<u64> {
        let mut der = vec![tag, u8::try_from(contents.len()).expect("short")];
        der.extend_from_slice(contents);
        Time::from_der(&der).ok().map(|t| t.unix_seconds())
    }

    #[test]
    fn times_convert_to_unix_seconds() {
        assert_eq!(parse_time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(UTC_TIME, b"000301000000Z"), Some(951_868_800));
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20261129152000Z"),
            Some(1_795_965_600)
        );
        assert_eq!(parse_time(UTC_TIME, b"261129152000"), None);
        assert_eq!(parse_time(UTC_TIME, b"26113015200Z0"), None);
    }

    #[test]
    fn ipv4_literals_are_recognised_and_names_are_not() {
        assert_eq!(parse_ipv4("127.0.0.1"), Some([127, 0, 0, 1]));
        assert_eq!(parse_ipv4("localhost"), None);
        assert_eq!(parse_ipv4("1.2.3"), None);
        assert_eq!(parse_ipv4("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4("256.1.1.1"), None);
    }

    fn rcgen_cert(sans: &[&str], eku: Option<rcgen::ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(sans).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "broker-cn");
        p.not_before = rcgen::date_time_ymd(2025, 1, 2);
        p.not_after = rcgen::date_time_ymd(2027, 3, 4);
        if let Some(e) = eku {
            p.extended_key_usages = vec![e];
        }
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn names_dates_and_key_usage_are_read_from_a_real_certificate() {
        let der = rcgen_cert(
            &["localhost", "127.0.0.1"],
            Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth),
        );
        let c = CertInfo::parse(&der).expect("parses");
        assert_eq!(c.not_before, 1_735_776_000);
        assert_eq!(c.not_after, 1_804_118_400);
        assert!(c.names("localhost") && c.names("LOCALHOST") && c.names("127.0.0.1"));
        assert!(!c.names("127.0.0.2") && !c.names("broker-cn") && !c.names("localhost."));
        assert!(c.allows_server_auth());
        assert_eq!(c.any_dns_name(), Some(&b"localhost"[..]));

        let client = rcgen_cert(&[], Some(rcgen::ExtendedKeyUsagePurpose::ClientAuth));
        let c = CertInfo::parse(&client).expect("parses");
        assert!(!c.allows_server_auth());
        // No SAN: the common name decides.
        assert!(c.names("broker-cn") && !c.names("localhost"));
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_certificate_is_handled_without_panic() {
        let der = rcgen_cert(&["localhost"], None);
        for n in 0..der.len() {
            assert!(CertInfo::parse(&der[..n]).is_none(), "truncated at {n}");
        }
        let mut d = der.clone();
        for i in 0..d.len() {
            for bit in [0x01, 0x80] {
                d[i] ^= bit;
                if let Some(c) = CertInfo::parse(&d) {
                    let _ = (
                        c.names("localhost"),
                        c.allows_server_auth(),
                        c.any_dns_name(),
                    );
                }
                d[i] ^= bit;
            }
        }
    }

    #[test]
    fn truncated_or_garbage_input_is_not_a_certificate() {
        assert!(CertInfo::parse(&[]).is_none());
        assert!(CertInfo::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(CertInfo::parse(&[0x30, 0x03, 0x30, 0x01]).is_none());
    }
}
