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
}

const PROBE: &str = "import json, sys\n\
print(json.dumps({'executable': sys.executable, 'version': '%d.%d' % sys.version_info[:2], \
'prefix': sys.prefix, 'exec_prefix': sys.exec_prefix, 'base_prefix': sys.base_prefix, \
'base_exec_prefix': sys.base_exec_prefix, 'path': [p for p in sys.path if p]}))";

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
    Ok(found)
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
}
