//! `gatehouse plugin new`: the scaffolded crate passes its own tests natively, builds to
//! wasm32-wasip2, and the result runs in the server. (Not named bot-block:
//! examples/plugins/bot-block builds into the same wasm target directory.)

use std::path::Path;
use std::process::Command;

use gatehouse_tests::{Gatehouse, binary, client, site};
use reqwest::StatusCode;

fn cargo(dir: &Path, args: &[&str]) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", env!("WASM_TARGET_DIR"))
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn plugin_new_makes_a_crate_that_tests_builds_and_runs() {
    let dir = site(&[("index.html", b"welcome\n")]);
    let out = Command::new(binary())
        .args(["plugin", "new", "ua-block", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run plugin new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let krate = dir.path().join("ua-block");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("cargo build --release --target wasm32-wasip2")
    );

    cargo(&krate, &["test", "--quiet"]);
    cargo(
        &krate,
        &["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = Path::new(env!("WASM_TARGET_DIR")).join("wasm32-wasip2/release/ua_block.wasm");
    assert!(wasm.is_file());

    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[targets.site]\nstatic = \"site\"\n[[plugins]]\nuse = {:?}\nconfig = {{ deny_user_agents = [\"BadBot\"] }}\n",
        wasm.display().to_string()
    );
    let gh = Gatehouse::start(dir.path(), &config);
    let c = client();
    let r = c
        .get(gh.url("/"))
        .header("user-agent", "BadBot/2")
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .get(gh.url("/"))
        .header("user-agent", "curl")
        .send()
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-filtered-by"], "ua-block");
}

#[test]
fn plugin_new_refuses_bad_names_and_existing_dirs() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = |name: &str| {
        Command::new(binary())
            .args(["plugin", "new", name, "--dir"])
            .arg(dir.path())
            .output()
            .expect("run plugin new")
    };
    let out = run("Bad Name");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid plugin name"));
    assert!(run("fine").status.success());
    let out = run("fine");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
