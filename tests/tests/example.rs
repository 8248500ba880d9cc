//! The example site (`examples/`): its config, its Flask app and its third-party plugin, built from
//! source and run as the README shows them, every plugin of the chain at work.

use std::path::{Path, PathBuf};
use std::process::Command;

use gatehouse_tests::Gatehouse;
use reqwest::StatusCode;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Builds `examples/plugins/bot-block` the way `examples/run.sh` does (into the tests' wasm
/// target directory, so compiled dependencies are shared).
fn build_bot_block() -> PathBuf {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(examples().join("plugins/bot-block/Cargo.toml"))
        .env("CARGO_TARGET_DIR", env!("WASM_TARGET_DIR"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Path::new(env!("WASM_TARGET_DIR")).join("wasm32-wasip2/release/bot_block.wasm")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

#[test]
fn the_example_site_runs_every_plugin_of_its_chain() {
    let wasm = build_bot_block();
    let dir = tempfile::tempdir().expect("tmp");
    for file in ["app.py", "admin.htpasswd"] {
        std::fs::copy(examples().join(file), dir.path().join(file)).expect("copy");
    }
    copy_dir(&examples().join("site"), &dir.path().join("site"));
    // The example's config, on a free port, with the plugin just built and the python3 on PATH
    // (Flask installed by scripts/test.sh) instead of examples/.venv.
    let config = std::fs::read_to_string(examples().join("gatehouse.toml"))
        .expect("config")
        .replace(
            "listen = [\"127.0.0.1:8000\"]",
            "listen = [\"127.0.0.1:0\"]",
        )
        .replace("virtualenv = \".venv\"", "")
        .replace(
            "\"plugins/bot-block/target/wasm32-wasip2/release/bot_block.wasm\"",
            &format!("{:?}", wasm.display().to_string()),
        );
    let gh = Gatehouse::start(dir.path(), &config);
    let c = reqwest::blocking::Client::new();
    let get = |path: &str| c.get(gh.url(path)).send().expect("get");
    let header = |r: &reqwest::blocking::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };

    // Flask, with the rate limit's and the security headers.
    let home = get("/");
    assert_eq!(home.status(), StatusCode::OK);
    assert_eq!(
        header(&home, "ratelimit-policy"),
        "\"default\";q=20;w=1;burst=40"
    );
    assert_eq!(header(&home, "x-content-type-options"), "nosniff");
    assert!(home.text().expect("body").contains("Hello from Flask"));
    // The cache: the second /api/time never reaches Python.
    let first = get("/api/time");
    assert_eq!(header(&first, "x-cache"), "MISS");
    let first_body = first.text().expect("body");
    let second = get("/api/time");
    assert_eq!(header(&second, "x-cache"), "HIT");
    assert_eq!(second.text().expect("body"), first_body);
    // Static files through the router.
    assert_eq!(get("/static/css/style.css").status(), StatusCode::OK);
    // auth on /admin.
    assert_eq!(get("/admin/").status(), StatusCode::UNAUTHORIZED);
    let admin = c
        .get(gh.url("/admin/"))
        .basic_auth("admin", Some("gatehouse"))
        .send()
        .expect("get");
    assert_eq!(admin.status(), StatusCode::OK);
    let seen: serde_json::Value = admin.json().expect("json");
    assert_eq!(seen["user"], "admin");
    // bot-block: a bot's user agent, then a trap path that bans the client.
    let bot = c
        .get(gh.url("/"))
        .header("user-agent", "BadBot/1.0")
        .send()
        .expect("get");
    assert_eq!(bot.status(), StatusCode::FORBIDDEN);
    assert_eq!(get("/.env").status(), StatusCode::FORBIDDEN);
    assert_eq!(
        get("/").status(),
        StatusCode::FORBIDDEN,
        "banned for 10 minutes"
    );
}
