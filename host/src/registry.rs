//! Modules: content-addressed, validated and compiled once, cached ready to
//! instantiate.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use wasmtime::component::Component;

use crate::abi::command::{self, CommandPre, CommandState};
use crate::abi::component::{self, ComponentPre, ComponentState, TaskPre};
use crate::task::ModuleMap;
use crate::{Error, ModuleHash, ModuleSettings, Result};

/// Which ABI a module speaks, told from its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// A core module run as a WASI (preview 1) command.
    Command,
    /// A component: of the `wpool:task` world, or a `wasi:cli/run` command.
    Component,
}

impl ModuleKind {
    /// Tells a core module from a component by the header, or says why the
    /// bytes are neither.
    pub fn detect(bytes: &[u8]) -> Result<Self> {
        match bytes {
            [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => Ok(ModuleKind::Command),
            [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(ModuleKind::Component),
            [0, b'a', b's', b'm', ..] => Err(Error::InvalidModule(
                "unsupported WebAssembly binary version (expected a core module, version 1, or a \
                 component)"
                    .into(),
            )),
            _ if bytes.trim_ascii_start().starts_with(b"(") => Err(Error::InvalidModule(
                "this looks like WebAssembly text (.wat): compile it to a binary first, e.g. \
                 with `wasm-tools parse`"
                    .into(),
            )),
            _ => Err(Error::InvalidModule(format!(
                "not a WebAssembly binary: it does not start with the `\\0asm` magic ({} bytes)",
                bytes.len()
            ))),
        }
    }
}

pub(crate) enum Prepared {
    Command(CommandPre),
    Component(TaskPre<ComponentState>),
    CliCommand(wasmtime_wasi::p2::bindings::CommandPre<ComponentState>),
}

/// A module compiled and checked, ready to instantiate. Cheap to clone
/// (shared).
#[derive(Clone)]
pub struct CompiledModule {
    inner: Arc<CompiledInner>,
}

struct CompiledInner {
    hash: ModuleHash,
    kind: ModuleKind,
    size: usize,
    prepared: Prepared,
}

impl CompiledModule {
    /// The module's hash.
    pub fn hash(&self) -> ModuleHash {
        self.inner.hash
    }

    /// The module's ABI.
    pub fn kind(&self) -> ModuleKind {
        self.inner.kind
    }

    /// The size of the module's bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    pub(crate) fn prepared(&self) -> &Prepared {
        &self.inner.prepared
    }

    /// Whether the module is a command (a WASI preview 1 command module or
    /// a `wasi:cli/run` component): its output is its stdout and its exit
    /// code its outcome, and its settings' arguments reach it.
    pub fn is_command(&self) -> bool {
        matches!(
            self.inner.prepared,
            Prepared::Command(_) | Prepared::CliCommand(_)
        )
    }
}

impl fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledModule")
            .field("hash", &self.inner.hash)
            .field("kind", &self.inner.kind)
            .field("size", &self.inner.size)
            .finish()
    }
}

/// Compiled modules by hash. Registering validates and compiles a module
/// once; every later registration of the same bytes, and every task, reuses
/// the compiled form.
pub(crate) struct Registry {
    engine: wasmtime::Engine,
    artifacts: Option<crate::ArtifactCache>,
    command_linker: wasmtime::Linker<CommandState>,
    direct_linker: wasmtime::Linker<CommandState>,
    component_linker: wasmtime::component::Linker<ComponentState>,
    modules: RwLock<ModuleMap<CompiledModule>>,
    settings: RwLock<ModuleMap<Arc<ModuleSettings>>>,
    /// The settings of a module that has none of its own, shared: every
    /// run looks its module's settings up.
    default_settings: Arc<ModuleSettings>,
    /// How many modules have settings of their own (`settings`'s length,
    /// written under its lock). While none has, a run takes the default
    /// without the lock and the reference count, whose cache lines every
    /// worker would otherwise write at every run.
    own_settings: AtomicUsize,
    compilations: AtomicU64,
    loads: AtomicU64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("compilations", &self.compilations)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(
        engine: &wasmtime::Engine,
        artifacts: Option<crate::ArtifactCache>,
    ) -> Result<Self> {
        Ok(Self {
            engine: engine.clone(),
            artifacts,
            command_linker: command::linker(engine)?,
            direct_linker: command::direct_linker(engine)?,
            component_linker: component::linker(engine)?,
            modules: RwLock::new(ModuleMap::default()),
            settings: RwLock::new(ModuleMap::default()),
            default_settings: Arc::default(),
            own_settings: AtomicUsize::new(0),
            compilations: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        })
    }

    /// The on-disk artifact cache's counters, if there is one.
    pub(crate) fn artifact_stats(&self) -> Option<crate::CacheStats> {
        self.artifacts.as_ref().map(crate::ArtifactCache::stats)
    }

    /// Modules loaded from the on-disk artifact cache instead of compiled.
    pub(crate) fn cache_loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    pub(crate) fn get(&self, hash: &ModuleHash) -> Option<CompiledModule> {
        self.modules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .cloned()
    }

    pub(crate) fn forget(&self, hash: &ModuleHash) {
        self.modules
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
        let mut settings = self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        settings.remove(hash);
        self.own_settings.store(settings.len(), Ordering::Release);
    }

    /// Sets a module's run settings (default settings remove them).
    pub(crate) fn set_settings(&self, hash: &ModuleHash, settings: ModuleSettings) {
        let mut map = self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if settings.is_default() {
            map.remove(hash);
        } else {
            map.insert(*hash, Arc::new(settings));
        }
        self.own_settings.store(map.len(), Ordering::Release);
    }

    /// A module's own run settings; `None` if it has none (it runs with
    /// [`Registry::default_settings`]). No lock is taken while no module
    /// has settings of its own.
    pub(crate) fn own_settings(&self, hash: &ModuleHash) -> Option<Arc<ModuleSettings>> {
        if self.own_settings.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .cloned()
    }

    /// The settings of a module that has none of its own.
    pub(crate) fn default_settings(&self) -> &ModuleSettings {
        &self.default_settings
    }

    /// A module's run settings (the default if none were set).
    pub(crate) fn settings(&self, hash: &ModuleHash) -> Arc<ModuleSettings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .unwrap_or(&self.default_settings)
            .clone()
    }

    pub(crate) fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    pub(crate) fn register(&self, bytes: &[u8]) -> Result<CompiledModule> {
        self.register_as(ModuleHash::of(bytes), bytes, true)
    }

    /// Like [`register`](Self::register), for bytes the caller keeps
    /// under `hash` (a module store): they are hashed only if they are to
    /// be compiled, not when `hash` is compiled already or its artifact is
    /// on disk. Hashing a large component costs a large part of loading it
    /// from the artifact cache.
    pub(crate) fn register_known(&self, hash: ModuleHash, bytes: &[u8]) -> Result<CompiledModule> {
        self.register_as(hash, bytes, false)
    }

    /// Registers `bytes` as `hash`; `hashed` says whether `hash` was
    /// computed from them. If not, the artifact of `hash` is loaded as it
    /// is (it was compiled from bytes of that hash: the cache stores only
    /// what was registered under its own hash), and the bytes are checked
    /// against `hash` before they are compiled, so that a module is never
    /// compiled and kept under another module's hash.
    fn register_as(&self, hash: ModuleHash, bytes: &[u8], hashed: bool) -> Result<CompiledModule> {
        if let Some(module) = self.get(&hash) {
            return Ok(module);
        }
        let kind = ModuleKind::detect(bytes)?;
        let verify = || {
            if hashed {
                return Ok(());
            }
            let actual = ModuleHash::of(bytes);
            if actual == hash {
                Ok(())
            } else {
                Err(Error::InvalidModule(format!(
                    "the bytes given for module {hash} are those of module {actual}"
                )))
            }
        };
        // An artifact is kept on disk only for a module that passed every
        // check, so that a cached artifact is always one worth loading.
        let prepared = match kind {
            ModuleKind::Command => {
                let (module, fresh) = match self.load_module(&hash) {
                    Some(module) => (module, false),
                    None => {
                        verify()?;
                        (
                            self.compile(&hash, kind, bytes, |e, b| wasmtime::Module::new(e, b))?,
                            true,
                        )
                    }
                };
                let prepared =
                    command::prepare(&self.command_linker, &self.direct_linker, &module)?;
                if fresh {
                    self.store_artifact(&hash, kind, module.serialize());
                }
                Prepared::Command(prepared)
            }
            ModuleKind::Component => {
                let (component, fresh) = match self.load_component(&hash) {
                    Some(component) => (component, false),
                    None => {
                        verify()?;
                        (
                            self.compile(&hash, kind, bytes, |e, b| Component::new(e, b))?,
                            true,
                        )
                    }
                };
                let prepared = component::prepare(&self.component_linker, &component)?;
                if fresh {
                    self.store_artifact(&hash, kind, component.serialize());
                }
                match prepared {
                    ComponentPre::Task(pre) => Prepared::Component(pre),
                    ComponentPre::Cli(pre) => Prepared::CliCommand(pre),
                }
            }
        };
        let module = CompiledModule {
            inner: Arc::new(CompiledInner {
                hash,
                kind,
                size: bytes.len(),
                prepared,
            }),
        };
        // Two threads may compile the same new module at once; the first to
        // insert wins and both get the same compiled module.
        let mut modules = self.modules.write().unwrap_or_else(PoisonError::into_inner);
        Ok(modules.entry(hash).or_insert(module).clone())
    }
}

impl Registry {
    /// Validates and compiles; the only place a module is compiled.
    fn compile<T>(
        &self,
        hash: &ModuleHash,
        kind: ModuleKind,
        bytes: &[u8],
        compile: impl FnOnce(&wasmtime::Engine, &[u8]) -> wasmtime::Result<T>,
    ) -> Result<T> {
        self.compilations.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%hash, ?kind, size = bytes.len(), "compiling module");
        compile(&self.engine, bytes).map_err(|e| {
            let what = match kind {
                ModuleKind::Command => "module",
                ModuleKind::Component => "component",
            };
            let reason = crate::abi::error_chain(&e);
            match unsupported_feature(&reason) {
                Some(hint) => {
                    Error::InvalidModule(format!("{hint} (the validator said: {reason})"))
                }
                None => Error::InvalidModule(format!("the {what} does not validate: {reason}")),
            }
        })
    }

    fn load_module(&self, hash: &ModuleHash) -> Option<wasmtime::Module> {
        let module = self.artifacts.as_ref()?.load_module(&self.engine, hash)?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        Some(module)
    }

    fn load_component(&self, hash: &ModuleHash) -> Option<Component> {
        let component = self
            .artifacts
            .as_ref()?
            .load_component(&self.engine, hash)?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        Some(component)
    }

    /// Keeps a compiled artifact on disk. A failure costs a compilation at
    /// the next start, nothing more: it is logged, not returned.
    fn store_artifact(
        &self,
        hash: &ModuleHash,
        kind: ModuleKind,
        serialized: wasmtime::Result<Vec<u8>>,
    ) {
        let Some(cache) = &self.artifacts else { return };
        let stored = match serialized {
            Ok(bytes) => match kind {
                ModuleKind::Command => cache.store_module(&self.engine, hash, &bytes),
                ModuleKind::Component => cache.store_component(&self.engine, hash, &bytes),
            },
            Err(e) => Err(Error::Host(crate::abi::error_chain(&e))),
        };
        if let Err(e) = stored {
            tracing::warn!(%hash, error = %e, "cannot keep the compiled module on disk");
        }
    }
}

/// A clear refusal for a module that uses a WebAssembly proposal wpool's
/// engine leaves off, from the validator's message.
fn unsupported_feature(reason: &str) -> Option<&'static str> {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("exception") {
        // Standard exception handling (exnref) is on; the legacy
        // instructions (`try`/`catch`/`delegate`) are not supported by
        // wasmtime outside its test suite.
        return Some(
            "the module uses the legacy exception-handling instructions (`try`, `catch`, \
             `delegate`: what many toolchains still emit for C++ built with \
             `-fwasm-exceptions`), which wasmtime does not support for production; wpool runs \
             the standard ones (`try_table`, exnref): rebuild with LLVM's \
             `-mllvm -wasm-use-legacy-eh=false`, or without exceptions (`-fno-exceptions`)",
        );
    }
    if reason.contains("threads") || reason.contains("shared memor") || reason.contains("atomic") {
        return Some(
            "the module uses WebAssembly threads (shared memory or atomics), and wpool runs \
             single-threaded tasks only: build for `wasm32-wasip1` (not \
             `wasm32-wasip1-threads`), without `-pthread` or `+atomics`",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_rejects_garbage() {
        let hash = ModuleHash::of(b"abc");
        assert_eq!(
            hash.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hash.to_string().parse::<ModuleHash>().unwrap(), hash);
        assert!(
            "xyz"
                .parse::<ModuleHash>()
                .unwrap_err()
                .to_string()
                .contains("64 hexadecimal")
        );
    }

    #[test]
    fn kinds_are_told_apart() {
        assert_eq!(
            ModuleKind::detect(b"\0asm\x01\0\0\0").unwrap(),
            ModuleKind::Command
        );
        assert_eq!(
            ModuleKind::detect(b"\0asm\x0d\0\x01\0").unwrap(),
            ModuleKind::Component
        );
        assert!(
            ModuleKind::detect(b"(module)")
                .unwrap_err()
                .to_string()
                .contains(".wat")
        );
        assert!(
            ModuleKind::detect(b"hello")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
    }
}
