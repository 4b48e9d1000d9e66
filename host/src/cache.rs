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
//! Each file is the artifact followed by a trailer (the name's key, a
//! CRC-32 of key and artifact, magic). The artifact comes first so that
//! wasmtime can map the file itself ([`Module::deserialize_open_file`])
//! instead of copying it: the code is used from the mapping, and the
//! initial memory images are mapped copy-on-write from the file, not
//! copied into memory files at the first instantiation. wasmtime does not
//! check an artifact's integrity when it loads one, so the cache does,
//! before handing the file over: a file whose checksum does not match is
//! logged, removed and reported as a miss (the caller compiles and stores
//! the module again). The checksum guards against damage (a torn write, a
//! flipped bit), not against someone who can write the directory (who
//! could replace the host's binary as well): CRC-32 catches every burst of
//! up to 32 bits and all but 1 in 2^32 of the rest, at several GB/s, where
//! the SHA-256 of the first format took most of a large component's load
//! time. Files of the older formats (a header in front) are compiled again
//! once, quietly.
//!
//! Files are written to a temporary name and renamed, never written in
//! place: a reader never sees half a file, and a file that is mapped (for
//! as long as its module lives) never changes under the mapping. Replacing
//! or removing it only unlinks the old file; its mapping stays intact.

use std::fmt;
use std::fs::File;
use std::hash::Hasher;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::{Error, ModuleHash, Result};

/// The conventional name of the cache directory inside a data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// The last 8 bytes of a file of the current format.
const MAGIC: &[u8; 8] = b"WPART\x03\0\0";
/// How the files of the older formats start (a header in front: version 1
/// with a SHA-256, version 2 with a CRC-32): a miss, not damage.
const OLD_FORMAT: &[u8; 5] = b"WPART";
/// After the artifact: key, CRC-32 (little-endian), 4 bytes of padding,
/// magic.
const TRAILER: usize = 32 + 4 + 4 + 8;
/// The checksum is computed over the file read in pieces of this size: one
/// small buffer that stays in the CPU's cache, not a copy of the artifact.
const CHUNK: usize = 256 << 10;

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
    /// Time spent opening found files and checking them (reading every
    /// byte for the checksum).
    pub check_time: Duration,
    /// Time spent in wasmtime loading checked artifacts (mapping the file,
    /// parsing and registering the code).
    pub load_time: Duration,
}

/// Precompiled artifacts in a directory. Cheap to share behind an `Arc`;
/// every method takes `&self`.
pub struct ArtifactCache {
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    stored: AtomicU64,
    check_nanos: AtomicU64,
    load_nanos: AtomicU64,
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
            check_nanos: AtomicU64::new(0),
            load_nanos: AtomicU64::new(0),
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
            check_time: Duration::from_nanos(self.check_nanos.load(Ordering::Relaxed)),
            load_time: Duration::from_nanos(self.load_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The core module `hash` compiled for `engine`, if a sound artifact is
    /// cached.
    pub fn load_module(&self, engine: &Engine, hash: &ModuleHash) -> Option<Module> {
        let (path, file) = self.open_checked(engine, hash, Kind::Module)?;
        self.deserialize(&path, file, |file| deserialize_module(engine, file))
    }

    /// The component `hash` compiled for `engine`, if a sound artifact is
    /// cached.
    pub fn load_component(&self, engine: &Engine, hash: &ModuleHash) -> Option<Component> {
        let (path, file) = self.open_checked(engine, hash, Kind::Component)?;
        self.deserialize(&path, file, |file| deserialize_component(engine, file))
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

    /// The file, open and checked; `None` (and the file removed) when
    /// there is none or it is unsound.
    fn open_checked(
        &self,
        engine: &Engine,
        hash: &ModuleHash,
        kind: Kind,
    ) -> Option<(PathBuf, File)> {
        let key = key(engine, hash, kind);
        let path = self.path(&key);
        let started = Instant::now();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read a cached artifact; compiling instead");
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let checked = check(&key, &file);
        add_time(&self.check_nanos, started);
        match checked {
            Ok(()) => Some((path, file)),
            Err(Unsound::OldFormat) => {
                tracing::info!(path = %path.display(), module = %hash, "cached artifact of an older format; compiling again");
                self.misses.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(&path);
                None
            }
            Err(Unsound::Unreadable(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a cached artifact; compiling instead");
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(Unsound::Damaged(why)) => {
                tracing::warn!(path = %path.display(), module = %hash, "cached artifact is corrupted ({why}); removing it and compiling again");
                self.reject(&path);
                None
            }
        }
    }

    /// Loads the checked `file`: mapped by wasmtime, or, if that fails (a
    /// data directory on a file system mounted `noexec` refuses executable
    /// mappings), read into memory; a file wasmtime refuses both ways is
    /// removed.
    fn deserialize<T>(
        &self,
        path: &Path,
        file: File,
        load: impl Fn(Loaded) -> wasmtime::Result<T>,
    ) -> Option<T> {
        let started = Instant::now();
        let loaded = load(Loaded::Mapped(&file)).or_else(|e| {
            tracing::debug!(path = %path.display(), error = %e, "cannot load a cached artifact mapped; reading it instead");
            let bytes = read_artifact(&file)?;
            load(Loaded::Read(&bytes))
        });
        add_time(&self.load_nanos, started);
        match loaded {
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
            let mut file = File::create(&tmp)?;
            file.write_all(artifact)?;
            file.write_all(&key)?;
            file.write_all(&checksum(&key, artifact).to_le_bytes())?;
            file.write_all(&[0; 4])?;
            file.write_all(MAGIC)?;
            // No fsync: a file torn by a crash fails its checksum and is
            // rebuilt.
            drop(file);
            // Never write the final name in place: a loaded module maps
            // its file for as long as it lives, and the rename leaves the
            // mapped file (now unlinked) untouched.
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

fn add_time(total: &AtomicU64, since: Instant) {
    let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    total.fetch_add(nanos, Ordering::Relaxed);
}

/// Why a found file is not loaded.
enum Unsound {
    /// A file of an older format: a miss, removed quietly.
    OldFormat,
    /// Reading it failed: a miss, the file left alone.
    Unreadable(std::io::Error),
    /// Damaged or not ours: removed.
    Damaged(String),
}

/// Checks the whole of `file`: its trailer, then the checksum of key and
/// artifact.
fn check(key: &[u8; 32], file: &File) -> Result<(), Unsound> {
    let len = file.metadata().map_err(Unsound::Unreadable)?.len();
    let read = |buf: &mut [u8], at: u64| {
        read_at(file, buf, at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Unsound::Damaged("shorter than its size".into())
            } else {
                Unsound::Unreadable(e)
            }
        })
    };
    let mut head = [0; OLD_FORMAT.len()];
    let head_len = usize::try_from(len).map_or(head.len(), |l| l.min(head.len()));
    read(&mut head[..head_len], 0)?;
    if head == *OLD_FORMAT {
        return Err(Unsound::OldFormat);
    }
    let Some(body) = len.checked_sub(TRAILER as u64) else {
        return Err(Unsound::Damaged(format!(
            "{len} bytes, shorter than its trailer"
        )));
    };
    let mut trailer = [0; TRAILER];
    read(&mut trailer, body)?;
    let (stored_key, rest) = trailer.split_at(32);
    if &rest[8..] != MAGIC {
        return Err(Unsound::Damaged("not a wpool artifact file".into()));
    }
    if stored_key != key {
        return Err(Unsound::Damaged(
            "it belongs to another module or engine".into(),
        ));
    }
    if rest[4..8] != [0; 4] {
        return Err(Unsound::Damaged("a damaged trailer".into()));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(key);
    crc.combine(&crc_of(file, 0..body).map_err(Unsound::Unreadable)?);
    if rest[..4] != crc.finalize().to_le_bytes() {
        return Err(Unsound::Damaged("checksum mismatch".into()));
    }
    Ok(())
}

/// The CRC-32 of `range` of `file`, read through one small buffer that
/// stays in the CPU's cache (not a copy of the artifact).
fn crc_of(file: &File, range: std::ops::Range<u64>) -> std::io::Result<crc32fast::Hasher> {
    let mut crc = crc32fast::Hasher::new();
    let size = range.end - range.start;
    let mut buf = vec![0; usize::try_from(size).map_or(CHUNK, |l| l.min(CHUNK))];
    let mut at = range.start;
    while at < range.end {
        let n = usize::try_from(range.end - at).map_or(buf.len(), |l| l.min(buf.len()));
        read_at(file, &mut buf[..n], at)?;
        crc.update(&buf[..n]);
        at += n as u64;
    }
    Ok(crc)
}

/// Reads exactly `buf.len()` bytes of `file` from offset `at`.
#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, at)
}

/// Elsewhere through the file's cursor.
#[cfg(not(unix))]
fn read_at(mut file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::io::Seek as _;
    file.seek(std::io::SeekFrom::Start(at))?;
    file.read_exact(buf)
}

/// The artifact of a checked `file`, read into memory (without the
/// trailer).
fn read_artifact(mut file: &File) -> std::io::Result<Vec<u8>> {
    use std::io::Seek as _;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    bytes.truncate(bytes.len().saturating_sub(TRAILER));
    Ok(bytes)
}

/// A path that opens the very file `file` is (the same inode, even if its
/// name was replaced since), for wasmtime's `Component::deserialize_file`:
/// components have no `deserialize_open_file`.
#[cfg(target_os = "linux")]
fn reopen(file: &File) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd as _;
    Ok(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
}

/// Elsewhere there is no such path: the caller reads the file instead.
#[cfg(not(target_os = "linux"))]
fn reopen(_: &File) -> std::io::Result<PathBuf> {
    Err(std::io::Error::other(
        "no path to an open file on this system",
    ))
}

/// A checked artifact, as wasmtime is to load it.
enum Loaded<'a> {
    /// The open file, mapped by wasmtime.
    Mapped(&'a File),
    /// The artifact read into memory and copied by wasmtime.
    Read(&'a [u8]),
}

// `Module::deserialize_open_file` and `Module::deserialize` (and their
// `Component` twins) are unsafe because wasmtime trusts the bytes to be an
// artifact it produced, for this engine's configuration, unmodified, and, for
// a mapped file, to stay so for as long as the module lives. Here they are:
// the file's name and trailer key are derived from this engine's
// compatibility hash (and wasmtime checks the version and configuration
// again itself); its CRC-32 over key and artifact was verified just before,
// reading the very file (the same open file, so the same inode) that is then
// mapped or read again; and the cache never writes a file in place (it writes
// a temporary file and renames it, and removing or replacing a file leaves a
// mapping of it intact), so the bytes checked are the bytes mapped. The
// trailer after the artifact is ignored by wasmtime's ELF parser. The cache
// directory is the host's own; whoever can write into its files could also
// replace the host's binary.
#[allow(
    unsafe_code,
    reason = "loading a precompiled artifact whose origin and integrity were verified"
)]
fn deserialize_module(engine: &Engine, artifact: Loaded<'_>) -> wasmtime::Result<Module> {
    // SAFETY: see the comment above: a checked file from our own cache, for
    // this engine, never modified in place.
    unsafe {
        match artifact {
            Loaded::Mapped(file) => Module::deserialize_open_file(engine, file.try_clone()?),
            Loaded::Read(bytes) => Module::deserialize(engine, bytes),
        }
    }
}

#[allow(
    unsafe_code,
    reason = "loading a precompiled artifact whose origin and integrity were verified"
)]
fn deserialize_component(engine: &Engine, artifact: Loaded<'_>) -> wasmtime::Result<Component> {
    // SAFETY: as for `deserialize_module`.
    unsafe {
        match artifact {
            Loaded::Mapped(file) => Component::deserialize_file(engine, reopen(file)?),
            Loaded::Read(bytes) => Component::deserialize(engine, bytes),
        }
    }
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

    fn image_len(range: std::ops::Range<*const u8>) -> u64 {
        (range.end as usize - range.start as usize) as u64
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
        let stats = cache.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.rejected, stats.stored),
            (1, 2, 0, 1)
        );
        assert!(stats.check_time > Duration::ZERO && stats.load_time > Duration::ZERO);

        let component = wat::parse_str("(component)").unwrap();
        let chash = ModuleHash::of(&component);
        let serialized = engine.precompile_component(&component).unwrap();
        cache.store_component(&engine, &chash, &serialized).unwrap();
        let loaded = cache.load_component(&engine, &chash).unwrap();
        // Mapped from its file (trailer included), not read into memory.
        let file_len = std::fs::metadata(cache.component_path(&engine, &chash))
            .unwrap()
            .len();
        assert_eq!(image_len(loaded.image_range()), file_len);
        assert_eq!(
            image_len(cache.load_module(&engine, &hash).unwrap().image_range()),
            std::fs::metadata(cache.module_path(&engine, &hash))
                .unwrap()
                .len()
        );
        // Only the two artifacts: no temporary file left behind.
        assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 2);
    }

    /// A cache in a new directory, the engine without fuel, and the test
    /// module's hash and artifact compiled for that engine (not stored).
    fn fresh() -> (
        tempfile::TempDir,
        ArtifactCache,
        Engine,
        ModuleHash,
        Vec<u8>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let engine = engine(false);
        let wasm = wat::parse_str(WAT).unwrap();
        let hash = ModuleHash::of(&wasm);
        let serialized = engine.precompile_module(&wasm).unwrap();
        (dir, cache, engine, hash, serialized)
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
        let (_dir, cache, engine, hash, serialized) = fresh();
        cache.store_module(&engine, &hash, &serialized).unwrap();
        let path = cache.module_path(&engine, &hash);
        let good = std::fs::read(&path).unwrap();
        // Flip a byte in the middle of the artifact (past the header) and
        // one at the end; and truncate.
        let damaged: Vec<Vec<u8>> = vec![
            {
                let mut b = good.clone();
                let i = (b.len() - TRAILER) / 2;
                b[i] ^= 0x01;
                b
            },
            {
                let mut b = good.clone();
                *b.last_mut().unwrap() ^= 0x80;
                b
            },
            // The artifact's last byte, then the stored checksum.
            {
                let mut b = good.clone();
                let i = b.len() - TRAILER - 1;
                b[i] ^= 0x10;
                b
            },
            {
                let mut b = good.clone();
                let i = b.len() - TRAILER + 32;
                b[i] ^= 0x01;
                b
            },
            good[..good.len() - 1].to_vec(),
            good[..good.len() - TRAILER].to_vec(),
            good[..10].to_vec(),
            Vec::new(),
            [good.as_slice(), b"more"].concat(),
        ];
        let cases = damaged.len() as u64;
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
        assert_eq!(cache.stats().rejected, cases);
    }

    #[test]
    fn a_file_larger_than_the_read_buffer_is_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let engine = engine(false);
        let hash = ModuleHash::of(b"large");
        // The trailer straddles two reads of the buffer.
        let artifact: Vec<u8> = (0..3 * CHUNK + CHUNK - 20).map(|i| i as u8).collect();
        cache.store_module(&engine, &hash, &artifact).unwrap();
        let path = cache.module_path(&engine, &hash);
        let key = key(&engine, &hash, Kind::Module);
        assert!(check(&key, &File::open(&path).unwrap()).is_ok());
        let good = std::fs::read(&path).unwrap();
        let half = artifact.len() / 2;
        for at in [
            0,
            CHUNK - 1,
            CHUNK,
            2 * CHUNK + 7,
            half - 1,
            half,
            artifact.len() - 1,
            good.len() - 9,
            good.len() - 1,
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(
                    check(&key, &File::open(&path).unwrap()),
                    Err(Unsound::Damaged(_))
                ),
                "byte {at}"
            );
        }
        // Not an ELF file: loading refuses it, and it is removed.
        std::fs::write(&path, &good).unwrap();
        assert!(cache.load_module(&engine, &hash).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn a_loaded_module_outlives_its_file_being_replaced_or_removed() {
        let (_dir, cache, engine, hash, serialized) = fresh();
        cache.store_module(&engine, &hash, &serialized).unwrap();
        let loaded = cache.load_module(&engine, &hash).unwrap();
        let path = cache.module_path(&engine, &hash);
        // Stored again (a rename over the mapped file), then removed: the
        // mapping is of the first file, which never changes.
        cache.store_module(&engine, &hash, &serialized).unwrap();
        assert_eq!(answer(&engine, &loaded), 42);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(answer(&engine, &loaded), 42);
        assert!(cache.load_module(&engine, &hash).is_none());
    }

    #[test]
    fn a_checked_artifact_wasmtime_refuses_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let engine = engine(false);
        let hash = ModuleHash::of(b"not an artifact");
        // A sound file (right key, right checksum) whose artifact is not
        // an ELF file: refused both mapped and read, never run.
        cache
            .store_module(&engine, &hash, b"not an artifact at all")
            .unwrap();
        assert!(cache.load_module(&engine, &hash).is_none());
        assert!(!cache.module_path(&engine, &hash).exists());
        assert_eq!(cache.stats().rejected, 1);
    }

    #[test]
    fn a_file_of_the_first_format_is_a_miss_and_compiled_again() {
        let (_dir, cache, engine, hash, serialized) = fresh();
        let path = cache.module_path(&engine, &hash);
        for (version, header) in [(1u8, 8 + 64), (2, 8 + 32 + 4 + 4)] {
            let mut old = b"WPART".to_vec();
            old.extend_from_slice(&[version, 0, 0]);
            old.resize(header, 0);
            old.extend_from_slice(&serialized);
            std::fs::write(&path, old).unwrap();
            assert!(cache.load_module(&engine, &hash).is_none());
            assert!(!path.exists());
        }
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.rejected), (2, 0));
        cache.store_module(&engine, &hash, &serialized).unwrap();
        assert_eq!(
            answer(&engine, &cache.load_module(&engine, &hash).unwrap()),
            42
        );
    }
}
