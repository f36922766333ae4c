//! The few fields of an X.509 certificate the verifier reads itself: validity
//! dates and the names (subject alternative names, common name). embedded-tls
//! checks the chain's signatures; it reports every certificate problem as one
//! `InvalidCertificate`, so dates and names are checked here to tell them apart.
//!
//! A minimal DER walker over the broker's certificate, which is untrusted input
//! until the chain is verified: every access is bounds-checked, nothing panics.

/// A DER tag-length-value: the tag byte, the contents and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length bytes (certificates are far below 4 GiB).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// The contents of a TLV with the expected tag, and what follows.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(input)?;
    (t == tag).then_some((content, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0]` EXPLICIT version.
const VERSION: u8 = 0xa0;
/// `[3]` EXPLICIT extensions.
const EXTENSIONS: u8 = 0xa3;
/// GeneralName `[2]` dNSName and `[7]` iPAddress (IMPLICIT).
const SAN_DNS: u8 = 0x82;
const SAN_IP: u8 = 0x87;
/// 2.5.4.3 (commonName) and 2.5.29.17 (subjectAltName), contents only.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.29.37 (extKeyUsage), 1.3.6.1.5.5.7.3.1 (serverAuth), 2.5.29.37.0 (any).
const OID_EKU: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// What the verifier needs from one certificate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CertInfo<'a> {
    /// Validity start and end, Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
    /// The subjectAltName extension's contents (a SEQUENCE OF GeneralName), if any.
    san: Option<&'a [u8]>,
    /// The extKeyUsage extension's contents (a SEQUENCE OF OID), if any.
    eku: Option<&'a [u8]>,
    /// The subject's first common name, if any.
    pub common_name: Option<&'a [u8]>,
}

impl<'a> CertInfo<'a> {
    /// Reads a DER certificate; `None` if it is not one.
    pub fn parse(der: &'a [u8]) -> Option<Self> {
        let (cert, _) = expect(der, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        if rest.first() == Some(&VERSION) {
            rest = tlv(rest)?.2;
        }
        let (_serial, _, rest) = tlv(rest)?;
        let (_sig_alg, rest) = expect(rest, SEQUENCE)?;
        let (_issuer, rest) = expect(rest, SEQUENCE)?;
        let (validity, rest) = expect(rest, SEQUENCE)?;
        let (subject, rest) = expect(rest, SEQUENCE)?;
        let (_spki, mut rest) = expect(rest, SEQUENCE)?;

        let (t1, tc1, after) = tlv(validity)?;
        let (t2, tc2, _) = tlv(after)?;
        let not_before = parse_time(t1, tc1)?;
        let not_after = parse_time(t2, tc2)?;

        // Optional issuerUniqueID [1], subjectUniqueID [2], then extensions [3].
        let (mut san, mut eku) = (None, None);
        while let Some((tag, content, next)) = tlv(rest) {
            if tag == EXTENSIONS {
                san = find_ext(content, OID_SAN)?;
                eku = find_ext(content, OID_EKU)?;
            }
            rest = next;
        }
        Some(CertInfo {
            not_before,
            not_after,
            san,
            eku,
            common_name: find_cn(subject),
        })
    }

    /// Whether the certificate may authenticate a TLS server: no extended key
    /// usage, or one that lists serverAuth (site client certificates list
    /// only clientAuth).
    pub fn allows_server_auth(&self) -> bool {
        let Some(mut oids) = self.eku else {
            return true;
        };
        while let Some((tag, oid, next)) = tlv(oids) {
            if tag == OID && (oid == OID_SERVER_AUTH || oid == OID_ANY_EKU) {
                return true;
            }
            oids = next;
        }
        false
    }

    /// Whether the certificate names `host` (a DNS name or an IPv4 literal),
    /// by RFC 6125: the subject alternative names when there are any, the
    /// common name only when there are none. Exact, case-insensitive; no
    /// wildcards (the site CA issues exact names).
    pub fn names(&self, host: &str) -> bool {
        let ip = parse_ipv4(host);
        match self.san {
            Some(mut names) => {
                while let Some((tag, value, next)) = tlv(names) {
                    let hit = match (tag, ip) {
                        (SAN_IP, Some(ip)) => value == ip,
                        (SAN_DNS, None) => value.eq_ignore_ascii_case(host.as_bytes()),
                        _ => false,
                    };
                    if hit {
                        return true;
                    }
                    names = next;
                }
                false
            }
            None => self
                .common_name
                .is_some_and(|cn| cn.eq_ignore_ascii_case(host.as_bytes())),
        }
    }

    /// A DNS name the certificate carries (first dNSName, else the common
    /// name), to hand to embedded-tls's own name check.
    pub fn any_dns_name(&self) -> Option<&'a [u8]> {
        let mut names = self.san?;
        while let Some((tag, value, next)) = tlv(names) {
            if tag == SAN_DNS {
                return Some(value);
            }
            names = next;
        }
        None
    }

    /// Whether the certificate has a dNSName or a common name (embedded-tls
    /// requires a name to match when either is present).
    pub fn has_dns_name_or_cn(&self) -> bool {
        self.any_dns_name().is_some() || self.common_name.is_some()
    }
}

/// The contents of the SEQUENCE an extension's value holds (SAN: GeneralNames,
/// EKU: KeyPurposeIds), in an `[3]` extensions block; `Some(None)` if absent.
fn find_ext<'a>(ext_block: &'a [u8], wanted: &[u8]) -> Option<Option<&'a [u8]>> {
    let (mut exts, _) = expect(ext_block, SEQUENCE)?;
    while !exts.is_empty() {
        let (ext, next) = expect(exts, SEQUENCE)?;
        let (oid, mut body) = expect(ext, OID)?;
        if oid == wanted {
            // Skip the optional `critical` BOOLEAN.
            if body.first() == Some(&0x01) {
                body = tlv(body)?.2;
            }
            let (value, _) = expect(body, OCTET_STRING)?;
            let (names, _) = expect(value, SEQUENCE)?;
            return Some(Some(names));
        }
        exts = next;
    }
    Some(None)
}

/// The first commonName value in a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
fn find_cn(mut name: &[u8]) -> Option<&[u8]> {
    while let Some((SET, set, next)) = tlv(name) {
        let mut atvs = set;
        while let Some((SEQUENCE, atv, after)) = tlv(atvs) {
            if let Some((oid, value)) = expect(atv, OID) {
                if oid == OID_CN {
                    return tlv(value).map(|(_, s, _)| s);
                }
            }
            atvs = after;
        }
        name = next;
    }
    None
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        *b = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) to Unix seconds.
fn parse_time(tag: u8, s: &[u8]) -> Option<u64> {
    let digits = |r: &[u8]| -> Option<u64> {
        r.iter().try_fold(0u64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(s.get(0..2)?)?;
            // RFC 5280: 50..99 are 19xx, 00..49 are 20xx.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        (GENERALIZED_TIME, 15) => (digits(s.get(0..4)?)?, s.get(4..)?),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(rest.get(0..2)?)?;
    let day = digits(rest.get(2..4)?)?;
    let hour = digits(rest.get(4..6)?)?;
    let min = digits(rest.get(6..8)?)?;
    let sec = digits(rest.get(8..10)?)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm);
/// `None` before 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

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
