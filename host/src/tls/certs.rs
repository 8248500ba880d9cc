//! The certificates the TLS listeners serve, chosen by the name the client asks for (SNI), and
//! swapped whole on reload or when ACME issues new ones: a handshake in progress keeps the set it
//! started with.
//!
//! Hand-written rather than rustls' `ResolvesServerCertUsingSni`: that one has no default
//! certificate for clients that send no (or an unknown) name, no wildcards, and cannot be swapped
//! while serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;
use crate::config::CertificateFiles;

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates by name, with a default for clients whose name matches none.
#[derive(Debug, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertSet {
    /// Loads every configured certificate; the first is the default.
    pub fn load(files: &[CertificateFiles]) -> Result<CertSet, TlsError> {
        let mut set = CertSet::default();
        for f in files {
            let key = load_pair(&f.cert, &f.key)?;
            set.insert(key)?;
        }
        Ok(set)
    }

    /// Adds a certificate under the names it is valid for (its DNS subjectAltNames).
    pub fn insert(&mut self, key: Arc<CertifiedKey>) -> Result<(), TlsError> {
        for name in names(&key)? {
            if let Some(parent) = name.strip_prefix("*.") {
                self.wildcard
                    .entry(parent.to_string())
                    .or_insert_with(|| Arc::clone(&key));
            } else {
                self.exact.entry(name).or_insert_with(|| Arc::clone(&key));
            }
        }
        if self.default.is_none() {
            self.default = Some(key);
        }
        Ok(())
    }

    fn exact(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name)
    }

    fn wildcard(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

/// What every TLS listener serves: the configured certificates, those ACME issued, and the
/// short-lived ones that answer TLS-ALPN-01 challenges.
#[derive(Debug, Default)]
pub struct Certificates {
    configured: ArcSwap<CertSet>,
    acme: ArcSwap<CertSet>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    /// The configured certificates, loaded (nothing is served until this succeeds).
    pub fn new(files: &[CertificateFiles]) -> Result<Certificates, TlsError> {
        let certs = Certificates::default();
        certs.configured.store(Arc::new(CertSet::load(files)?));
        Ok(certs)
    }

    /// Loads the configured certificates again (SIGHUP); on any error the old ones keep serving.
    pub fn reload(&self, files: &[CertificateFiles]) -> Result<(), TlsError> {
        let set = CertSet::load(files)?;
        self.configured.store(Arc::new(set));
        Ok(())
    }

    /// Serves an ACME-issued certificate from now on (for new handshakes).
    pub fn set_acme(&self, key: Arc<CertifiedKey>) -> Result<(), TlsError> {
        let mut set = CertSet::default();
        set.insert(key)?;
        self.acme.store(Arc::new(set));
        Ok(())
    }

    /// Answers the TLS-ALPN-01 challenge for `name` with `key` until it is removed.
    pub fn set_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut challenges = self
            .challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match key {
            Some(key) => challenges.insert(name.to_string(), key),
            None => challenges.remove(name),
        };
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let configured = self.configured.load();
        let acme = self.acme.load();
        let found = name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            configured
                .exact(&name)
                .or_else(|| acme.exact(&name))
                .or_else(|| configured.wildcard(&name))
                .or_else(|| acme.wildcard(&name))
                .cloned()
        });
        found.or_else(|| {
            configured
                .default
                .as_ref()
                .or(acme.default.as_ref())
                .cloned()
        })
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if wants_challenge {
            // Only the validation server offers this protocol, and only the challenge certificate
            // may be served to it (RFC 8737 section 3).
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        self.pick(hello.server_name())
    }
}

/// A certificate chain and its key from PEM files, checked to belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_error = |path: &Path, message: String| TlsError::File {
        file: path.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(
            cert,
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_error(
            key,
            format!("no usable private key in it (expected PEM PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    from_der(chain, private).map_err(|e| file_error(cert, e))
}

/// A certificate chain and key in DER, checked to belong together.
pub fn from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_string()
        }
        other => other.to_string(),
    })?;
    names(&certified).map_err(|e| e.to_string())?;
    Ok(Arc::new(certified))
}

/// The DNS names a leaf certificate is valid for (its subjectAltNames; its common name if it has
/// none), lower case.
fn names(key: &CertifiedKey) -> Result<Vec<String>, TlsError> {
    let leaf = key.end_entity_cert().map_err(TlsError::Rustls)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in parsed.subject().iter_common_name() {
            if let Ok(text) = cn.as_str() {
                names.push(text.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// When a certificate became valid and when it expires, as seconds since the Unix epoch.
pub fn validity_window(key: &CertifiedKey) -> Option<(i64, i64)> {
    let leaf = key.end_entity_cert().ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let validity = parsed.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Arc<CertifiedKey> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let issued = rcgen::generate_simple_self_signed(names).expect("rcgen");
        from_der(
            vec![issued.cert.der().clone()],
            PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into()),
        )
        .expect("pair")
    }

    #[test]
    fn names_pick_exact_then_wildcard_then_the_default() {
        let a = cert(&["a.example"]);
        let wild = cert(&["*.example", "example"]);
        let mut set = CertSet::default();
        set.insert(Arc::clone(&a)).expect("a");
        set.insert(Arc::clone(&wild)).expect("wild");
        let certs = Certificates::default();
        certs.configured.store(Arc::new(set));
        let pick = |n: Option<&str>| certs.pick(n).expect("some");
        assert!(Arc::ptr_eq(&pick(Some("a.example")), &a));
        assert!(Arc::ptr_eq(&pick(Some("A.Example.")), &a));
        assert!(Arc::ptr_eq(&pick(Some("b.example")), &wild));
        assert!(Arc::ptr_eq(&pick(Some("example")), &wild));
        assert!(
            Arc::ptr_eq(&pick(Some("x.b.example")), &a),
            "wildcards span one label"
        );
        assert!(Arc::ptr_eq(&pick(None), &a), "the first is the default");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let one = rcgen::generate_simple_self_signed(vec!["one".into()]).expect("rcgen");
        let two = rcgen::generate_simple_self_signed(vec!["two".into()]).expect("rcgen");
        let e = from_der(
            vec![one.cert.der().clone()],
            PrivateKeyDer::Pkcs8(two.signing_key.serialize_der().into()),
        )
        .expect_err("mismatch");
        assert!(e.contains("does not belong"), "{e}");
    }
}
