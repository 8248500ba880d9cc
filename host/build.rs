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
    let version = config.version();
    println!(
        "cargo:rustc-env=GATEHOUSE_PYTHON_VERSION={}.{}",
        version.major, version.minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
