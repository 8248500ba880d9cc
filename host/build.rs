//! Links the embedded CPython so the binary loads the libpython it was built against.
//!
//! Machines often carry two libpython3.x builds (a distribution's in /usr/lib, pyenv's or a venv
//! base's elsewhere); without an rpath the dynamic loader would pick the distribution's, whose
//! `sys.prefix` does not see the packages the user installed.

fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // The interpreter and library directory of the build, so that a worker refuses (naming both) an
    // interpreter whose standard library does not match the libpython it would run.
    println!(
        "cargo:rustc-env=GATEHOUSE_PYTHON_LIBDIR={}",
        config.lib_dir().unwrap_or("")
    );
    println!(
        "cargo:rustc-env=GATEHOUSE_PYTHON_EXECUTABLE={}",
        config.executable().unwrap_or("python3")
    );
    let version = config.version();
    println!(
        "cargo:rustc-env=GATEHOUSE_PYTHON_VERSION={}.{}",
        version.major, version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    embed_plugins();
}

/// Builds the first-party plugins in `plugins/` to wasm32-wasip2 and writes the table that
/// `plugin::builtin` includes.
fn embed_plugins() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let built = wasm_build::build(
        &[
            "router",
            "cache",
            "ip-filter",
            "rate-limit",
            "auth",
            "headers",
            "cors",
            "redirect",
        ],
        &wasm_build::target_dir(&out),
    );
    let mut table = String::from(
        "/// Built-in plugins: name and component bytes.\npub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in built {
        table.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out.join("builtin_plugins.rs"), table).expect("write builtin_plugins.rs");
}

#[path = "../plugins/build_support.rs"]
mod wasm_build;
