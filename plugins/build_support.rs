//! Builds crates of the `plugins/` workspace to wasm32-wasip2 components; shared by the build
//! scripts of `host` (first-party plugins) and `tests` (fixture plugins).

use std::path::{Path, PathBuf};
use std::process::Command;

/// One wasm target directory next to the outer build's (`<target>/<profile>/build/<pkg>/out` ->
/// `<target>/wasm-plugins`), so host and tests share compiled guest dependencies.
pub fn target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .nth(4)
        .map_or_else(|| out_dir.join("wasm-plugins"), |t| t.join("wasm-plugins"))
}

/// Builds `packages` (release, wasm32-wasip2) into `target_dir` and returns each component's path.
/// Panics with cargo's output on failure: a build script has no better way to report.
pub fn build(packages: &[&str], target_dir: &Path) -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = root.join("plugins");
    // Sources only: `plugins/target` (a local build's output) must not trigger rebuilds.
    for path in [
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "plugins/router",
        "plugins/cache",
        "plugins/ip-filter",
        "plugins/rate-limit",
        "plugins/auth",
        "plugins/headers",
        "plugins/cors",
        "plugins/redirect",
        "plugins/fixtures",
        "sdk/Cargo.toml",
        "sdk/src",
        "units",
        "rate",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's settings (clippy as a wrapper, host rustflags, a coverage profile) are not
    // meant for the guest build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().expect("run cargo for the wasm plugins");
    if !output.status.success() {
        panic!(
            "building plugins {packages:?} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let dir = target_dir.join("wasm32-wasip2").join("release");
    packages
        .iter()
        .map(|p| {
            let file = dir.join(format!("{}.wasm", p.replace('-', "_")));
            assert!(file.is_file(), "{} was not built", file.display());
            (p.to_string(), file)
        })
        .collect()
}
