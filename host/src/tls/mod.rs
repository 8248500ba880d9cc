//! TLS termination with rustls: the certificates every TLS listener serves (chosen by SNI), each
//! listener's rustls config (ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 only, session tickets,
//! optional client certificates), rebuilt on SIGHUP, and the handshake itself.

pub mod acme;
mod certs;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};

pub use certs::{ACME_TLS_ALPN, Certificates, from_der, validity_window};

use crate::config::{ServerConfig, TlsListen};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file that cannot be used.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// A certificate that cannot be parsed.
    #[error("a certificate cannot be parsed: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Sessions a listener remembers for resumption by session id (TLS 1.2 clients without tickets);
/// the oldest are forgotten first.
const SESSION_CACHE: usize = 4096;

/// What the TLS listeners share: the certificates, the session ticket keys and cache.
#[derive(Debug)]
pub struct Tls {
    certificates: Arc<Certificates>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    /// Whether to speak `acme-tls/1` (TLS-ALPN-01 challenges are answered here).
    acme_alpn: bool,
    handshake_timeout: Duration,
}

impl Tls {
    /// Loads the configured certificates; `None` when no listener speaks TLS.
    pub fn new(server: &ServerConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        if server.listen.iter().all(|l| l.tls.is_none()) {
            return Ok(None);
        }
        let certificates = Arc::new(Certificates::new(&server.certificates)?);
        Ok(Some(Arc::new(Tls {
            certificates,
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
            acme_alpn: server
                .acme
                .as_ref()
                .is_some_and(|a| a.challenge == crate::config::AcmeChallenge::TlsAlpn01),
            handshake_timeout: server.limits.tls_handshake_timeout,
        })))
    }

    /// The certificates served, for ACME to add to.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.certificates
    }

    /// The handshake acceptor of one listener.
    pub fn acceptor(&self, listen: &TlsListen) -> Result<Acceptor, TlsError> {
        Ok(Acceptor {
            config: ArcSwap::from(self.server_config(listen)?),
            timeout: self.handshake_timeout,
            requires_client_cert: listen.client_auth.as_ref().is_some_and(|a| a.required),
        })
    }

    /// Reloads the certificates and rebuilds a listener's config (client CAs are read again);
    /// nothing changes unless all of it succeeds.
    pub fn reload(
        &self,
        server: &ServerConfig,
        acceptors: &[(&TlsListen, &Acceptor)],
    ) -> Result<(), TlsError> {
        let configs = acceptors
            .iter()
            .map(|(listen, _)| self.server_config(listen))
            .collect::<Result<Vec<_>, _>>()?;
        self.certificates.reload(&server.certificates)?;
        for ((_, acceptor), config) in acceptors.iter().zip(configs) {
            acceptor.config.store(config);
        }
        Ok(())
    }

    fn server_config(&self, listen: &TlsListen) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &listen.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let file = |message: String| TlsError::File {
                    file: auth.ca.display().to_string(),
                    message,
                };
                let mut roots = rustls::RootCertStore::empty();
                for cert in
                    CertificateDer::pem_file_iter(&auth.ca).map_err(|e| file(e.to_string()))?
                {
                    roots
                        .add(cert.map_err(|e| file(e.to_string()))?)
                        .map_err(|e| file(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(file("no CA certificate in it".into()));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth.required {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| file(format!("unusable as client CAs: {e}")))?,
                )
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&self.certificates) as Arc<_>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.acme_alpn {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        if listen.client_auth.is_some() {
            // rustls resumes a session without checking the client certificate again: a ticket
            // from a listener without client certificates (or from before a CA was removed) must
            // not open this one. Its own keys and cache, made anew on every reload.
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
            config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        } else {
            config.ticketer = Arc::clone(&self.ticketer);
            config.session_storage = Arc::clone(&self.sessions);
        }
        Ok(Arc::new(config))
    }
}

/// One TLS listener's handshake: its current config, swapped on reload.
#[derive(Debug)]
pub struct Acceptor {
    config: ArcSwap<rustls::ServerConfig>,
    timeout: Duration,
    /// Refuse a finished handshake without a client certificate (a second line behind the
    /// verifier and the per-listener session keys).
    requires_client_cert: bool,
}

/// What a finished handshake tells the rest of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// The verified client certificate's subject (RFC 4514 form), with mutual TLS.
    pub client_subject: Option<Arc<str>>,
    /// The protocol ALPN settled on (`None`: the client offered none).
    pub alpn: Option<Alpn>,
}

/// An HTTP protocol chosen by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    Http2,
    /// `http/1.1`.
    Http1,
}

/// Why a handshake ended without a connection to serve.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish within `tls_handshake_timeout`.
    #[error("the TLS handshake timed out")]
    Timeout,
    /// The handshake failed (a protocol error, an unknown CA, no shared version...).
    #[error("the TLS handshake failed: {0}")]
    Failed(std::io::Error),
    /// A TLS-ALPN-01 validation: answered by the handshake, nothing to serve.
    #[error("an ACME TLS-ALPN-01 validation")]
    AcmeValidation,
}

impl Acceptor {
    /// Runs the handshake within the timeout.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Established), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        let stream = tokio::time::timeout(self.timeout, acceptor.accept(io))
            .await
            .map_err(|_| HandshakeError::Timeout)?
            .map_err(HandshakeError::Failed)?;
        let (_, session) = stream.get_ref();
        if session.alpn_protocol() == Some(ACME_TLS_ALPN) {
            return Err(HandshakeError::AcmeValidation);
        }
        let leaf = session.peer_certificates().and_then(|chain| chain.first());
        if self.requires_client_cert && leaf.is_none() {
            return Err(HandshakeError::Failed(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "no client certificate",
            )));
        }
        let client_subject = leaf.and_then(|leaf| subject(leaf));
        let alpn = match session.alpn_protocol() {
            Some(b"h2") => Some(Alpn::Http2),
            Some(b"http/1.1") => Some(Alpn::Http1),
            _ => None,
        };
        Ok((
            stream,
            Established {
                client_subject,
                alpn,
            },
        ))
    }
}

/// A certificate's subject in RFC 4514 form, as nginx's `$ssl_client_s_dn`: the most specific
/// part first (`CN=alice,O=Example,C=GB`), special characters escaped.
fn subject(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    let rdns: Vec<_> = parsed.subject().iter().collect();
    for rdn in rdns.into_iter().rev() {
        let mut attrs = Vec::new();
        for attr in rdn.iter() {
            let oid = attr.attr_type();
            let name = x509_parser::objects::oid2abbrev(oid, registry)
                .map_or_else(|_| oid.to_id_string(), str::to_string);
            let value = attr.as_str().ok()?;
            attrs.push(format!("{name}={}", escape_dn_value(value)));
        }
        parts.push(attrs.join("+"));
    }
    Some(Arc::from(parts.join(",")))
}

/// RFC 4514 section 2.4.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
