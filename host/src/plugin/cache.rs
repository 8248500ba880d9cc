//! Compiled components cached on disk, keyed by the wasm's content hash and the engine's
//! compatibility hash, so a restart skips Cranelift (~10 ms to seconds per plugin).
#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The component for `wasm`, from the cache when a matching entry exists, else compiled (and
/// stored when `dir` is writable).
pub fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    dir: Option<&Path>,
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::new(engine, wasm);
    };
    let path = dir.join(format!("{}.cwasm", key(engine, wasm)));
    if dir.exists() && !trusted(dir, &path) {
        return Component::new(engine, wasm);
    }
    if path.is_file() {
        // SAFETY: `deserialize_file` runs native code from the file, so the file must be one
        // `Engine::precompile_component` wrote for this engine configuration. The name holds the
        // SHA-256 of the source wasm and the engine's compatibility hash, and the file is written
        // atomically (temp file + rename) into a directory only this user writes (created 0700,
        // and `trusted` checked just now that the directory and the file are this user's and
        // nobody else may write them); wasmtime also checks the header and refuses artifacts from
        // another version or config.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "stale plugin cache entry")
            }
        }
    }
    let component = Component::new(engine, wasm)?;
    if let Err(e) = store(dir, &path, &component) {
        tracing::debug!(dir = %dir.display(), error = %e, "plugin cache not written");
    }
    Ok(component)
}

/// Whether native code may be loaded from `file` in `dir`: both owned by the user running the
/// server, neither writable by its group or others. Anyone else who could write there could make
/// the server run their code.
fn trusted(dir: &Path, file: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let ok = |path: &Path| match std::fs::symlink_metadata(path) {
        Ok(m) => m.uid() == me && m.mode() & 0o022 == 0 && !m.file_type().is_symlink(),
        // Not there yet: it will be written by this user.
        Err(e) => e.kind() == std::io::ErrorKind::NotFound && path != dir,
    };
    let trusted = ok(dir) && ok(file);
    if !trusted {
        tracing::warn!(
            dir = %dir.display(),
            "plugin cache not used: the directory and its files must belong to this user and be \
             writable by nobody else (chmod go-w); compiling instead"
        );
    }
    trusted
}

fn key(engine: &Engine, wasm: &[u8]) -> String {
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine
        .precompile_compatibility_hash()
        .hash(&mut engine_hash);
    let digest = Sha256::digest(wasm);
    let mut key = String::with_capacity(80);
    for b in digest {
        key.push_str(&format!("{b:02x}"));
    }
    key.push_str(&format!("-{:016x}", engine_hash.finish()));
    key
}

fn store(dir: &Path, path: &Path, component: &Component) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
