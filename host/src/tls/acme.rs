//! Automatic certificates over ACME (RFC 8555), as Caddy does: one certificate for the configured
//! domains, ordered at start when there is none (or it does not cover them), renewed well before
//! it expires, and swapped in for new handshakes with no restart. A CA that fails leaves the
//! current certificate serving; the order is retried with a doubling backoff.
//!
//! The protocol is instant-acme's; what is ours is the schedule, the challenge answers (a
//! TLS-ALPN-01 certificate in the listeners' resolver, or an HTTP-01 token served on the plain
//! listeners) and the state directory (the account and the last certificate, so a restart serves
//! at once and orders nothing).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use super::Certificates;
use crate::config::{AcmeChallenge, AcmeConfig};

/// The longest wait between two failed attempts (Let's Encrypt allows five failed validations per
/// name and hour).
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// HTTP-01 key authorizations by token, served at `/.well-known/acme-challenge/TOKEN` by the plain
/// listeners while an order is pending.
#[derive(Debug, Default)]
pub struct Http01Tokens(Mutex<HashMap<String, String>>);

impl Http01Tokens {
    /// The key authorization for `token`, if an order is waiting for it.
    pub fn get(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }

    /// Answers `token` with `key_authorization` until removed.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.lock()
            .insert(token.to_string(), key_authorization.to_string());
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused or failed a request (its causes included: "client error
    /// (Connect)" alone does not say that the connection was refused).
    #[error("ACME: {}", crate::error::with_causes(.0))]
    Protocol(#[from] instant_acme::Error),
    /// The state directory cannot be read or written.
    #[error("ACME state {path}: {source}")]
    State {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something the CA sent or the order came to that we cannot use.
    #[error("ACME: {0}")]
    Order(String),
}

/// Orders and renews the certificate of `[server.acme]`.
#[derive(Debug)]
pub struct Acme {
    config: AcmeConfig,
    certificates: Arc<Certificates>,
    tokens: Arc<Http01Tokens>,
}

/// The certificate being served and when it was valid.
#[derive(Debug, Clone, Copy)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

impl Acme {
    /// A manager for `config`, answering challenges through `certificates` and `tokens`.
    pub fn new(
        config: AcmeConfig,
        certificates: Arc<Certificates>,
        tokens: Arc<Http01Tokens>,
    ) -> Acme {
        Acme {
            config,
            certificates,
            tokens,
        }
    }

    /// Serves the certificate a previous run stored, if it covers the configured domains; its
    /// validity, to schedule the renewal.
    fn load_stored(&self) -> Option<Validity> {
        let dir = self.cert_dir();
        let key = super::certs::load_pair(&dir.join("cert.pem"), &dir.join("key.pem")).ok()?;
        let validity = validity(&key)?;
        self.certificates.set_acme(key).ok()?;
        Some(validity)
    }

    /// Runs until `shutdown`: orders a certificate when there is none, renews it when it is due,
    /// and after a failure tries again with a doubling backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut current = self.load_stored();
        if current.is_some() {
            tracing::info!(domains = ?self.config.domains, "ACME: serving the stored certificate");
        }
        let mut backoff = self.config.retry_backoff;
        loop {
            let wait = match current {
                Some(v) => self.until_renewal(v),
                None => Duration::ZERO,
            };
            if !wait.is_zero() {
                tracing::info!(
                    in_seconds = wait.as_secs(),
                    "ACME: the certificate is renewed next"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            let outcome = tokio::select! {
                outcome = self.order() => outcome,
                () = shutdown.cancelled() => return,
            };
            match outcome {
                Ok(v) => {
                    tracing::info!(domains = ?self.config.domains, "ACME: certificate issued and serving");
                    current = Some(v);
                    backoff = self.config.retry_backoff;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_seconds = backoff.as_secs(), "ACME: ordering a certificate failed; the current one (if any) keeps serving");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// How long until the certificate is due: `renew_before` its expiry, else when a third of
    /// its lifetime is left (Let's Encrypt's advice).
    fn until_renewal(&self, v: Validity) -> Duration {
        let lifetime = (v.not_after - v.not_before).max(0);
        let before = match self.config.renew_before {
            // Renewing that early would order again the moment a certificate arrives, until the
            // CA's rate limits stop it.
            Some(d) if i64::try_from(d.as_secs()).unwrap_or(i64::MAX) >= lifetime => {
                tracing::warn!(
                    lifetime_seconds = lifetime,
                    "ACME: renew_before is not shorter than the certificate's lifetime; renewing when a third of it is left"
                );
                lifetime / 3
            }
            Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            None => lifetime / 3,
        };
        let due = v.not_after.saturating_sub(before);
        let now = unix_now();
        Duration::from_secs(u64::try_from(due - now).unwrap_or(0))
    }

    /// One order; if the CA no longer knows the stored account (a CA that lost its state, a
    /// deactivated account), the account is made anew and the order tried once more.
    async fn order(&self) -> Result<Validity, AcmeError> {
        match self.order_once().await {
            Err(AcmeError::Protocol(instant_acme::Error::Api(problem)))
                if problem.r#type.as_deref()
                    == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
            {
                tracing::warn!("ACME: the CA does not know the stored account; creating a new one");
                let path = self.account_file();
                std::fs::remove_file(&path).map_err(|source| AcmeError::State {
                    path: path.display().to_string(),
                    source,
                })?;
                self.order_once().await
            }
            other => other,
        }
    }

    /// One order, start to finish: the certificate is served and stored when it returns `Ok`.
    async fn order_once(&self) -> Result<Validity, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let kind = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut answered = Vec::new();
        let outcome = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(AcmeError::Order(format!("an authorization is {other:?}")));
                    }
                }
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    AcmeError::Order(format!("the CA offers no {kind:?} challenge"))
                })?;
                let name = challenge.identifier().to_string();
                let key_auth = challenge.key_authorization();
                match &kind {
                    ChallengeType::TlsAlpn01 => {
                        let cert = challenge_certificate(&name, key_auth.digest().as_ref())?;
                        self.certificates.set_challenge(&name, Some(cert));
                        answered.push(Answer::TlsAlpn(name));
                    }
                    _ => {
                        let token = challenge.token.clone();
                        self.tokens.insert(&token, key_auth.as_str());
                        answered.push(Answer::Http(token));
                    }
                }
                challenge.set_ready().await?;
            }
            let retries = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(120));
            let status = order.poll_ready(&retries).await?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Order(format!(
                    "the order is {status:?}, not ready (a challenge failed)"
                )));
            }
            let key_pem = order.finalize().await?;
            let chain_pem = order.poll_certificate(&retries).await?;
            Ok((key_pem, chain_pem))
        }
        .await;
        for answer in answered {
            match answer {
                Answer::TlsAlpn(name) => self.certificates.set_challenge(&name, None),
                Answer::Http(token) => self.tokens.remove(&token),
            }
        }
        let (key_pem, chain_pem) = outcome?;
        let key = parse_pair(&chain_pem, &key_pem)?;
        let validity = validity(&key)
            .ok_or_else(|| AcmeError::Order("the issued certificate has no validity".into()))?;
        // Served first: a state directory that cannot be written must not waste the certificate
        // (a restart will order another).
        self.certificates
            .set_acme(key)
            .map_err(|e| AcmeError::Order(e.to_string()))?;
        if let Err(error) = self.store(&chain_pem, &key_pem) {
            tracing::error!(%error, "ACME: the new certificate serves but could not be stored");
        }
        Ok(validity)
    }

    /// The account for this directory: the stored one, or a new one (whose key is stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.account_file();
        let builder = || match &self.config.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
        {
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let text = serde_json::to_string(&credentials)
            .map_err(|e| AcmeError::Order(format!("account credentials: {e}")))?;
        write_private(&path, text.as_bytes())?;
        Ok(account)
    }

    /// One account file per directory URL, so a test CA and the real one never share a key.
    fn account_file(&self) -> PathBuf {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(self.config.directory.as_bytes());
        let id: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.config.state_dir.join(format!("account-{id}.json"))
    }

    /// The certificate's directory, named after the domains it covers: another set of domains
    /// orders a new one.
    fn cert_dir(&self) -> PathBuf {
        self.config.state_dir.join(self.config.domains.join(","))
    }

    fn store(&self, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        let dir = self.cert_dir();
        write_private(&dir.join("key.pem"), key_pem.as_bytes())?;
        write_private(&dir.join("cert.pem"), chain_pem.as_bytes())
    }
}

enum Answer {
    TlsAlpn(String),
    Http(String),
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge (RFC 8737 section 3).
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let rcgen_error = |e: rcgen::Error| AcmeError::Order(format!("challenge certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(rcgen_error)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
    let cert = params.self_signed(&key).map_err(rcgen_error)?;
    // Not through `from_der`: its consistency check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists for.
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .map_err(|e| AcmeError::Order(format!("challenge key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

fn parse_pair(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AcmeError::Order(format!("the issued chain: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| AcmeError::Order(format!("the generated key: {e}")))?;
    super::from_der(chain, key).map_err(AcmeError::Order)
}

fn validity(key: &CertifiedKey) -> Option<Validity> {
    let (not_before, not_after) = super::validity_window(key)?;
    Some(Validity {
        not_before,
        not_after,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Written to a temporary file (mode 0600) and renamed, so a reader never sees half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let state = |source| AcmeError::State {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(state)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(state)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(state)?;
    std::fs::rename(&tmp, path).map_err(state)
}
