//! `auth`: who the client is, before the request goes on: HTTP Basic against hashed passwords,
//! API keys in a header, JWT bearer tokens. Scope it with the chain's `paths` / `hosts`.
//!
//! ```toml
//! [[plugins]]
//! use = "auth"
//! paths = ["/admin"]
//! time_limit = "1s"                 # a password hash takes tens of milliseconds to check
//! files = { htpasswd = "admin.htpasswd" }   # `user:hash` lines, read by the server
//! [plugins.config]
//! realm = "admin"
//! identity_header = "X-Authenticated-User"  # the verified identity, for the app
//! [plugins.config.basic]
//! users = { alice = "$argon2id$v=19$m=19456,t=2,p=1$...", bob = "$2b$10$..." }
//! [plugins.config.api_keys]
//! header = "X-Api-Key"
//! keys = { ci-bot = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" }
//! [plugins.config.jwt]
//! keys = [{ alg = "RS256", kid = "k1", pem = "-----BEGIN PUBLIC KEY-----\n..." },
//!         { alg = "HS256", secret = "..." }, { alg = "ES256", pem_file = "es" }]
//! # jwks_file = "jwks"              # or a JWK set, from `files`
//! issuer = "https://login.example.com"
//! audience = "api"
//! leeway = "30s"
//! identity_claim = "sub"
//! ```
//!
//! A request passes when any configured method accepts it; otherwise it gets 401 with a
//! `WWW-Authenticate` challenge for each method, before any body is read. Passwords are only ever
//! compared with bcrypt or argon2id hashes (a plain-text password in the config is refused at
//! load); API keys with SHA-256 digests, in constant time. Tokens must be signed with a configured
//! key and algorithm (never `none`), unexpired (`exp` required unless `require_exp = false`), past
//! `nbf`, and from the configured `iss` / for the `aud`. The identity header is removed from every
//! request first, so a client cannot send its own.
//!
//! A correct password's check is remembered for `remember` (5 minutes): hashing is slow on
//! purpose, and every check holds the event loop. Wrong passwords are checked every time; put a
//! `rate-limit` in front of this plugin.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request, clock, kv, metrics, units};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The plugin's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    realm: Option<String>,
    identity_header: Option<String>,
    basic: Option<BasicConfig>,
    api_keys: Option<ApiKeysConfig>,
    jwt: Option<JwtConfig>,
    remember: Option<units::Seconds>,
    /// Files the server read for this plugin (`[[plugins]] files`).
    #[serde(default)]
    files: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicConfig {
    #[serde(default)]
    users: HashMap<String, String>,
    /// The `files` entry holding `user:hash` lines (default `htpasswd`, if there is one).
    htpasswd: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeysConfig {
    header: Option<String>,
    /// identity -> `sha256:HEX` of the key.
    keys: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtConfig {
    #[serde(default)]
    keys: Vec<KeyConfig>,
    jwks_file: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Option<units::Seconds>,
    identity_claim: Option<String>,
    require_exp: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    alg: String,
    kid: Option<String>,
    pem: Option<String>,
    pem_file: Option<String>,
    secret: Option<String>,
}

/// A password hash.
#[derive(Debug)]
enum Hash {
    Bcrypt(String),
    Argon2(String),
}

/// A token verification key.
struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Jwt {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
    identity_claim: String,
    require_exp: bool,
}

/// The filter.
#[derive(Debug)]
pub struct Auth {
    realm: String,
    identity_header: String,
    users: HashMap<String, Hash>,
    api_header: Option<String>,
    api_keys: Vec<([u8; 32], String)>,
    jwt: Option<Jwt>,
    remember: Duration,
}

/// Why a request was refused, for the challenge.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No credentials at all.
    Missing,
    /// Credentials that did not check out.
    Invalid,
}

fn hash_of(user: &str, text: &str) -> Result<Hash, String> {
    if text.starts_with("$2a$") || text.starts_with("$2b$") || text.starts_with("$2y$") {
        return Ok(Hash::Bcrypt(text.to_string()));
    }
    if text.starts_with("$argon2id$") {
        argon2::PasswordHash::new(text)
            .map_err(|e| format!("basic: user {user:?}: not a valid argon2id hash: {e}"))?;
        return Ok(Hash::Argon2(text.to_string()));
    }
    Err(format!(
        "basic: user {user:?}: the password must be a bcrypt ($2b$...) or argon2id ($argon2id$...) \
         hash; plain-text passwords are refused"
    ))
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EDDSA" => Algorithm::EdDSA,
        other => return Err(format!("jwt: unknown algorithm {other:?}")),
    })
}

fn decoding_key(
    k: &KeyConfig,
    alg: Algorithm,
    files: &HashMap<String, String>,
) -> Result<DecodingKey, String> {
    let pem = match (&k.pem, &k.pem_file) {
        (Some(pem), None) => Some(pem.clone()),
        (None, Some(name)) => Some(
            files
                .get(name)
                .cloned()
                .ok_or_else(|| format!("jwt: pem_file {name:?} is not in this plugin's `files`"))?,
        ),
        (Some(_), Some(_)) => return Err("jwt: give a key's `pem` or `pem_file`, not both".into()),
        (None, None) => None,
    };
    let bad = |e: jsonwebtoken::errors::Error| format!("jwt: the {alg:?} key: {e}");
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = k
                .secret
                .as_deref()
                .ok_or_else(|| format!("jwt: an {alg:?} key needs a `secret`"))?;
            if secret.len() < 32 {
                return Err("jwt: an HMAC secret must be at least 32 bytes".into());
            }
            DecodingKey::from_secret(secret.as_bytes()).map_err(bad)
        }
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            let pem =
                pem.ok_or_else(|| format!("jwt: an {alg:?} key needs `pem` or `pem_file`"))?;
            DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(bad)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let pem =
                pem.ok_or_else(|| format!("jwt: an {alg:?} key needs `pem` or `pem_file`"))?;
            DecodingKey::from_ec_pem(pem.as_bytes()).map_err(bad)
        }
        Algorithm::EdDSA => {
            let pem =
                pem.ok_or_else(|| "jwt: an EdDSA key needs `pem` or `pem_file`".to_string())?;
            DecodingKey::from_ed_pem(pem.as_bytes()).map_err(bad)
        }
        other => Err(format!("jwt: algorithm {other:?} is not supported")),
    }
}

fn jwt(config: JwtConfig, files: &HashMap<String, String>) -> Result<Jwt, String> {
    let mut keys = Vec::new();
    for k in &config.keys {
        let alg = algorithm(&k.alg)?;
        keys.push(Key {
            alg,
            kid: k.kid.clone(),
            key: decoding_key(k, alg, files)?,
        });
    }
    if let Some(name) = &config.jwks_file {
        let text = files
            .get(name)
            .ok_or_else(|| format!("jwt: jwks_file {name:?} is not in this plugin's `files`"))?;
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(text).map_err(|e| format!("jwt: jwks_file {name:?}: {e}"))?;
        for jwk in &set.keys {
            let Some(alg) = jwk
                .common
                .key_algorithm
                .and_then(|a| algorithm(&a.to_string()).ok())
            else {
                return Err("jwt: every key of the JWK set needs an `alg`".into());
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("jwt: a JWK: {e}"))?;
            keys.push(Key {
                alg,
                kid: jwk.common.key_id.clone(),
                key,
            });
        }
    }
    if keys.is_empty() {
        return Err("jwt: give `keys` or a `jwks_file`".into());
    }
    Ok(Jwt {
        keys,
        issuer: config.issuer,
        audience: config.audience,
        leeway_s: config.leeway.map_or(30, |s| s.0.as_secs()),
        identity_claim: config.identity_claim.unwrap_or_else(|| "sub".into()),
        require_exp: config.require_exp.unwrap_or(true),
    })
}

impl Filter for Auth {
    type Config = Config;
    const HOOKS: &'static [Hook] = &[Hook::OnRequest];

    fn new(config: Config) -> Result<Self, String> {
        let mut users = HashMap::new();
        if let Some(basic) = &config.basic {
            for (user, text) in &basic.users {
                users.insert(user.clone(), hash_of(user, text)?);
            }
        }
        let htpasswd = config
            .basic
            .as_ref()
            .and_then(|b| b.htpasswd.clone())
            .or_else(|| {
                config
                    .files
                    .contains_key("htpasswd")
                    .then(|| "htpasswd".into())
            });
        if let Some(name) = htpasswd {
            let text = config.files.get(&name).ok_or_else(|| {
                format!("basic: htpasswd {name:?} is not in this plugin's `files`")
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{name} line {}: expected user:hash", n + 1))?;
                users.insert(user.to_string(), hash_of(user, hash)?);
            }
        }
        let (api_header, api_keys) = match config.api_keys {
            Some(a) => {
                let mut keys = Vec::new();
                for (identity, digest) in a.keys {
                    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                        format!(
                            "api_keys: {identity:?}: give the key's SHA-256 as \"sha256:HEX\" \
                             (printf %s KEY | sha256sum); plain keys are refused"
                        )
                    })?;
                    let bytes = decode_hex(hex)
                        .ok_or_else(|| format!("api_keys: {identity:?}: not 64 hex digits"))?;
                    keys.push((bytes, identity));
                }
                (
                    Some(
                        a.header
                            .unwrap_or_else(|| "x-api-key".into())
                            .to_ascii_lowercase(),
                    ),
                    keys,
                )
            }
            None => (None, Vec::new()),
        };
        let jwt = config.jwt.map(|j| jwt(j, &config.files)).transpose()?;
        if users.is_empty() && api_keys.is_empty() && jwt.is_none() {
            return Err("configure at least one of `basic`, `api_keys`, `jwt`".into());
        }
        Ok(Auth {
            realm: config.realm.unwrap_or_else(|| "restricted".into()),
            identity_header: config
                .identity_header
                .unwrap_or_else(|| "x-authenticated-user".into())
                .to_ascii_lowercase(),
            users,
            api_header,
            api_keys,
            jwt,
            remember: config.remember.map_or(Duration::from_secs(300), |s| s.0),
        })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        // Whatever happens next, the client's own claim of an identity is gone.
        req.remove_header(&self.identity_header);
        match self.identify(req) {
            Ok(identity) => {
                metrics::add("accepted", 1);
                let _ = req.set_header(&self.identity_header, &identity);
                Action::Continue
            }
            Err(refusal) => {
                metrics::add(
                    if refusal == Refusal::Missing {
                        "missing"
                    } else {
                        "refused"
                    },
                    1,
                );
                self.challenge(refusal)
            }
        }
    }
}

gatehouse_sdk::export_filter!(Auth);

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Auth {
    /// The identity the request proves, or why not.
    fn identify(&self, req: &Request) -> Result<String, Refusal> {
        let mut offered = false;
        if let Some(header) = &self.api_header
            && let Some(key) = req.header_bytes(header)
        {
            offered = true;
            if let Some(identity) = self.api_key(&key) {
                return Ok(identity);
            }
        }
        if let Some(authorization) = req.header("authorization") {
            let (scheme, rest) = authorization
                .trim()
                .split_once(' ')
                .unwrap_or((authorization.as_str(), ""));
            if scheme.eq_ignore_ascii_case("basic") && !self.users.is_empty() {
                offered = true;
                if let Some(user) = self.basic(rest.trim()) {
                    return Ok(user);
                }
            } else if scheme.eq_ignore_ascii_case("bearer")
                && let Some(jwt) = &self.jwt
            {
                offered = true;
                if let Some(identity) = self.bearer(jwt, rest.trim()) {
                    return Ok(identity);
                }
            }
        }
        Err(if offered {
            Refusal::Invalid
        } else {
            Refusal::Missing
        })
    }

    fn api_key(&self, key: &[u8]) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Every key is compared, in constant time, so timing tells nothing.
        let mut found = None;
        for (expected, identity) in &self.api_keys {
            if bool::from(expected.ct_eq(&digest)) {
                found = Some(identity.clone());
            }
        }
        found
    }

    fn basic(&self, encoded: &str) -> Option<String> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        let hash = self.users.get(user)?;
        // A correct check is remembered (keyed by a digest of the user, password and hash), so
        // the slow hash runs once per `remember`, not on every request.
        let memo = {
            let mut h = Sha256::new();
            h.update(user.as_bytes());
            h.update([0]);
            h.update(password.as_bytes());
            h.update([0]);
            h.update(match hash {
                Hash::Bcrypt(s) | Hash::Argon2(s) => s.as_bytes(),
            });
            let digest: [u8; 32] = h.finalize().into();
            format!(
                "ok:{}",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        };
        if kv::get(&memo).is_some() {
            return Some(user.to_string());
        }
        let ok = match hash {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Argon2(h) => argon2::PasswordHash::new(h).is_ok_and(|parsed| {
                argon2::PasswordVerifier::verify_password(
                    &argon2::Argon2::default(),
                    password.as_bytes(),
                    &parsed,
                )
                .is_ok()
            }),
        };
        if ok {
            kv::set(&memo, b"1", Some(self.remember));
            Some(user.to_string())
        } else {
            None
        }
    }

    fn bearer(&self, jwt: &Jwt, token: &str) -> Option<String> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let now_s = clock::now_ms() / 1000;
        for key in &jwt.keys {
            if key.alg != header.alg {
                continue;
            }
            if let (Some(want), Some(have)) = (&key.kid, &header.kid)
                && want != have
            {
                continue;
            }
            let mut validation = Validation::new(key.alg);
            // Times are checked below against the host's clock.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.required_spec_claims.clear();
            validation.validate_aud = jwt.audience.is_some();
            if let Some(aud) = &jwt.audience {
                validation.set_audience(&[aud]);
            }
            if let Some(iss) = &jwt.issuer {
                validation.set_issuer(&[iss]);
            }
            let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            else {
                continue;
            };
            let claims = data.claims;
            let exp = claims.get("exp").and_then(serde_json::Value::as_u64);
            match exp {
                Some(exp) if exp.saturating_add(jwt.leeway_s) <= now_s => return None,
                None if jwt.require_exp => return None,
                _ => {}
            }
            if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_u64)
                && nbf > now_s.saturating_add(jwt.leeway_s)
            {
                return None;
            }
            if jwt.issuer.is_some() && claims.get("iss").is_none() {
                return None;
            }
            return claims
                .get(&jwt.identity_claim)
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
        }
        None
    }

    fn challenge(&self, refusal: Refusal) -> Action {
        let mut r = LocalResponse::new(401).text("401 Unauthorized\n");
        let realm = self.realm.replace(['"', '\\'], "");
        if !self.users.is_empty() {
            r = r.header(
                "www-authenticate",
                format!("Basic realm=\"{realm}\", charset=\"UTF-8\""),
            );
        }
        if self.jwt.is_some() {
            let error = if refusal == Refusal::Invalid {
                ", error=\"invalid_token\""
            } else {
                ""
            };
            r = r.header(
                "www-authenticate",
                format!("Bearer realm=\"{realm}\"{error}"),
            );
        }
        if let Some(header) = &self.api_header {
            r = r.header(
                "www-authenticate",
                format!("ApiKey realm=\"{realm}\", header=\"{header}\""),
            );
        }
        r.into()
    }
}

#[cfg(test)]
mod tests;
