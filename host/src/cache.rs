//! Compiled modules on disk: precompiled artifacts keyed by module hash and
//! engine compatibility, so that a restart loads modules instead of
//! compiling them again.
//!
//! # Files
//!
//! One file per module and engine configuration, in the cache directory
//! (by convention `<data-dir>/artifacts/`): its name is the SHA-256 of the
//! module's hash, the artifact kind and the engine's
//! [`precompile_compatibility_hash`](wasmtime::Engine::precompile_compatibility_hash).
//! Another wasmtime version or another engine configuration (fuel on or
//! off, ...) therefore looks for another file: a stale artifact is never
//! found, so never loaded, and the module is compiled and stored again.
//!
//! Each file is a header (magic, the name's key, a CRC-32 of key and
//! artifact) followed by the artifact. wasmtime does not check an
//! artifact's integrity when it loads one, so the cache does: a file whose
//! checksum does not match is logged, removed and reported as a miss (the
//! caller compiles and stores the module again). The checksum guards
//! against damage (a torn write, a flipped bit), not against someone who
//! can write the directory (who could replace the host's binary as well):
//! CRC-32 catches every burst of up to 32 bits and all but 1 in 2^32 of
//! the rest, at several GB/s, where the SHA-256 of the first format took
//! most of a large component's load time. Files of that format are
//! compiled again once, quietly. Files are written to a
//! temporary name and renamed, so a reader never sees half a file.

use std::fmt;
use std::hash::Hasher;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::{Error, ModuleHash, Result};

/// The conventional name of the cache directory inside a data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";

const MAGIC: &[u8; 8] = b"WPART\x02\0\0";
/// The first format's magic (a SHA-256 checksum): a miss, not damage.
const MAGIC_V1: &[u8; 8] = b"WPART\x01\0\0";
/// Magic, key, CRC-32 (little-endian), 4 bytes of padding.
const HEADER: usize = 8 + 32 + 4 + 4;

/// Counters of an [`ArtifactCache`] since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Artifacts loaded.
    pub hits: u64,
    /// Lookups that found no file.
    pub misses: u64,
    /// Files found but refused (checksum mismatch, wrong header, or
    /// wasmtime refused them) and removed.
    pub rejected: u64,
    /// Artifacts written.
    pub stored: u64,
}

/// Precompiled artifacts in a directory. Cheap to share behind an `Arc`;
/// every method takes `&self`.
pub struct ArtifactCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    stored: AtomicU64,
}

impl fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Module,
    Component,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Module => b"module",
            Kind::Component => b"component",
        }
    }
}

/// Feeds `Hash` output into SHA-256, so the key does not depend on the
/// standard library's (unstable) default hasher.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl ArtifactCache {
    /// Opens the cache in `dir`, creating the directory if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            dir,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            stored: AtomicU64::new(0),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hits, misses, rejections and writes so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
        }
    }

    /// The core module `hash` compiled for `engine`, if a sound artifact is
    /// cached.
    pub fn load_module(&self, engine: &Engine, hash: &ModuleHash) -> Option<Module> {
        let (path, file) = self.read(engine, hash, Kind::Module)?;
        self.deserialize(&path, || deserialize_module(engine, &file[HEADER..]))
    }

    /// The component `hash` compiled for `engine`, if a sound artifact is
    /// cached.
    pub fn load_component(&self, engine: &Engine, hash: &ModuleHash) -> Option<Component> {
        let (path, file) = self.read(engine, hash, Kind::Component)?;
        self.deserialize(&path, || deserialize_component(engine, &file[HEADER..]))
    }

    /// Stores the serialized core module `hash` (from
    /// [`Module::serialize`] or [`Engine::precompile_module`]) for `engine`.
    pub fn store_module(
        &self,
        engine: &Engine,
        hash: &ModuleHash,
        serialized: &[u8],
    ) -> Result<()> {
        self.write(engine, hash, Kind::Module, serialized)
    }

    /// Stores the serialized component `hash` (from
    /// [`Component::serialize`] or [`Engine::precompile_component`]) for
    /// `engine`.
    pub fn store_component(
        &self,
        engine: &Engine,
        hash: &ModuleHash,
        serialized: &[u8],
    ) -> Result<()> {
        self.write(engine, hash, Kind::Component, serialized)
    }

    /// The file that holds (or would hold) the core module `hash` for
    /// `engine`.
    pub fn module_path(&self, engine: &Engine, hash: &ModuleHash) -> PathBuf {
        self.path(&key(engine, hash, Kind::Module))
    }

    /// The file that holds (or would hold) the component `hash` for
    /// `engine`.
    pub fn component_path(&self, engine: &Engine, hash: &ModuleHash) -> PathBuf {
        self.path(&key(engine, hash, Kind::Component))
    }

    fn path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", hex::encode(key)))
    }

    /// The file's bytes (the artifact from [`HEADER`] on), checked;
    /// `None` (and the file removed) when there is none or it is unsound.
    fn read(&self, engine: &Engine, hash: &ModuleHash, kind: Kind) -> Option<(PathBuf, Vec<u8>)> {
        let key = key(engine, hash, kind);
        let path = self.path(&key);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a cached artifact; compiling instead");
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if bytes.starts_with(MAGIC_V1) {
            tracing::info!(path = %path.display(), module = %hash, "cached artifact of an older format; compiling again");
            self.misses.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::remove_file(&path);
            return None;
        }
        if let Err(why) = check(&key, &bytes) {
            tracing::warn!(path = %path.display(), module = %hash, "cached artifact is corrupted ({why}); removing it and compiling again");
            self.reject(&path);
            return None;
        }
        Some((path, bytes))
    }

    fn deserialize<T>(&self, path: &Path, load: impl FnOnce() -> wasmtime::Result<T>) -> Option<T> {
        match load() {
            Ok(loaded) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(loaded)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "wasmtime refused a cached artifact; removing it and compiling again");
                self.reject(path);
                None
            }
        }
    }

    fn reject(&self, path: &Path) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a bad cached artifact");
        }
    }

    fn write(&self, engine: &Engine, hash: &ModuleHash, kind: Kind, artifact: &[u8]) -> Result<()> {
        static TEMP: AtomicU64 = AtomicU64::new(0);
        let key = key(engine, hash, kind);
        let path = self.path(&key);
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            hex::encode(&key[..8]),
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&key)?;
            file.write_all(&checksum(&key, artifact).to_le_bytes())?;
            file.write_all(&[0; 4])?;
            file.write_all(artifact)?;
            // No fsync: a file torn by a crash fails its checksum and is
            // rebuilt.
            drop(file);
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            Error::Io { path, source }
        })?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn key(engine: &Engine, hash: &ModuleHash, kind: Kind) -> [u8; 32] {
    let mut hasher = ShaHasher(Sha256::new());
    hasher.write(b"wpool artifact v1\0");
    hasher.write(kind.tag());
    hasher.write(hash.as_bytes());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.0.finalize().into()
}

fn checksum(key: &[u8; 32], artifact: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key);
    crc.update(artifact);
    crc.finalize()
}

fn check(key: &[u8; 32], bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < HEADER {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a wpool artifact file".into());
    }
    if &bytes[8..40] != key {
        return Err("it belongs to another module or engine".into());
    }
    if bytes[40..44] != checksum(key, &bytes[HEADER..]).to_le_bytes() {
        return Err("checksum mismatch".into());
    }
    Ok(())
}

// `Module::deserialize` and `Component::deserialize` are unsafe because
// wasmtime trusts the bytes to be an artifact it produced, for this engine's
// configuration, unmodified. Here they are: `artifact` comes from a file whose
// name and header key are derived from this engine's compatibility hash (and
// wasmtime checks the version and configuration again itself), whose CRC-32
// over key and artifact was verified just before, and which was read into
// memory, so the bytes checked are the bytes loaded (no mmap that another
// process could change after the check). The cache directory is the host's
// own; whoever can write it could also replace the host's binary.
#[allow(
    unsafe_code,
    reason = "loading a precompiled artifact whose origin and integrity were verified"
)]
fn deserialize_module(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Module> {
    // SAFETY: see the comment above: checked bytes from our own cache, for
    // this engine.
    unsafe { Module::deserialize(engine, artifact) }
}

#[allow(
    unsafe_code,
    reason = "loading a precompiled artifact whose origin and integrity were verified"
)]
fn deserialize_component(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: as for `deserialize_module`.
    unsafe { Component::deserialize(engine, artifact) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(module (func (export "answer") (result i32) (i32.const 42)))"#;

    fn engine(fuel: bool) -> Engine {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(fuel);
        Engine::new(&config).unwrap()
    }

    fn answer(engine: &Engine, module: &Module) -> i32 {
        let mut store = wasmtime::Store::new(engine, ());
        // Only a fuel engine has fuel to set.
        let _ = store.set_fuel(1_000);
        let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
        let f = instance
            .get_typed_func::<(), i32>(&mut store, "answer")
            .unwrap();
        f.call(&mut store, ()).unwrap()
    }

    #[test]
    fn an_artifact_round_trips_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path().join(ARTIFACTS_DIR)).unwrap();
        let engine = engine(false);
        let wasm = wat::parse_str(WAT).unwrap();
        let hash = ModuleHash::of(&wasm);
        assert!(cache.load_module(&engine, &hash).is_none());
        let compiled = Module::new(&engine, &wasm).unwrap();
        cache
            .store_module(&engine, &hash, &compiled.serialize().unwrap())
            .unwrap();
        let loaded = cache.load_module(&engine, &hash).unwrap();
        assert_eq!(answer(&engine, &loaded), 42);
        // A module is not a component: another file.
        assert!(cache.load_component(&engine, &hash).is_none());
        assert_eq!(
            cache.stats(),
            CacheStats {
                hits: 1,
                misses: 2,
                rejected: 0,
                stored: 1
            }
        );

        let component = wat::parse_str("(component)").unwrap();
        let chash = ModuleHash::of(&component);
        let serialized = engine.precompile_component(&component).unwrap();
        cache.store_component(&engine, &chash, &serialized).unwrap();
        assert!(cache.load_component(&engine, &chash).is_some());
        // Only the two artifacts: no temporary file left behind.
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 2);
    }

    #[test]
    fn an_artifact_of_another_engine_configuration_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let plain = engine(false);
        let fueled = engine(true);
        let wasm = wat::parse_str(WAT).unwrap();
        let hash = ModuleHash::of(&wasm);
        cache
            .store_module(&plain, &hash, &plain.precompile_module(&wasm).unwrap())
            .unwrap();
        assert_ne!(
            cache.module_path(&plain, &hash),
            cache.module_path(&fueled, &hash)
        );
        // The fuel engine finds nothing: it compiles and stores its own.
        assert!(cache.load_module(&fueled, &hash).is_none());
        cache
            .store_module(&fueled, &hash, &fueled.precompile_module(&wasm).unwrap())
            .unwrap();
        let loaded = cache.load_module(&fueled, &hash).unwrap();
        assert_eq!(answer(&fueled, &loaded), 42);
        // Both stay usable by their own engine.
        assert_eq!(
            answer(&plain, &cache.load_module(&plain, &hash).unwrap()),
            42
        );

        // Even a file copied under the other engine's name is refused (its
        // header names its key), and wasmtime would refuse it too.
        std::fs::copy(
            cache.module_path(&plain, &hash),
            cache.module_path(&fueled, &hash),
        )
        .unwrap();
        assert!(cache.load_module(&fueled, &hash).is_none());
        assert_eq!(cache.stats().rejected, 1);
        assert!(!cache.module_path(&fueled, &hash).exists());
    }

    #[test]
    fn a_flipped_byte_is_detected_and_the_artifact_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let engine = engine(false);
        let wasm = wat::parse_str(WAT).unwrap();
        let hash = ModuleHash::of(&wasm);
        let serialized = engine.precompile_module(&wasm).unwrap();
        cache.store_module(&engine, &hash, &serialized).unwrap();
        let path = cache.module_path(&engine, &hash);
        let good = std::fs::read(&path).unwrap();
        // Flip a byte in the middle of the artifact (past the header) and
        // one at the end; and truncate.
        let damaged: Vec<Vec<u8>> = vec![
            {
                let mut b = good.clone();
                let i = HEADER + (b.len() - HEADER) / 2;
                b[i] ^= 0x01;
                b
            },
            {
                let mut b = good.clone();
                *b.last_mut().unwrap() ^= 0x80;
                b
            },
            good[..good.len() - 1].to_vec(),
            good[..10].to_vec(),
        ];
        for (i, bad) in damaged.into_iter().enumerate() {
            std::fs::write(&path, bad).unwrap();
            assert!(cache.load_module(&engine, &hash).is_none(), "case {i}");
            assert!(!path.exists(), "case {i}: the bad file is removed");
            // Rebuilt: stored again, loads again.
            cache.store_module(&engine, &hash, &serialized).unwrap();
            assert_eq!(
                answer(&engine, &cache.load_module(&engine, &hash).unwrap()),
                42
            );
        }
        assert_eq!(cache.stats().rejected, 4);
    }

    #[test]
    fn a_file_of_the_first_format_is_a_miss_and_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let engine = engine(false);
        let wasm = wat::parse_str(WAT).unwrap();
        let hash = ModuleHash::of(&wasm);
        let serialized = engine.precompile_module(&wasm).unwrap();
        let path = cache.module_path(&engine, &hash);
        let mut old = MAGIC_V1.to_vec();
        old.extend_from_slice(&[0; 64]);
        old.extend_from_slice(&serialized);
        std::fs::write(&path, old).unwrap();
        assert!(cache.load_module(&engine, &hash).is_none());
        assert!(!path.exists());
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.rejected), (1, 0));
        cache.store_module(&engine, &hash, &serialized).unwrap();
        assert_eq!(
            answer(&engine, &cache.load_module(&engine, &hash).unwrap()),
            42
        );
    }
}
