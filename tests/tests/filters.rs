//! The first-party filters through the binary: ip-filter, rate-limit, auth, headers, cors and
//! redirect, each configured as a user would.

use std::collections::HashMap;

use gatehouse_tests::{Gatehouse, admin_metric as metric, client};
use reqwest::StatusCode;

const ECHO_APP: &str = r#"
import json

def app(environ, start_response):
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    body = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"#;

/// bcrypt (cost 8) of `hunter2`, and argon2id of `correct horse`.
const BOB_BCRYPT: &str = "$2b$08$nU3UtTvfTmUi2eds0v3IS.gu.CN.W4rG7EHbHucYoTGP8aDt0T3Pe";
const ALICE_ARGON2: &str = "$argon2id$v=19$m=19456,t=2,p=1$Z2F0ZWhvdXNldGVzdHM$r171AO9C4pFeVe50eezyqDzZGPYwIqx7CTboYwQw68g";

/// A server with a static `site` (index.html, admin/index.html) as the default target, a WSGI
/// echo app as `app`, and `plugins` in front.
fn serve(plugins: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, Gatehouse) {
    let dir = tempfile::tempdir().expect("tmp");
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("admin")).expect("mkdir");
    std::fs::write(site.join("index.html"), "home").expect("write");
    std::fs::write(site.join("admin/index.html"), "admin").expect("write");
    std::fs::write(dir.path().join("echo.py"), ECHO_APP).expect("write");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nthreads = 2\ndefault_target = \"site\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [targets.site]\nstatic = \"site\"\n\
         [targets.app]\nwsgi = \"echo:app\"\nchdir = \"{}\"\nworkers = 1\n{plugins}",
        dir.path().display()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    (dir, gh)
}

fn header(r: &reqwest::blocking::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[test]
fn ip_filter_guards_the_paths_it_is_scoped_to() {
    let (_dir, gh) = serve(
        "[[plugins]]\nuse = \"ip-filter\"\npaths = [\"/admin\"]\n[plugins.config]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        &[],
    );
    let admin = client().get(gh.url("/admin/")).send().expect("get");
    assert_eq!(admin.status(), StatusCode::FORBIDDEN);
    let home = client().get(gh.url("/")).send().expect("get");
    assert_eq!(home.status(), StatusCode::OK);
    // An encoded path is the same path: the filter still applies.
    let encoded = client().get(gh.url("/%61dmin/")).send().expect("get");
    assert_eq!(encoded.status(), StatusCode::FORBIDDEN);

    let (_dir, gh) = serve(
        "[[plugins]]\nuse = \"ip-filter\"\n[plugins.config]\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]\n",
        &[],
    );
    assert_eq!(
        client().get(gh.url("/")).send().expect("get").status(),
        StatusCode::FORBIDDEN,
        "the more specific deny wins"
    );
}

#[test]
fn ip_filter_is_called_once_per_allowed_client_and_event_loop_and_for_every_refusal() {
    let (_dir, gh) = serve(
        "[[plugins]]\nuse = \"ip-filter\"\npaths = [\"/admin\"]\n[plugins.config]\nallow = [\"127.0.0.0/8\"]\n\
         [[plugins]]\nuse = \"ip-filter\"\nname = \"strict\"\npaths = [\"/strict\"]\n[plugins.config]\ndeny = [\"127.0.0.1\"]\n",
        &[],
    );
    let calls = |plugin: &str| {
        metric(
            &gh,
            &format!("gatehouse_plugin_calls_total{{plugin=\"{plugin}\",hook=\"on-request\"}}"),
        )
    };
    // New connections spread over both event loops.
    for _ in 0..20 {
        let c = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let admin = c.get(gh.url("/admin/")).send().expect("get");
        assert_eq!(admin.status(), StatusCode::OK);
        let strict = c.get(gh.url("/strict")).send().expect("get");
        assert_eq!(strict.status(), StatusCode::FORBIDDEN);
    }
    let allowed = calls("ip-filter");
    assert!(
        (1.0..=2.0).contains(&allowed),
        "{allowed} calls for one client"
    );
    assert_eq!(
        calls("strict"),
        20.0,
        "a refusal is decided by the plugin each time"
    );
}

#[test]
fn rate_limit_is_exact_across_event_loops_and_says_when_to_retry() {
    let (_dir, gh) = serve(
        "[[plugins]]\nuse = \"rate-limit\"\n[plugins.config]\nrate = 5\nper = \"1m\"\nburst = 4\nname = \"site\"\n",
        &[],
    );
    // New connections spread over both event loops: the limit is one count for the process.
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut limited = None;
    for _ in 0..20 {
        let r = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
            .get(gh.url("/"))
            .send()
            .expect("get");
        *statuses.entry(r.status().as_u16()).or_default() += 1;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
        } else {
            assert_eq!(
                header(&r, "ratelimit-policy").as_deref(),
                Some("\"site\";q=5;w=60;burst=4")
            );
        }
    }
    assert_eq!(statuses.get(&200), Some(&5), "burst 4 + 1: {statuses:?}");
    assert_eq!(statuses.get(&429), Some(&15));
    let r = limited.expect("a 429");
    let retry: u64 = header(&r, "retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=12).contains(&retry), "one request every 12 s: {retry}");
    assert!(
        header(&r, "ratelimit")
            .expect("ratelimit")
            .starts_with("\"site\";r=0;")
    );
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(r.text().expect("body"), "429 Too Many Requests\n");
    // The host applied the plugin's rule: the plugin was never called for a request, and its
    // counter of refusals counted each one.
    assert_eq!(
        metric(
            &gh,
            "gatehouse_plugin_calls_total{plugin=\"rate-limit\",hook=\"on-request\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &gh,
            "gatehouse_plugin_total{plugin=\"rate-limit\",name=\"limited\"}"
        ),
        15.0
    );
}

#[test]
fn auth_admits_known_users_and_keys_and_the_app_sees_who() {
    let htpasswd = format!("# admins\nbob:{BOB_BCRYPT}\n");
    let plugins = format!(
        "[[plugins]]\nuse = \"auth\"\npaths = [\"/app\"]\ntime_limit = \"2s\"\nfiles = {{ htpasswd = \"admins.htpasswd\" }}\n\
         [plugins.config]\nrealm = \"staff\"\n[plugins.config.basic]\nusers = {{ alice = \"{ALICE_ARGON2}\" }}\n\
         [plugins.config.api_keys]\nkeys = {{ ci = \"sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\" }}\n\
         [[plugins]]\nuse = \"router\"\n[[plugins.config.routes]]\npath = \"/app\"\ntarget = \"app\"\n[[plugins.config.routes]]\npath = \"/\"\ntarget = \"site\"\n"
    );
    let (_dir, gh) = serve(&plugins, &[("admins.htpasswd", &htpasswd)]);
    let c = client();
    let refused = c.get(gh.url("/app")).send().expect("get");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<_> = refused
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        challenges.contains(&"Basic realm=\"staff\", charset=\"UTF-8\""),
        "{challenges:?}"
    );
    let wrong = c
        .get(gh.url("/app"))
        .basic_auth("bob", Some("hunter3"))
        .send()
        .expect("get");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    for (user, password) in [("bob", "hunter2"), ("alice", "correct horse")] {
        let r = c
            .get(gh.url("/app"))
            .basic_auth(user, Some(password))
            .header("x-authenticated-user", "root")
            .send()
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "{user}");
        let seen: serde_json::Value = r.json().expect("json");
        assert_eq!(
            seen["HTTP_X_AUTHENTICATED_USER"], user,
            "the verified user, not the forged one"
        );
    }
    // sha256("password") is the configured key's digest.
    let r = c
        .get(gh.url("/app"))
        .header("x-api-key", "password")
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let seen: serde_json::Value = r.json().expect("json");
    assert_eq!(seen["HTTP_X_AUTHENTICATED_USER"], "ci");
    // Outside the scoped paths nothing is asked.
    assert_eq!(
        c.get(gh.url("/")).send().expect("get").status(),
        StatusCode::OK
    );
}

#[test]
fn auth_refuses_an_upload_before_reading_it() {
    let plugins = format!(
        "[[plugins]]\nuse = \"auth\"\n[plugins.config.basic]\nusers = {{ bob = \"{BOB_BCRYPT}\" }}\n"
    );
    let (_dir, gh) = serve(&plugins, &[]);
    // A client that waits for 100-continue is answered 401 and never sends its body.
    let exchange = gh.raw(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n",
        std::time::Duration::from_secs(3),
    );
    let text = String::from_utf8_lossy(&exchange.bytes);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
}

#[test]
fn headers_cors_and_redirect() {
    let (_dir, gh) = serve(
        "[[plugins]]\nuse = \"redirect\"\nhosts = [\"old.example\"]\n[plugins.config]\nhost = \"new.example\"\n\
         [[plugins]]\nuse = \"cors\"\n[plugins.config]\nallow_origins = [\"https://app.example\"]\nallow_methods = [\"GET\", \"PUT\"]\nallow_headers = [\"content-type\"]\nmax_age = \"10m\"\n\
         [[plugins]]\nuse = \"headers\"\n[plugins.config]\nsecurity = true\n[plugins.config.response]\nset = { \"Cache-Control\" = \"no-store\" }\nremove = [\"Last-Modified\"]\n",
        &[],
    );
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = c
        .get(gh.url("/"))
        .header("origin", "https://app.example")
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(header(&r, "x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(header(&r, "last-modified"), None);
    assert_eq!(header(&r, "strict-transport-security"), None, "plain HTTP");
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let preflight = c
        .request(reqwest::Method::OPTIONS, gh.url("/"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .expect("options");
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&preflight, "access-control-max-age").as_deref(),
        Some("600")
    );
    let refused = c
        .request(reqwest::Method::OPTIONS, gh.url("/"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .expect("options");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let moved = c
        .get(gh.url("/a?b=1"))
        .header("host", "old.example")
        .send()
        .expect("get");
    assert_eq!(moved.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        header(&moved, "location").as_deref(),
        Some("http://new.example/a?b=1")
    );
}
