//! The plugin chain, black-box: fixture plugins built from source (tests/build.rs), loaded by the
//! real binary from a real config.

use std::process::Command;
use std::time::Duration;

use gatehouse_tests::{Gatehouse, binary, client, site};
use reqwest::StatusCode;

const PROBE: &str = env!("FIXTURE_PROBE");
const ADVERSARIAL: &str = env!("FIXTURE_ADVERSARIAL");
const SERVICES: &str = env!("FIXTURE_SERVICES");
const BODY_REWRITE: &str = env!("FIXTURE_BODY_REWRITE");

/// A config with a static site at `/`, a second static target `other`, and `plugins` appended.
fn config(plugins: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ndefault_target = \"site\"\n\n[targets.site]\nstatic = \"site\"\n\n[targets.other]\nstatic = \"site/other\"\n\n{plugins}"
    )
}

fn start(plugins: &str) -> (tempfile::TempDir, Gatehouse) {
    let dir = site(&[
        ("index.html", b"hello from site\n"),
        ("other/index.html", b"hello from other\n"),
        ("other/page.txt", b"other page\n"),
    ]);
    let gh = Gatehouse::start(dir.path(), &config(plugins));
    (dir, gh)
}

/// The labels probes appended to `x-chain-back`, in the order on-response ran.
fn chain_back(r: &reqwest::blocking::Response) -> Vec<String> {
    r.headers()
        .get_all("x-chain-back")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect()
}

fn probe(label: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nuse = \"{PROBE}\"\nname = \"{label}\"\nconfig = {{ label = \"{label}\"{extra} }}\n"
    )
}

#[test]
fn a_continue_for_the_client_from_a_call_that_changed_the_request_is_not_kept() {
    let plugins = [
        probe("a", ", continue_for_client = true"),
        probe("b", ", echo = true"),
    ]
    .concat();
    let (_dir, gh) = start(&plugins);
    // One connection: one event loop, whose memo would hold after the first request.
    let c = client();
    for i in 0..5 {
        let body = c
            .get(gh.url("/"))
            .send()
            .expect("request")
            .text()
            .expect("body");
        assert!(body.contains("chain=a,b\n"), "request {i}: {body}");
    }
}

#[test]
fn chain_runs_in_order_and_back_in_reverse() {
    let plugins = [
        probe("a", ", context = { user = \"alice\" }"),
        probe("b", ", report_context = \"user\""),
        probe("c", ", echo = true"),
    ]
    .concat();
    let (_dir, gh) = start(&plugins);
    let r = client()
        .post(gh.url("/some/path?x=1"))
        .body("payload")
        .send()
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let back = chain_back(&r);
    assert_eq!(
        back,
        ["c", "b", "a"],
        "on-response runs in reverse, the responder included"
    );
    assert_eq!(
        r.headers()["x-context-user"],
        "alice",
        "context passes between plugins"
    );
    let body = r.text().expect("body");
    for line in [
        "chain=a,b,c",
        "method=POST",
        "path=/some/path",
        "query=x=1",
        "client=127.0.0.1",
        "scheme=http",
        "context.user=alice",
        "body=payload",
    ] {
        assert!(body.lines().any(|l| l == line), "{line:?} not in\n{body}");
    }
}

#[test]
fn plugins_see_the_client_address_over_ipv6_and_none_over_a_unix_socket() {
    let dir = site(&[("index.html", b"hello\n")]);
    let config = format!(
        "[server]\nlisten = [\"[::1]:0\", \"unix:gh.sock\"]\ndefault_target = \"site\"\n\n[targets.site]\nstatic = \"site\"\n\n{}{}",
        probe("a", ", report_client = true"),
        probe("b", ", echo = true"),
    );
    let gh = Gatehouse::start(dir.path(), &config);
    // on-request gets the address with the call; on-response asks the host for it.
    let r = client()
        .get(format!("http://{}/", gh.addrs[0]))
        .send()
        .expect("request over IPv6");
    assert_eq!(r.headers()["x-client"], "::1");
    let body = r.text().expect("body");
    assert!(body.lines().any(|l| l == "client=::1"), "{body}");

    let sock = gh.addrs[1].strip_prefix("unix:").expect("unix listener");
    let out = Command::new("curl")
        .args(["-si", "--unix-socket", sock, "http://localhost/"])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("x-client: (none)"), "{text}");
    assert!(text.lines().any(|l| l == "client="), "{text}");
}

#[test]
fn plugins_rewrite_method_path_and_query_for_later_plugins_and_the_target() {
    // The first probe rewrites; the second echoes what it sees.
    let plugins = [
        probe(
            "w",
            ", set_method = \"PUT\", set_path = \"/new/place\", set_query = \"a=1&b=%20\"",
        ),
        probe("e", ", echo = true"),
    ]
    .concat();
    let (_dir, gh) = start(&plugins);
    let text = client()
        .get(gh.url("/old?x=1"))
        .send()
        .expect("request")
        .text()
        .expect("body");
    for line in ["method=PUT", "path=/new/place", "query=a=1&b=%20"] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }

    // Methods without a case of their own in the contract cross as tokens, both ways.
    let propfind = reqwest::Method::from_bytes(b"PROPFIND").expect("method");
    let rewrite = [
        probe("w", ", set_method = \"MKCOL\""),
        probe("e", ", echo = true"),
    ]
    .concat();
    for (plugins, seen) in [
        (rewrite, "method=MKCOL"),
        (probe("e", ", echo = true"), "method=PROPFIND"),
    ] {
        let (_dir, gh) = start(&plugins);
        let text = client()
            .request(propfind.clone(), gh.url("/x"))
            .send()
            .expect("request")
            .text()
            .expect("body");
        assert!(text.lines().any(|l| l == seen), "{seen:?} not in\n{text}");
    }

    // The static target serves the rewritten path.
    let (_dir, gh) = start(&probe("w", ", set_path = \"/other/page.txt\""));
    let r = client().get(gh.url("/anything")).send().expect("request");
    assert_eq!(r.text().expect("body"), "other page\n");
}

#[test]
fn http2_requests_go_through_the_chain_with_their_authority() {
    let (_dir, gh) = start(&probe("e", ", echo = true"));
    let r = gatehouse_tests::h2_client()
        .get(gh.url("/h2?q=1"))
        .send()
        .expect("request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let text = r.text().expect("body");
    for line in ["path=/h2", "query=q=1", "host=127.0.0.1"] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
}

#[test]
fn local_response_skips_later_plugins_and_the_target() {
    let plugins = [probe("a", ""), probe("b", ", echo = true"), probe("c", "")].concat();
    let (_dir, gh) = start(&plugins);
    let r = client().get(gh.url("/")).send().expect("request");
    let back = chain_back(&r);
    assert_eq!(back, ["b", "a"], "c never ran");
    assert!(r.text().expect("body").contains("chain=a,b\n"));
}

#[test]
fn plugins_choose_targets_and_strip_prefixes() {
    let plugins = probe("r", ", route = \"other\", strip_prefix = \"/o\"");
    let (_dir, gh) = start(&plugins);
    let c = client();
    let r = c.get(gh.url("/o/page.txt")).send().expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), "other page\n");
    let log = gh.wait_stdout("target=other", Duration::from_secs(5));
    assert!(log.contains("target=other"), "{log}");
    // A mount point the path is not below is the plugin's error, and says so.
    assert_eq!(
        c.get(gh.url("/page.txt")).send().expect("request").status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let log = gh.wait_stderr("is not a prefix of the path", Duration::from_secs(5));
    assert!(
        log.contains("strip_prefix") && log.contains("/page.txt") && log.contains("plugin"),
        "{log}"
    );
}

#[test]
fn a_route_to_an_unknown_target_fails_with_its_name() {
    let plugins = probe("r", ", route = \"nope\"");
    let (_dir, gh) = start(&plugins);
    let r = client().get(gh.url("/page.txt")).send().expect("request");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let log = gh.wait_stderr("not a configured target", Duration::from_secs(5));
    assert!(log.contains("nope"), "{log}");
    // The server stays up and the next request gets the same clear answer.
    let r = client().get(gh.url("/page.txt")).send().expect("request");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn router_plugin_routes_by_host_and_path() {
    let plugins = r#"
[[plugins]]
use = "router"
[[plugins.config.routes]]
path = "/o/"
target = "other"
strip_prefix = true
[[plugins.config.routes]]
host = "*.example.com"
target = "other"
[[plugins.config.routes]]
exact = "/"
target = "site"
[[plugins.config.routes]]
path = "/old/"
redirect = "https://example.org{path}"
status = 301
"#;
    let (_dir, gh) = start(plugins);
    let c = client();
    assert_eq!(
        c.get(gh.url("/"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "hello from site\n"
    );
    assert_eq!(
        c.get(gh.url("/o/page.txt"))
            .send()
            .expect("get")
            .text()
            .expect("body"),
        "other page\n"
    );
    let r = c
        .get(gh.url("/"))
        .header("host", "www.example.com")
        .send()
        .expect("get");
    assert_eq!(r.text().expect("body"), "hello from other\n");
    let r = c.get(gh.url("/old/x?y=1")).send().expect("get");
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers()["location"], "https://example.org/old/x?y=1");
    let r = c.get(gh.url("/nothing")).send().expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        r.text()
            .expect("body")
            .contains("no route for 127.0.0.1/nothing")
    );
}

#[test]
fn request_and_response_bodies_can_be_changed() {
    let plugins = [
        format!("[[plugins]]\nuse = \"{BODY_REWRITE}\"\n"),
        probe("u", ", upper_body = true"),
        probe("e", ", echo = true"),
    ]
    .concat();
    let (_dir, gh) = start(&plugins);
    let r = client()
        .post(gh.url("/"))
        .body("hello body")
        .send()
        .expect("request");
    assert_eq!(r.headers()["x-rewritten"], "yes");
    let text = r.text().expect("body");
    assert!(text.contains("body=HELLO BODY\n"), "{text}");
    assert!(
        text.contains("body-seen=yes\n"),
        "a header set after reading the body: {text}"
    );

    // A streamed file body is buffered for a plugin that asked for it.
    let plugins = format!("[[plugins]]\nuse = \"{BODY_REWRITE}\"\n");
    let (_dir, gh) = start(&plugins);
    let r = client().get(gh.url("/")).send().expect("request");
    assert_eq!(r.headers()["content-length"], "16");
    assert_eq!(r.text().expect("body"), "HELLO from site\n");
}

#[test]
fn misbehaving_plugins_get_500_and_the_next_request_succeeds() {
    // The budget leaves room for /alloc and /huge, which take ~0.2-0.4 s in a debug build (a
    // fresh instance plus 17-256 MiB of writes), so only /loop runs into it.
    let plugins = format!(
        "[[plugins]]\nuse = \"{ADVERSARIAL}\"\ntime_limit = \"2s\"\nmemory_limit = \"256MiB\"\n"
    );
    let (_dir, gh) = start(&plugins);
    let c = client();
    for (path, reason) in [
        ("/loop", "ran longer than its time_limit"),
        ("/alloc", "ran out of memory"),
        ("/panic", "adversarial fixture panicked on purpose"),
        ("/trap", "trapped"),
        ("/huge", "larger than the"),
    ] {
        let r = c.get(gh.url(path)).send().expect("request");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(
            r.text().expect("body"),
            "500 Internal Server Error\n",
            "no details leak"
        );
        let r = c.get(gh.url("/")).send().expect("request");
        assert_eq!(r.status(), StatusCode::OK, "the request after {path}");
        assert_eq!(r.text().expect("body"), "hello from site\n");
        let log = gh.wait_stderr(reason, Duration::from_secs(5));
        assert!(
            log.contains("adversarial"),
            "the log names the plugin:\n{log}"
        );
    }
}

#[test]
fn answers_left_with_the_host_hold_only_while_what_they_were_read_from_does() {
    let plugins = format!("[[plugins]]\nuse = \"{ADVERSARIAL}\"\n");
    let (_dir, gh) = start(&plugins);
    let c = client();
    let get = |path: &str| {
        let r = c.get(gh.url(path)).send().expect("request");
        (r.status().as_u16(), r.text().expect("body"))
    };
    // A key never read, 40 names, a bad field, 20 keys: refused. A good one is kept.
    let plugin = (
        200,
        "refused=[false, false, false, false] kept=true\n".to_string(),
    );
    assert_eq!(get("/offer"), plugin);
    assert_eq!(get("/offer"), (200, "from the host\n".into()), "not called");
    assert_eq!(get("/offer"), (200, "from the host\n".into()));
    // A write of the key the answer was read from ends it.
    assert_eq!(get("/offer-bump"), (200, "bumped\n".into()));
    assert_eq!(get("/offer"), plugin);
    assert_eq!(get("/offer"), (200, "from the host\n".into()));
    // An offer from a call that goes on to the target is not kept.
    for _ in 0..2 {
        assert_eq!(get("/offer-continue").0, 404, "the site's answer");
    }

    // Fields for the response are bounded as any a plugin sets (more than an HTTP client parses
    // by default: read raw).
    let raw = gh.raw(
        b"GET /many-response-headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&raw.bytes);
    assert!(
        text.starts_with("HTTP/1.1 404"),
        "{}",
        &text[..text.len().min(200)]
    );
    let set = text.lines().filter(|l| l.starts_with("x-r")).count();
    assert_eq!(set, 1000, "stopped at the bound");
    // Framing fields are the server's: refused. Fields set for the response reach a local one.
    let r = c
        .get(gh.url("/framing-response-header"))
        .send()
        .expect("request");
    assert_eq!(r.headers()["x-fine"], "1");
    assert_eq!(r.text().expect("body"), "framing=false fine=true\n");
    assert_eq!(get("/").0, 200, "still serving");
}

#[test]
fn the_sandbox_grants_no_files_environment_or_network() {
    let plugins = format!("[[plugins]]\nuse = \"{ADVERSARIAL}\"\n");
    let (_dir, gh) = start(&plugins);
    let r = client().get(gh.url("/escape")).send().expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.text().expect("body"),
        "file=false dir=false env=0 net=false dns=false\n"
    );
}

#[test]
fn compiled_plugins_are_cached_on_disk() {
    let dir = site(&[("index.html", b"cached\n"), ("other/index.html", b"o")]);
    let text = config(&probe("c", "")).replace(
        "[server]\n",
        "[server]\nplugin_cache_dir = \"wasm-cache\"\n",
    );
    let mut written = None;
    for _ in 0..2 {
        let gh = Gatehouse::start(dir.path(), &text);
        let r = client().get(gh.url("/")).send().expect("get");
        assert_eq!(r.headers()["x-chain-back"], "c");
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("wasm-cache"))
            .expect("cache dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(
            entries[0].extension().and_then(|e| e.to_str()),
            Some("cwasm")
        );
        let mtime = std::fs::metadata(&entries[0])
            .expect("meta")
            .modified()
            .expect("mtime");
        // The second start loads the entry instead of compiling and writing it again.
        assert_eq!(*written.get_or_insert(mtime), mtime);
    }

    // A cache others may write to is never loaded from (it would run their native code).
    use std::os::unix::fs::PermissionsExt;
    let cache = dir.path().join("wasm-cache");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let gh = Gatehouse::start(dir.path(), &text);
    gh.wait_stderr("plugin cache not used", Duration::from_secs(5));
    let r = client().get(gh.url("/")).send().expect("get");
    assert_eq!(
        r.headers()["x-chain-back"],
        "c",
        "the plugin was compiled instead"
    );
}

#[test]
fn on_error_continue_skips_a_failing_plugin() {
    let plugins = format!(
        "[[plugins]]\nuse = \"{ADVERSARIAL}\"\non_error = \"continue\"\ntime_limit = \"100ms\"\n{}",
        probe("after", "")
    );
    let (_dir, gh) = start(&plugins);
    let r = client().get(gh.url("/panic")).send().expect("request");
    // The plugin is skipped; the static target has no /panic.
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-chain-back"], "after");
}

#[test]
fn counters_and_kv_are_exact_under_concurrency() {
    let plugins = format!("[[plugins]]\nuse = \"{SERVICES}\"\n");
    let (_dir, gh) = start(&plugins);
    let url = gh.url("/hit");
    let per_client = 20;
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                let c = client();
                for _ in 0..per_client {
                    let r = c.get(&url).send().expect("hit");
                    assert_eq!(r.status(), StatusCode::NO_CONTENT);
                }
            });
        }
    });
    // The log phase runs once each response is sent: wait for the last ones.
    let want = format!("hits={0} n={0} logged={0}", 64 * per_client);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = client()
            .get(gh.url("/count"))
            .send()
            .expect("count")
            .text()
            .expect("body");
        if got == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got} != {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kv_ttl_delete_and_rate_limit() {
    let plugins = format!("[[plugins]]\nuse = \"{SERVICES}\"\nconfig = {{ limit = 3 }}\n");
    let (_dir, gh) = start(&plugins);
    let c = client();
    let get = |path: &str| {
        let r = c.get(gh.url(path)).send().expect("request");
        (r.status().as_u16(), r.text().expect("body"))
    };
    assert_eq!(get("/kv/set/a/1"), (200, "true".into()));
    assert_eq!(get("/kv/get/a"), (200, "1".into()));
    assert_eq!(get("/kv/del/a"), (200, "true".into()));
    assert_eq!(get("/kv/get/a").0, 404);
    assert_eq!(get("/kv/set/t/1?ttl_ms=200"), (200, "true".into()));
    assert_eq!(get("/kv/get/t").0, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get("/kv/get/t").0, 404, "expired");

    let statuses: Vec<u16> = (0..5).map(|_| get("/limited").0).collect();
    // The first 3 pass through (to the static target, which has no such file), then 429.
    assert_eq!(statuses, [404, 404, 404, 429, 429]);
}

#[test]
fn check_reports_a_plugins_own_config_error_with_its_name() {
    let dir = site(&[("index.html", b"x"), ("other/index.html", b"y")]);
    let path = dir.path().join("gatehouse.toml");
    let write_and_check = |plugins: &str| {
        std::fs::write(&path, config(plugins)).expect("write");
        let out = Command::new(binary())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .expect("run check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (ok, text) = write_and_check(&probe("picky", ", fail_init = \"label must be shouty\""));
    assert!(!ok);
    assert!(
        text.contains("plugin `picky`: config error: label must be shouty"),
        "{text}"
    );

    let (ok, text) = write_and_check(
        "[[plugins]]\nuse = \"router\"\nconfig = { routes = [ { target = \"nope\" } ] }\n",
    );
    assert!(!ok);
    assert!(
        text.contains("plugin `router`") && text.contains("no target named \"nope\""),
        "{text}"
    );

    let (ok, text) = write_and_check("[[plugins]]\nuse = \"nonesuch\"\n");
    assert!(!ok);
    assert!(
        text.contains("plugins[0].use") && text.contains("built in: router"),
        "{text}"
    );

    let (ok, text) = write_and_check("[[plugins]]\nuse = \"./missing.wasm\"\n");
    assert!(!ok);
    assert!(
        text.contains("gatehouse.toml:12:7:") && text.contains("no plugin file"),
        "file and line: {text}"
    );

    let (ok, text) = write_and_check(&probe("fine", ""));
    assert!(ok, "{text}");
    assert!(text.contains("1 plugin(s)"), "{text}");
}

#[test]
fn reload_with_a_broken_plugin_keeps_the_old_chain() {
    let (dir, gh) = start(&probe("v1", ""));
    let c = client();
    assert_eq!(
        c.get(gh.url("/")).send().expect("get").headers()["x-chain-back"],
        "v1"
    );

    std::fs::write(
        dir.path().join("gatehouse.toml"),
        config(&probe("v2", ", fail_init = \"broken\"")),
    )
    .expect("write");
    gh.signal("HUP");
    gh.wait_stderr("broken", Duration::from_secs(10));
    assert_eq!(
        c.get(gh.url("/")).send().expect("get").headers()["x-chain-back"],
        "v1"
    );

    std::fs::write(dir.path().join("gatehouse.toml"), config(&probe("v3", ""))).expect("write");
    gh.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let back = c.get(gh.url("/")).send().expect("get").headers()["x-chain-back"].clone();
        if back == "v3" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reload did not apply");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn conditions_limit_a_plugin_to_hosts_and_paths() {
    let plugins = [
        format!("[[plugins]]\nuse = \"{PROBE}\"\npaths = [\"/api\"]\nconfig = {{ label = \"api\" }}\n"),
        format!("[[plugins]]\nuse = \"{PROBE}\"\nhosts = [\"*.example.com\"]\nconfig = {{ label = \"ex\" }}\n"),
    ]
    .concat();
    let (_dir, gh) = start(&plugins);
    let c = client();
    let back = |path: &str, host: &str| {
        let r = c
            .get(gh.url(path))
            .header("host", host)
            .send()
            .expect("get");
        chain_back(&r)
    };
    assert_eq!(back("/api/x", "localhost"), ["api"]);
    assert_eq!(back("/apix", "localhost"), Vec::<String>::new());
    assert_eq!(back("/", "a.example.com"), ["ex"]);
    assert_eq!(back("/api", "a.example.com:80"), ["ex", "api"]);
    // Conditions match the normal form the target serves: an escaped letter, an empty segment, a
    // dot segment, upper case or a trailing dot in the host does not skip a scoped plugin.
    assert_eq!(back("/%61pi/x", "localhost"), ["api"]);
    assert_eq!(back("//api/x", "localhost"), ["api"]);
    assert_eq!(back("/", "A.Example.COM."), ["ex"]);
    assert_eq!(back("/", "a.example.com.:80"), ["ex"]);
    let r = gh.raw(
        b"GET /x/../api HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(r.text().contains("x-chain-back: api\r\n"), "{}", r.text());
    // What has no normal form is refused before any plugin runs.
    for (path, host) in [
        ("/a%2fapi", "localhost"),
        ("/../api", "localhost"),
        ("/", "a b"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = gh.raw(request.as_bytes(), Duration::from_secs(5));
        assert_eq!(r.statuses(), [400], "{path} {host}: {}", r.text());
    }
    let r = gh.raw(
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(r.statuses(), [400], "HTTP/1.1 without Host");
}

#[test]
fn metrics_target_exports_labelled_series_that_never_collide() {
    // Named with the old scheme's collision: `a_b` + `c` and `a` + `b_c` made one series.
    let plugins = format!(
        "[targets.stats]\nmetrics = true\n\n[[plugins]]\nuse = \"{SERVICES}\"\nname = \"a_b\"\nhosts = [\"ab.test\"]\nconfig = {{ metric = \"c\" }}\n\n[[plugins]]\nuse = \"{SERVICES}\"\nname = \"a\"\nhosts = [\"a.test\"]\nconfig = {{ metric = \"b_c\" }}\n\n[[plugins]]\nuse = \"{SERVICES}\"\n\n[[plugins]]\nuse = \"{ADVERSARIAL}\"\non_error = \"continue\"\n\n[[plugins]]\nuse = \"router\"\n[[plugins.config.routes]]\nexact = \"/metrics\"\ntarget = \"stats\"\n[[plugins.config.routes]]\npath = \"/\"\ntarget = \"site\"\n"
    );
    let (_dir, gh) = start(&plugins);
    let c = client();
    for host in ["ab.test", "a.test", "other.test"] {
        for _ in 0..3 {
            let r = c.get(gh.url("/metric")).header("host", host).send();
            assert_eq!(r.expect("get").status(), StatusCode::NO_CONTENT);
        }
    }
    assert_eq!(
        c.get(gh.url("/trap")).send().expect("get").status(),
        StatusCode::NOT_FOUND
    );
    let r = c.get(gh.url("/metrics")).send().expect("metrics");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text"),
    );
    let text = r.text().expect("body");
    for line in [
        "gatehouse_plugin_total{plugin=\"services\",name=\"hits\"} 3",
        "gatehouse_plugin_total{plugin=\"a_b\",name=\"c\"} 3",
        "gatehouse_plugin_total{plugin=\"a\",name=\"b_c\"} 3",
        "gatehouse_plugin_failures_total{plugin=\"adversarial\",hook=\"on-request\"} 1",
        "gatehouse_responses_total{target=\"-\",status=\"204\"} 9",
        "gatehouse_responses_total{target=\"site\",status=\"404\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn pooled_instances_are_reused_and_per_request_ones_are_fresh() {
    for (isolation, second) in [("pooled", "calls=2"), ("per-request", "calls=1")] {
        let plugins = format!(
            "[[plugins]]\nuse = \"{PROBE}\"\nisolation = \"{isolation}\"\nconfig = {{ label = \"p\", echo = true }}\n[[plugins]]\nuse = \"{ADVERSARIAL}\"\nisolation = \"{isolation}\"\n"
        );
        let (_dir, gh) = start(&plugins);
        let c = client();
        let body = |path: &str| {
            c.get(gh.url(path))
                .send()
                .expect("get")
                .text()
                .expect("body")
        };
        assert!(body("/").starts_with("calls=1\n"));
        assert!(body("/").starts_with(&format!("{second}\n")), "{isolation}");
    }
}

#[test]
fn rate_limit_headers_and_no_op_fixtures() {
    let plugins = format!(
        "[[plugins]]\nuse = \"{}\"\n[[plugins]]\nuse = \"headers\"\nconfig = {{ response = {{ set = {{ \"x-frame-options\" = \"DENY\", \"x-a\" = \"1\" }} }} }}\n[[plugins]]\nuse = \"rate-limit\"\nconfig = {{ rate = 2, per = \"1m\", burst = 1 }}\n",
        env!("FIXTURE_NOOP"),
    );
    let (_dir, gh) = start(&plugins);
    let c = client();
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            let r = c.get(gh.url("/")).send().expect("get");
            assert_eq!(r.headers()["x-frame-options"], "DENY");
            assert_eq!(r.headers()["x-a"], "1");
            r.status().as_u16()
        })
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the 429 is a local response the headers plugin still sees"
    );
}

/// Files the front spooled request bodies to, in `dir`.
fn spooled_bodies(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("gatehouse-body-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_plugin_refuses_an_upload_on_its_head_before_the_body_is_read() {
    use std::io::{Read, Write};
    let dir = site(&[
        ("index.html", b"hello from site\n"),
        ("other/index.html", b"other\n"),
    ]);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    let text = config(&format!("[[plugins]]\nuse = \"{ADVERSARIAL}\"\n")).replace(
        "[server]\n",
        "[server]\nlimits = { max_body_size = \"100MiB\", body_buffer_size = \"64KiB\" }\n",
    );
    let tmp_text = tmp.display().to_string();
    let gh = Gatehouse::start_with_env(dir.path(), &text, &[("TMPDIR", &tmp_text)]);
    let size: usize = 50 << 20;

    // The client waits for `100 Continue` before sending 50 MiB; the plugin refuses on the head.
    let mut stream = std::net::TcpStream::connect(gh.addr()).expect("connect");
    write!(
        stream,
        "POST /deny/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nExpect: 100-continue\r\n\r\n"
    )
    .expect("head");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = vec![0u8; 4096];
    let n = stream
        .read(&mut head)
        .expect("a response to the head alone");
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(!head.contains("100 Continue"), "{head}");
    assert!(head.ends_with("denied\n"), "{head}");

    // A client that sends the body anyway is not read: the connection closes, and what it
    // managed to write fits in the sockets' buffers, not the 50 MiB.
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let chunk = vec![b'x'; 1 << 20];
    let mut written = 0;
    while written < size {
        match stream.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(written < size, "the server read the whole refused body");
    assert_eq!(spooled_bodies(&tmp), Vec::<String>::new());

    // An allowed upload is read, for the plugin that asked for it; the next request is served.
    let r = client()
        .post(gh.url("/body"))
        .body(vec![b'y'; 100_000])
        .send()
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.text().expect("body"),
        "error=the request body was not requested (Filter::REQUEST_BODY)\n",
        "a plugin that did not declare it gets no body"
    );
    assert_eq!(
        client().get(gh.url("/")).send().expect("get").status(),
        StatusCode::OK
    );
}

#[test]
fn a_plugin_that_declares_the_body_gets_it_after_100_continue() {
    let plugins = probe("p", ", echo = true");
    let (_dir, gh) = start(&plugins);
    let reply = gh.raw(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nExpect: 100-continue\r\nConnection: close\r\n\r\npayload",
        Duration::from_secs(5),
    );
    let text = reply.text();
    assert_eq!(reply.statuses(), [100, 200], "{text}");
    assert!(text.contains("body=payload\n"), "{text}");

    // Past the target's in-memory buffer (16 KiB) but within plugin_body_size: in memory for it.
    let big = "z".repeat(100 << 10);
    let r = client()
        .post(gh.url("/echo"))
        .body(big.clone())
        .send()
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text().expect("body").contains(&format!("body={big}\n")),
        "the plugin got the whole 100 KiB body"
    );
}

#[test]
fn plugins_that_print_sleep_read_stdin_or_pile_up_headers_cost_only_their_request() {
    let plugins = format!("[[plugins]]\nuse = \"{ADVERSARIAL}\"\ntime_limit = \"2s\"\n");
    let (_dir, gh) = start(&plugins);
    let c = client();
    let after = |path: &str| {
        let r = c.get(gh.url("/")).send().expect("request");
        assert_eq!(r.status(), StatusCode::OK, "the request after {path}");
        assert_eq!(r.text().expect("body"), "hello from site\n");
    };

    // Printing goes to the log, tagged with the plugin, at a bounded rate.
    let r = c.get(gh.url("/print")).send().expect("print");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), "printed\n");
    let log = gh.wait_stderr("adversarial fixture prints line 0", Duration::from_secs(5));
    assert!(log.contains("adversarial"), "{log}");
    assert!(log.contains("prints to stderr 0"), "{log}");
    // 20,000 lines in one request; 100 a second pass (a burst that spans a window's end gets
    // the next window's 100 too), so however long the burst takes, far from all of them.
    let logged = log.matches("adversarial fixture prints").count();
    assert!(
        logged <= 1_000,
        "{logged} of the 20,000 lines logged: the rate bound did not hold"
    );
    after("/print");

    // Sleeping would block the event loop: refused, a 500, the instance replaced.
    let r = c.get(gh.url("/sleep")).send().expect("sleep");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    gh.wait_stderr("may not block", Duration::from_secs(5));
    after("/sleep");

    // Stdin is closed: end of file at once.
    let r = c.get(gh.url("/stdin")).send().expect("stdin");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), "stdin=Ok(0) \"\"\n");
    after("/stdin");

    // 30,000 headers: setting stops at the bound; a local response with them is the plugin's error.
    let r = c.get(gh.url("/many-headers")).send().expect("many headers");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the request went on, bounded"
    );
    after("/many-headers");
    let r = c
        .get(gh.url("/many-local-headers"))
        .send()
        .expect("many local headers");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    gh.wait_stderr(
        "header fields; a plugin may send at most",
        Duration::from_secs(5),
    );
    after("/many-local-headers");

    // Header bytes a plugin may set on an exchange are bounded (1 MiB): 100 KiB values stop at 10.
    let r = c.get(gh.url("/big-headers")).send().expect("big headers");
    assert_eq!(r.text().expect("body"), "set=10\n");
    after("/big-headers");

    // The context is bounded too: the 65th entry fails the plugin's call.
    let r = c.get(gh.url("/context-flood")).send().expect("context");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    gh.wait_stderr("already has 64 entries", Duration::from_secs(5));
    after("/context-flood");
}

#[test]
fn a_plugin_built_against_contract_0_2_0_still_loads() {
    let plugins = format!(
        "[[plugins]]\nuse = \"{}\"\n",
        env!("FIXTURE_CONTRACT_0_2_0")
    );
    let (_dir, gh) = start(&plugins);
    let r = client().get(gh.url("/")).send().expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().expect("body"), "built against 0.2.0\n");
}
