//! The auth plugin through the SDK's native harness, with real hashes and signed tokens.

use std::time::Duration;

use gatehouse_sdk::testing::{self, TestRequest};
use gatehouse_sdk::{Action, LocalResponse};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::Auth;

const RSA_KEY: &str = include_str!("../testdata/rsa.key");
const RSA_PUB: &str = include_str!("../testdata/rsa.pub");
const EC_KEY: &str = include_str!("../testdata/ec.key");
const EC_PUB: &str = include_str!("../testdata/ec.pub");
const ED_KEY: &str = include_str!("../testdata/ed.key");
const ED_PUB: &str = include_str!("../testdata/ed.pub");
const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!";

fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").expect("salt");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

fn auth(config: serde_json::Value) -> Auth {
    testing::reset();
    testing::init(&config.to_string()).expect("config")
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The identity header the request went on with, or the refusal.
fn run(f: &Auth, req: TestRequest) -> Result<String, LocalResponse> {
    let mut req = req;
    match testing::on_request(f, &mut req) {
        Action::Continue => Ok(req.header("x-authenticated-user").unwrap_or_default()),
        Action::Respond(r) => Err(r),
        other => panic!("{other:?}"),
    }
}

fn challenges(r: &LocalResponse) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn token(alg: jsonwebtoken::Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign")
}

fn now() -> u64 {
    gatehouse_sdk::clock::now_ms() / 1000
}

#[test]
fn basic_auth_against_bcrypt_and_argon2id() {
    let bcrypt_hash = bcrypt::hash("hunter2", 4).expect("bcrypt");
    let f = auth(json!({"realm": "admin", "basic": {"users": {
        "alice": argon2_hash("correct horse"), "bob": bcrypt_hash}}}));
    let with = |user: &str, pw: &str| {
        TestRequest::get("/admin").with_header("authorization", &basic(user, pw))
    };
    assert_eq!(run(&f, with("alice", "correct horse")), Ok("alice".into()));
    assert_eq!(run(&f, with("bob", "hunter2")), Ok("bob".into()));
    let refused = run(&f, with("bob", "hunter3")).expect_err("wrong password");
    assert_eq!(refused.status, 401);
    assert_eq!(
        challenges(&refused),
        vec!["Basic realm=\"admin\", charset=\"UTF-8\""]
    );
    assert!(run(&f, with("mallory", "x")).is_err());
    assert!(run(&f, TestRequest::get("/admin")).is_err());
    // The client's own identity header never reaches the app.
    let forged = TestRequest::get("/admin").with_header("x-authenticated-user", "root");
    assert!(run(&f, forged).is_err());
    let mut honest = with("bob", "hunter2").with_header("x-authenticated-user", "root");
    assert_eq!(testing::on_request(&f, &mut honest), Action::Continue);
    let values: Vec<_> = honest
        .headers
        .iter()
        .filter(|(n, _)| n == "x-authenticated-user")
        .collect();
    assert_eq!(values.len(), 1);
    assert_eq!(
        honest.header("x-authenticated-user").as_deref(),
        Some("bob")
    );
}

#[test]
fn htpasswd_files_and_plain_passwords() {
    let bcrypt_hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let f = auth(json!({"files": {"htpasswd": format!("# users\ncarol:{bcrypt_hash}\n")}}));
    let req = TestRequest::get("/").with_header("authorization", &basic("carol", "pw"));
    assert_eq!(run(&f, req), Ok("carol".into()));
    let err = testing::init::<Auth>(&json!({"basic": {"users": {"eve": "password"}}}).to_string())
        .expect_err("plain text");
    assert!(err.contains("plain-text passwords are refused"), "{err}");
    assert!(testing::init::<Auth>("{}").is_err());
}

#[test]
fn api_keys_by_their_digest() {
    let real = {
        use sha2::Digest;
        let d: [u8; 32] = sha2::Sha256::digest(b"s3cret").into();
        format!(
            "sha256:{}",
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let f = auth(json!({"api_keys": {"keys": {"ci-bot": real}}}));
    let ok = TestRequest::get("/").with_header("x-api-key", "s3cret");
    assert_eq!(run(&f, ok), Ok("ci-bot".into()));
    let bad =
        run(&f, TestRequest::get("/").with_header("x-api-key", "guess")).expect_err("bad key");
    assert!(challenges(&bad)[0].starts_with("ApiKey"));
    assert!(
        testing::init::<Auth>(&json!({"api_keys": {"keys": {"x": "s3cret"}}}).to_string()).is_err()
    );
}

#[test]
fn jwt_bearer_tokens_in_each_algorithm_with_claims_checked() {
    let f = auth(json!({"jwt": {
        "keys": [
            {"alg": "RS256", "kid": "r", "pem": RSA_PUB},
            {"alg": "ES256", "pem_file": "ec"},
            {"alg": "EdDSA", "pem": ED_PUB},
            {"alg": "HS256", "secret": SECRET}
        ],
        "issuer": "https://login.test", "audience": "api"},
        "files": {"ec": EC_PUB}}));
    let claims = |extra: serde_json::Value| {
        let mut c =
            json!({"sub": "dana", "iss": "https://login.test", "aud": "api", "exp": now() + 600});
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        c
    };
    let bearer =
        |t: String| TestRequest::get("/").with_header("authorization", &format!("Bearer {t}"));
    use jsonwebtoken::Algorithm::*;
    let rsa = EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).expect("rsa");
    let ec = EncodingKey::from_ec_pem(EC_KEY.as_bytes()).expect("ec");
    let ed = EncodingKey::from_ed_pem(ED_KEY.as_bytes()).expect("ed");
    let hs = EncodingKey::from_secret(SECRET.as_bytes()).expect("hs");
    for (alg, key) in [(RS256, &rsa), (ES256, &ec), (EdDSA, &ed), (HS256, &hs)] {
        assert_eq!(
            run(&f, bearer(token(alg, key, claims(json!({}))))),
            Ok("dana".into()),
            "{alg:?}"
        );
    }
    let refused = |t: String| run(&f, bearer(t)).expect_err("refused");
    let expired = refused(token(HS256, &hs, claims(json!({"exp": now() - 120}))));
    assert!(challenges(&expired)[0].contains("invalid_token"));
    refused(token(HS256, &hs, claims(json!({"nbf": now() + 600}))));
    refused(token(HS256, &hs, claims(json!({"aud": "other"}))));
    refused(token(
        HS256,
        &hs,
        claims(json!({"iss": "https://evil.test"})),
    ));
    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().expect("object").remove("exp");
    refused(token(HS256, &hs, no_exp));
    // Signed with another key, or the algorithm swapped: refused.
    refused(token(
        HS256,
        &EncodingKey::from_secret(b"another-secret-of-thirty-two-bytes!!").expect("hs"),
        claims(json!({})),
    ));
    let forged = token(
        HS256,
        &EncodingKey::from_secret(RSA_PUB.as_bytes()).expect("hs"),
        claims(json!({})),
    );
    refused(forged);
    // Time moves: a token good now expires.
    let t = token(HS256, &hs, claims(json!({"exp": now() + 60})));
    assert!(run(&f, bearer(t.clone())).is_ok());
    testing::advance(Duration::from_secs(200));
    assert!(run(&f, bearer(t)).is_err());
}

#[test]
fn a_remembered_check_is_only_for_the_right_password() {
    let f = auth(json!({"basic": {"users": {"bob": bcrypt::hash("pw", 4).expect("bcrypt")}}}));
    let req = || TestRequest::get("/").with_header("authorization", &basic("bob", "pw"));
    assert!(run(&f, req()).is_ok());
    assert!(run(&f, req()).is_ok());
    // Remembered only for the right password: a wrong one is still refused.
    let wrong = TestRequest::get("/").with_header("authorization", &basic("bob", "pW"));
    assert!(run(&f, wrong).is_err());
    assert_eq!(testing::metric("accepted"), 2);
}
