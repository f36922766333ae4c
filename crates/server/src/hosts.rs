//! The `Host` header patterns of `http.allowed_hosts`: what the configuration
//! validates and the access gate matches requests against.

/// A host name with an optional port, lower case, brackets kept around IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    /// Parses `name`, `name:port`, `[v6]` or `[v6]:port`.
    pub(crate) fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim().to_ascii_lowercase();
        let (host, port) = if s.starts_with('[') {
            let end = s.find(']')?;
            let rest = &s[end + 1..];
            let port = match rest {
                "" => None,
                r => Some(r.strip_prefix(':')?.parse().ok()?),
            };
            (s[..=end].to_string(), port)
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
                None => (s.clone(), None),
            }
        };
        let host = host.trim_end_matches('.').to_string();
        (!host.is_empty()).then_some(HostPattern { host, port })
    }

    pub(crate) fn matches(&self, got: &HostPattern) -> bool {
        self.host == got.host && (self.port.is_none() || self.port == got.port)
    }
}

/// The default `http.allowed_hosts`.
pub fn default_allowed_hosts() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]
}

/// Checks an `allowed_hosts` entry (for the configuration's validation).
pub(crate) fn valid_host_entry(s: &str) -> bool {
    HostPattern::parse(s).is_some()
}
