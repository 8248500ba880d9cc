//! Finding the Python the user means, the way `python3 -m gunicorn` would: the interpreter named in
//! the config, else the config's virtualenv, else `$VIRTUAL_ENV`, else `python3` on `PATH`.
//!
//! The front process asks that interpreter for its `sys.path` and prefixes; workers embed CPython and
//! take exactly those, so packages installed with that interpreter's pip import in the app.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The CPython minor version this binary embeds (from the build).
pub const EMBEDDED_VERSION: &str = env!("GATEHOUSE_PYTHON_VERSION");

/// The interpreter the binary was built with, and the directory of its libpython.
const BUILT_WITH: &str = env!("GATEHOUSE_PYTHON_EXECUTABLE");
const BUILT_LIBDIR: &str = env!("GATEHOUSE_PYTHON_LIBDIR");

/// What the chosen interpreter reported about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interpreter {
    /// `sys.executable`.
    pub executable: String,
    /// `major.minor`.
    pub version: String,
    /// `sys.prefix` (the virtualenv, if any).
    pub prefix: String,
    /// `sys.exec_prefix`.
    pub exec_prefix: String,
    /// `sys.base_prefix` (where the standard library lives).
    pub base_prefix: String,
    /// `sys.base_exec_prefix`.
    pub base_exec_prefix: String,
    /// `sys.path`, without the script-directory entry.
    pub path: Vec<String>,
    /// Where its libpython lives (`sysconfig`'s `LIBDIR`, the base interpreter's in a virtualenv).
    pub libdir: String,
}

/// Why no usable interpreter was found.
#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    /// The interpreter could not be run.
    #[error("cannot run the Python interpreter {0}: {1}")]
    Run(String, std::io::Error),
    /// It ran but failed.
    #[error("the Python interpreter {0} failed: {1}")]
    Failed(String, String),
    /// It is a different minor version than the one embedded.
    #[error(
        "gatehouse embeds CPython {embedded}, but {executable} is Python {found}: use a {embedded} interpreter \
         (`python` or `virtualenv` in the target), or rebuild gatehouse with PYO3_PYTHON pointing at the one you want"
    )]
    Version {
        /// The interpreter found.
        executable: String,
        /// Its version.
        found: String,
        /// The embedded version.
        embedded: String,
    },
    /// Same version, another build: its standard library and extension modules do not fit the
    /// libpython this binary runs (`import socket` would fail inside the app).
    #[error(transparent)]
    Build(Box<OtherBuild>),
}

/// An interpreter of the embedded version that is not the build the binary links.
#[derive(Debug, thiserror::Error)]
#[error(
    "{executable} is a different build of Python {version} than the one gatehouse runs: its \
     libpython is in {libdir}, gatehouse's is {linked} (built with {built_with}). Use {built_with} \
     or a virtualenv made from it, or rebuild gatehouse for this interpreter: \
     PYO3_PYTHON={executable} cargo build --release"
)]
pub struct OtherBuild {
    /// The interpreter found.
    executable: String,
    /// Its version.
    version: String,
    /// Its libpython directory.
    libdir: String,
    /// The libpython this process runs.
    linked: String,
    /// The interpreter the binary was built with.
    built_with: String,
}

const PROBE: &str = "import json, sys, sysconfig\n\
print(json.dumps({'executable': sys.executable, 'version': '%d.%d' % sys.version_info[:2], \
'prefix': sys.prefix, 'exec_prefix': sys.exec_prefix, 'base_prefix': sys.base_prefix, \
'base_exec_prefix': sys.base_exec_prefix, 'path': [p for p in sys.path if p], \
'libdir': sysconfig.get_config_var('LIBDIR') or ''}))";

/// The interpreter command to ask: config `python`, config `virtualenv`, `$VIRTUAL_ENV`, or `python3`.
pub fn choose(python: Option<&Path>, virtualenv: Option<&Path>) -> PathBuf {
    if let Some(python) = python {
        return python.to_path_buf();
    }
    if let Some(venv) = virtualenv {
        return venv.join("bin").join("python");
    }
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) if !venv.is_empty() => Path::new(&venv).join("bin").join("python"),
        _ => PathBuf::from("python3"),
    }
}

/// Runs the interpreter once to learn its paths, and checks it matches the embedded version.
pub fn probe(command: &Path) -> Result<Interpreter, InterpreterError> {
    let shown = command.display().to_string();
    let out = Command::new(command)
        .args(["-c", PROBE])
        .env_remove("PYTHONHOME")
        .output()
        .map_err(|e| InterpreterError::Run(shown.clone(), e))?;
    if !out.status.success() {
        return Err(InterpreterError::Failed(
            shown,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let found: Interpreter = serde_json::from_slice(&out.stdout)
        .map_err(|e| InterpreterError::Failed(shown.clone(), format!("unexpected output ({e})")))?;
    if found.version != EMBEDDED_VERSION {
        return Err(InterpreterError::Version {
            executable: found.executable,
            found: found.version,
            embedded: EMBEDDED_VERSION.to_string(),
        });
    }
    let linked = linked_libpython();
    let linked_dir = linked
        .as_deref()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from(BUILT_LIBDIR), Path::to_path_buf);
    if !same_dir(&linked_dir, Path::new(&found.libdir)) {
        return Err(InterpreterError::Build(Box::new(OtherBuild {
            executable: found.executable,
            version: found.version,
            libdir: found.libdir,
            linked: linked.unwrap_or(linked_dir).display().to_string(),
            built_with: BUILT_WITH.to_string(),
        })));
    }
    Ok(found)
}

/// The libpython this process has mapped (the dynamic loader's choice, which `LD_LIBRARY_PATH` can
/// change); `None` for a static build.
fn linked_libpython() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libpython"))
        })
        .map(PathBuf::from)
}

/// Whether two directories are the same one (`/usr/lib` and `/lib` may be one through a link).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_order() {
        assert_eq!(
            choose(
                Some(Path::new("/opt/py/bin/python3")),
                Some(Path::new("/venv"))
            ),
            PathBuf::from("/opt/py/bin/python3")
        );
        assert_eq!(
            choose(None, Some(Path::new("/venv"))),
            PathBuf::from("/venv/bin/python")
        );
    }

    #[test]
    fn probes_the_python_on_path() {
        let found =
            probe(Path::new("python3")).expect("python3 on PATH matches the embedded version");
        assert_eq!(found.version, EMBEDDED_VERSION);
        assert!(
            found.path.iter().any(|p| p.ends_with("site-packages")),
            "{:?}",
            found.path
        );
        assert!(matches!(
            probe(Path::new("/nonexistent/python")),
            Err(InterpreterError::Run(..))
        ));
    }

    #[test]
    fn another_build_of_the_same_version_is_refused() {
        let other = Path::new("/usr/bin/python3.11");
        if !other.exists() || EMBEDDED_VERSION != "3.11" {
            return; // Debian's 3.11 is what the CI machines carry beside pyenv's.
        }
        let built = probe(Path::new(BUILT_WITH));
        if built
            .as_ref()
            .is_ok_and(|b| b.executable == other.display().to_string())
        {
            return; // Built with Debian's: then it is the right one.
        }
        match probe(other) {
            Err(e @ InterpreterError::Build(_)) => {
                let text = e.to_string();
                assert!(
                    text.contains("/usr/bin/python3.11") && text.contains(BUILT_WITH),
                    "{text}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
