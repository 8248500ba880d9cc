//! `gatehouse plugin new NAME`: a plugin crate that builds to wasm32-wasip2 and has a passing test.

use std::path::{Path, PathBuf};

/// Why a plugin crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a valid crate name.
    #[error(
        "{0:?} is not a valid plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter"
    )]
    BadName(String),
    /// The directory exists already.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The SDK was not found.
    #[error(
        "the gatehouse-sdk crate was not found at {0}: pass --sdk PATH (the `sdk/` folder of the Gatehouse repository)"
    )]
    NoSdk(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The SDK this binary was built with, if its source is still there.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk")
}

/// Creates `dir/NAME` with a Cargo.toml, a filter and its test; returns the crate's directory.
pub fn new_plugin(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let sdk = std::path::absolute(sdk)
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .filter(|p| p.join("Cargo.toml").is_file())
        .ok_or_else(|| ScaffoldError::NoSdk(sdk.to_path_buf()))?;
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let type_name: String = name
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    let sdk_path = toml::Value::String(sdk.display().to_string()).to_string();
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("{name}", name)
                .replace("{sdk}", &sdk_path),
        ),
        ("src/lib.rs", LIB_RS.replace("{Type}", &type_name)),
        (
            "README.md",
            README
                .replace("{name}", name)
                .replace("{file}", &name.replace('-', "_")),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        let path = root.join(file);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|source| ScaffoldError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(root)
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A cdylib for the wasm component, an rlib so `cargo test` can test the filter natively.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
gatehouse-sdk = { path = {sdk} }
serde = { version = "1", features = ["derive"] }

[dev-dependencies]
serde_json = "1"

# Small, fast plugins.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true

# Not part of any enclosing workspace.
[workspace]
"#;

const LIB_RS: &str = r##"//! A Gatehouse plugin: refuses requests from listed user agents and tags the others.

use gatehouse_sdk::{Action, Filter, Hook, LocalResponse, Request, Response, metrics};
use serde::Deserialize;

/// The plugin's `config` table in gatehouse.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// User-Agent substrings to refuse with 403.
    #[serde(default)]
    deny_user_agents: Vec<String>,
}

/// The filter.
pub struct {Type} {
    config: Config,
}

impl Filter for {Type} {
    type Config = Config;
    // The hooks below; the host calls no others.
    const HOOKS: &'static [Hook] = &[Hook::OnRequest, Hook::OnResponse];

    fn new(config: Config) -> Result<Self, String> {
        if config.deny_user_agents.iter().any(String::is_empty) {
            return Err("deny_user_agents: an empty entry would refuse everyone".into());
        }
        Ok({Type} { config })
    }

    fn on_request(&self, req: &mut Request) -> Action {
        let agent = req.header("user-agent").unwrap_or_default();
        if self.config.deny_user_agents.iter().any(|bad| agent.contains(bad.as_str())) {
            metrics::add("denied", 1);
            return LocalResponse::new(403).body("forbidden\n").into();
        }
        Action::Continue
    }

    fn on_response(&self, _req: &mut Request, resp: &mut Response) {
        let _ = resp.set_header("x-filtered-by", env!("CARGO_PKG_NAME"));
    }
}

gatehouse_sdk::export_filter!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_sdk::testing::{self, TestRequest, TestResponse};

    #[test]
    fn refuses_listed_agents_and_tags_the_rest() {
        let filter: {Type} = testing::init(r#"{"deny_user_agents": ["BadBot"]}"#).unwrap();

        let mut bot = TestRequest::get("/").with_header("user-agent", "BadBot/1.0");
        let Action::Respond(response) = testing::on_request(&filter, &mut bot) else {
            panic!("a bot must be refused");
        };
        assert_eq!(response.status, 403);
        assert_eq!(testing::metric("denied"), 1);

        let mut human = TestRequest::get("/").with_header("user-agent", "Firefox");
        assert_eq!(testing::on_request(&filter, &mut human), Action::Continue);
        let mut resp = TestResponse::new(200, "hi");
        testing::on_response(&filter, &mut human, &mut resp);
        assert!(resp.header("x-filtered-by").is_some());
    }

    #[test]
    fn config_errors_are_reported() {
        let err = testing::init::<{Type}>(r#"{"deny_user_agents": [""]}"#).err().unwrap();
        assert!(err.contains("empty entry"));
    }
}
"##;

const README: &str = r#"# {name}

A Gatehouse plugin.

    rustup target add wasm32-wasip2                      # once
    cargo test                                           # unit tests, natively
    cargo build --release --target wasm32-wasip2         # the plugin

Then in gatehouse.toml:

    [[plugins]]
    use = "{name}/target/wasm32-wasip2/release/{file}.wasm"
    config = { deny_user_agents = ["BadBot"] }
"#;
