//! `[server] listen`, `[[server.listeners]]`, `[[server.certificates]]` and `[server.acme]`: where
//! the server listens and how (plain HTTP, TLS, mutual TLS, PROXY protocol, redirects to HTTPS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::errors::{ConfigError, Doc};
use super::trusted::Trusted;
use super::units::Seconds;

/// One listening socket and how it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The address.
    pub addr: ListenAddr,
    /// TLS on this socket (`None`: plain HTTP).
    pub tls: Option<TlsListen>,
    /// Peers allowed to send a PROXY protocol header (v1 or v2) first; `None`: off.
    pub proxy_protocol: Option<Trusted>,
    /// A plain listener that answers every request with a redirect to HTTPS.
    pub redirect_https: bool,
}

/// TLS settings of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    /// Client certificates (mutual TLS), verified against these CAs.
    pub client_auth: Option<ClientAuth>,
}

/// Mutual TLS on a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM file of the CAs client certificates must chain to.
    pub ca: PathBuf,
    /// Whether a client without a certificate is refused (else it is served without a subject).
    pub required: bool,
}

/// A certificate chain and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[server.acme]`: certificates issued and renewed automatically (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The names certificates are ordered for (one certificate covers them all).
    pub domains: Vec<String>,
    /// Contact URLs for the account (`mailto:...`).
    pub contact: Vec<String>,
    /// The ACME server's directory URL.
    pub directory: String,
    /// Where the account key and the issued certificates are kept.
    pub state_dir: PathBuf,
    /// How the CA checks that we hold the names.
    pub challenge: AcmeChallenge,
    /// PEM roots trusted for the ACME server's own HTTPS (a test CA such as Pebble); default:
    /// the system's.
    pub ca_root: Option<PathBuf>,
    /// Renew this long before expiry (`None`: when a third of the lifetime is left).
    pub renew_before: Option<Duration>,
    /// The wait after a failed order; it doubles with each failure (up to a day).
    pub retry_backoff: Duration,
}

/// The ACME challenge used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737), answered on the TLS listeners (port 443 for public CAs).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01, answered under `/.well-known/acme-challenge/` on the plain listeners (port 80).
    #[serde(rename = "http-01")]
    Http01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    listen: Spanned<Vec<Spanned<String>>>,
    tls: Option<bool>,
    client_ca: Option<Spanned<String>>,
    client_auth: Option<ClientAuthMode>,
    proxy_protocol: Option<Spanned<Vec<String>>>,
    redirect_https: Option<Spanned<bool>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ClientAuthMode {
    Required,
    Optional,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    domains: Spanned<Vec<String>>,
    #[serde(default)]
    contact: Vec<String>,
    directory: Option<String>,
    state_dir: Option<String>,
    challenge: Option<AcmeChallenge>,
    ca_root: Option<Spanned<String>>,
    renew_before: Option<Seconds>,
    retry_backoff: Option<Seconds>,
}

/// What `[server]` says about listening, validated.
pub(super) struct Listening {
    pub(super) listen: Vec<Listen>,
    pub(super) certificates: Vec<CertificateFiles>,
    pub(super) acme: Option<AcmeConfig>,
}

/// Validates the plain `listen` list, the `[[server.listeners]]` and the certificate sources
/// together: an address is listed once in all, TLS listeners have certificates, redirects have a
/// TLS listener to go to.
pub(super) fn validate(
    listen: Option<&Spanned<Vec<Spanned<String>>>>,
    listeners: &[Spanned<RawListener>],
    certificates: &[Spanned<RawCertificate>],
    raw_acme: Option<&Spanned<RawAcme>>,
    doc: &Doc<'_>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Listening {
    let mut out: Vec<Listen> = Vec::new();
    let mut seen = Vec::new();
    let plain = Listen {
        addr: ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
        tls: None,
        proxy_protocol: None,
        redirect_https: false,
    };
    if let Some(listen) = listen {
        for addr in addresses(listen, "server.listen", &mut seen, doc, base, errors) {
            out.push(Listen {
                addr,
                ..plain.clone()
            });
        }
    }
    for (i, raw) in listeners.iter().enumerate() {
        let key = format!("server.listeners[{i}]");
        let l = raw.get_ref();
        let tls = l.tls.unwrap_or(false);
        let client_auth = match (&l.client_ca, l.client_auth) {
            (Some(ca), mode) => {
                if !tls {
                    errors.push(doc.error(
                        ca.span(),
                        &format!("{key}.client_ca"),
                        "client certificates need a TLS listener (tls = true)",
                    ));
                }
                Some(ClientAuth {
                    ca: existing_file(ca, &format!("{key}.client_ca"), doc, base, errors),
                    required: !matches!(mode, Some(ClientAuthMode::Optional)),
                })
            }
            (None, Some(_)) => {
                errors.push(doc.error(
                    raw.span(),
                    &format!("{key}.client_auth"),
                    "client_auth needs client_ca, the CAs client certificates are checked against",
                ));
                None
            }
            (None, None) => None,
        };
        let proxy_protocol = l.proxy_protocol.as_ref().and_then(|list| {
            Trusted::parse(list.get_ref())
                .map_err(|e| {
                    errors.push(doc.error(list.span(), &format!("{key}.proxy_protocol"), e))
                })
                .ok()
        });
        let redirect_https = match &l.redirect_https {
            Some(r) if *r.get_ref() && tls => {
                errors.push(doc.error(
                    r.span(),
                    &format!("{key}.redirect_https"),
                    "a TLS listener already is HTTPS: redirect_https belongs on a plain listener",
                ));
                false
            }
            Some(r) => *r.get_ref(),
            None => false,
        };
        let template = Listen {
            addr: plain.addr.clone(),
            tls: tls.then_some(TlsListen { client_auth }),
            proxy_protocol,
            redirect_https,
        };
        for addr in addresses(
            &l.listen,
            &format!("{key}.listen"),
            &mut seen,
            doc,
            base,
            errors,
        ) {
            out.push(Listen {
                addr,
                ..template.clone()
            });
        }
    }
    if listen.is_none() && listeners.is_empty() {
        errors.push(doc.error(
            0..0,
            "server.listen",
            "at least one address is required, e.g. listen = [\"127.0.0.1:8000\"]",
        ));
    }

    let certificates: Vec<CertificateFiles> = certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let key = format!("server.certificates[{i}]");
            let c = c.get_ref();
            CertificateFiles {
                cert: existing_file(&c.cert, &format!("{key}.cert"), doc, base, errors),
                key: existing_file(&c.key, &format!("{key}.key"), doc, base, errors),
            }
        })
        .collect();
    let acme = raw_acme.map(|a| validate_acme(a, doc, base, errors));

    let has_tls = out.iter().any(|l| l.tls.is_some());
    if has_tls && certificates.is_empty() && acme.is_none() {
        errors.push(doc.error(
            0..0,
            "server.certificates",
            "TLS listeners need certificates: add [[server.certificates]] cert = \"...\" key = \"...\", or [server.acme]",
        ));
    }
    if !has_tls && out.iter().any(|l| l.redirect_https) {
        errors.push(doc.error(
            0..0,
            "server.listeners",
            "redirect_https needs a TLS listener to redirect to ([[server.listeners]] with tls = true)",
        ));
    }
    if let (Some(_), Some(raw), false) = (&acme, raw_acme, has_tls) {
        errors.push(doc.error(
            raw.span(),
            "server.acme",
            "ACME certificates are served on TLS listeners: add [[server.listeners]] with tls = true",
        ));
    }
    if let (Some(a), Some(raw)) = (&acme, raw_acme) {
        let needs = match a.challenge {
            AcmeChallenge::TlsAlpn01 => has_tls,
            AcmeChallenge::Http01 => out.iter().any(|l| l.tls.is_none()),
        };
        if !needs {
            errors.push(doc.error(
                raw.span(),
                "server.acme.challenge",
                match a.challenge {
                    AcmeChallenge::TlsAlpn01 => {
                        "the tls-alpn-01 challenge is answered on a TLS listener: add one (port 443 for a public CA)"
                    }
                    AcmeChallenge::Http01 => {
                        "the http-01 challenge is answered on a plain listener: add one (port 80 for a public CA)"
                    }
                },
            ));
        }
    }
    Listening {
        listen: out,
        certificates,
        acme,
    }
}

fn validate_acme(
    raw: &Spanned<RawAcme>,
    doc: &Doc<'_>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> AcmeConfig {
    let a = raw.get_ref();
    let domains: Vec<String> = a
        .domains
        .get_ref()
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if domains.is_empty() {
        errors.push(doc.error(
            a.domains.span(),
            "server.acme.domains",
            "name at least one domain, e.g. [\"example.com\", \"www.example.com\"]",
        ));
    }
    for d in &domains {
        let valid = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            errors.push(doc.error(
                a.domains.span(),
                "server.acme.domains",
                format!("{d:?} is not a DNS name (wildcards need the dns-01 challenge, which Gatehouse does not answer)"),
            ));
        }
    }
    let state_dir = match &a.state_dir {
        Some(dir) => base.join(dir),
        None => default_state_dir(),
    };
    AcmeConfig {
        domains,
        contact: a.contact.clone(),
        directory: a
            .directory
            .clone()
            .unwrap_or_else(|| LETS_ENCRYPT.to_string()),
        state_dir,
        challenge: a.challenge.unwrap_or(AcmeChallenge::TlsAlpn01),
        ca_root: a
            .ca_root
            .as_ref()
            .map(|p| existing_file(p, "server.acme.ca_root", doc, base, errors)),
        renew_before: a.renew_before.map(|s| s.0),
        retry_backoff: a
            .retry_backoff
            .map_or(Duration::from_secs(60), |s| s.0.max(Duration::from_secs(1))),
    }
}

/// `$XDG_STATE_HOME/gatehouse/acme`, or `~/.local/state/gatehouse/acme`.
fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("gatehouse")
        .join("acme")
}

fn existing_file(
    path: &Spanned<String>,
    key: &str,
    doc: &Doc<'_>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> PathBuf {
    let full = base.join(path.get_ref());
    if !full.is_file() {
        errors.push(doc.error(
            path.span(),
            key,
            format!("{} is not a readable file", full.display()),
        ));
    }
    full
}

/// The addresses of one list, each checked and each at most once across all lists.
fn addresses(
    listen: &Spanned<Vec<Spanned<String>>>,
    list_key: &str,
    seen: &mut Vec<ListenAddr>,
    doc: &Doc<'_>,
    base: &Path,
    errors: &mut Vec<ConfigError>,
) -> Vec<ListenAddr> {
    if listen.get_ref().is_empty() {
        errors.push(doc.error(
            listen.span(),
            list_key,
            "at least one address is required, e.g. [\"127.0.0.1:8000\"]",
        ));
    }
    let mut out = Vec::new();
    for (i, entry) in listen.get_ref().iter().enumerate() {
        let key = format!("{list_key}[{i}]");
        let addr = match parse_addr(entry.get_ref(), base) {
            Ok(addr) => addr,
            Err(e) => {
                errors.push(doc.error(entry.span(), &key, e));
                continue;
            }
        };
        let clash = match &addr {
            ListenAddr::Tcp(a) if a.port() != 0 => seen.contains(&addr),
            ListenAddr::Tcp(_) => false,
            ListenAddr::Unix(_) => seen.contains(&addr),
        };
        if clash {
            errors.push(doc.error(entry.span(), &key, format!("{addr} is listed twice")));
            continue;
        }
        seen.push(addr.clone());
        out.push(addr);
    }
    out
}

/// `IP:PORT` or `unix:PATH` (relative to the config's directory).
fn parse_addr(text: &str, base: &Path) -> Result<ListenAddr, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("a unix socket needs a path, e.g. \"unix:/run/gatehouse.sock\"".into());
        }
        return Ok(ListenAddr::Unix(base.join(path)));
    }
    text.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
        format!("{text:?} is not an address: expected IP:PORT (\"127.0.0.1:8000\", \"[::1]:8000\") or \"unix:PATH\"")
    })
}

/// `[admin]`: the health and metrics listener.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Spanned<String>,
}

impl RawAdmin {
    /// The admin address, checked against the serving listeners.
    pub(super) fn validate(
        &self,
        serving: &[Listen],
        doc: &Doc<'_>,
        base: &Path,
        errors: &mut Vec<ConfigError>,
    ) -> Option<ListenAddr> {
        let addr = parse_addr(self.listen.get_ref(), base)
            .map_err(|e| errors.push(doc.error(self.listen.span(), "admin.listen", e)))
            .ok()?;
        let taken = match &addr {
            ListenAddr::Tcp(a) if a.port() == 0 => false,
            _ => serving.iter().any(|l| l.addr == addr),
        };
        if taken {
            errors.push(doc.error(
                self.listen.span(),
                "admin.listen",
                format!(
                    "{addr} is also a serving listener: give the admin listener its own address"
                ),
            ));
            return None;
        }
        Some(addr)
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address, IPv4 or IPv6; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix-domain socket path (`unix:/run/gatehouse.sock`).
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
