//! Builds the fixture plugins in `plugins/fixtures/` from source (wasm32-wasip2) and tells the tests
//! where they are: `env!("FIXTURE_PROBE")` and so on.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let fixtures = [
        "probe",
        "adversarial",
        "services",
        "noop",
        "body-rewrite",
        "contract-0-2-0",
    ];
    let target_dir = wasm_build::target_dir(&out);
    // The scaffolding test builds its crate here too, reusing compiled dependencies.
    println!("cargo:rustc-env=WASM_TARGET_DIR={}", target_dir.display());
    for (name, path) in wasm_build::build(&fixtures, &target_dir) {
        let var = format!("FIXTURE_{}", name.to_uppercase().replace('-', "_"));
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

#[path = "../plugins/build_support.rs"]
mod wasm_build;
