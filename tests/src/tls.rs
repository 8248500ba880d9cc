//! TLS for the tests: a CA and certificates made at test time (rcgen), and a small blocking
//! rustls client that keeps its connection, to send several requests on it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate authority that signs the tests' certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate (PEM).
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Issued {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed");
        TestCa {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// A server certificate for `names` (a client certificate with `client`, subject `CN=names[0]`).
    pub fn issue(&self, names: &[&str], client: bool) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Gatehouse Tests");
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes `ca.pem` into `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write ca");
        path
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }
}

impl Issued {
    /// Writes `NAME.pem` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.pem")), &self.cert).expect("write cert");
        std::fs::write(dir.join(format!("{name}.key")), &self.key).expect("write key");
    }
}

/// A TLS connection kept open across requests.
pub struct TlsConn {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

/// What a handshake settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The ALPN protocol (`h2`, `http/1.1`).
    pub alpn: Option<String>,
    /// The certificate the server sent (its leaf), DER.
    pub cert: Vec<u8>,
    /// Whether the session was resumed (no full handshake).
    pub resumed: bool,
}

impl TlsConn {
    /// Connects to `addr` asking for `sni`, trusting `roots` (DER); offers `alpn`; presents
    /// `client` (cert PEM, key PEM) if given.
    pub fn connect(
        addr: SocketAddr,
        sni: &str,
        roots: &[CertificateDer<'static>],
        alpn: &[&str],
        client: Option<(&str, &str)>,
    ) -> Result<(TlsConn, Negotiated), String> {
        TlsConn::connect_with(addr, sni, &client_config(roots, alpn, client)?)
    }

    /// Connects with a client config made by [`client_config`]: connections made with the same
    /// one resume each other's sessions.
    pub fn connect_with(
        addr: SocketAddr,
        sni: &str,
        config: &Arc<rustls::ClientConfig>,
    ) -> Result<(TlsConn, Negotiated), String> {
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let conn =
            rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| e.to_string())?;
        }
        let negotiated = Negotiated {
            alpn: stream
                .conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            cert: stream
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            resumed: stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        };
        Ok((TlsConn { stream }, negotiated))
    }

    /// Sends an HTTP/1.1 GET and reads one response (with a `Content-Length` body): its status
    /// line and body.
    pub fn get(&mut self, host: &str, path: &str) -> Result<(u16, String), String> {
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tls-test\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        self.stream.flush().map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Ok((status, body));
                }
            }
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A client config trusting `roots`, offering `alpn`, presenting `client` (cert PEM, key PEM).
pub fn client_config(
    roots: &[CertificateDer<'static>],
    alpn: &[&str],
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
