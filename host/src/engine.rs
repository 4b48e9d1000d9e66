//! The wasmtime engine behind a pool: one per pool, sized for its workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::{Error, Limits, Result};

/// How a pool's engine and workers are set up.
///
/// Setters take `&mut self` and return `&mut Self`; each says its default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub(crate) workers: usize,
    pub(crate) max_workers: Option<usize>,
    pub(crate) max_memory: u64,
    pub(crate) fuel_metering: bool,
    pub(crate) epoch_tick: Duration,
    pub(crate) max_wasm_stack: usize,
    pub(crate) instances_per_task: u32,
    pub(crate) default_limits: Limits,
    pub(crate) artifact_dir: Option<std::path::PathBuf>,
    pub(crate) read_only_dirs: Vec<crate::ReadOnlyDir>,
    pub(crate) scratch_root: Option<std::path::PathBuf>,
    pub(crate) max_scratch: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_workers: None,
            max_memory: Self::DEFAULT_MAX_MEMORY,
            fuel_metering: true,
            epoch_tick: Duration::from_millis(1),
            max_wasm_stack: 1 << 20,
            instances_per_task: 32,
            default_limits: Limits::default(),
            artifact_dir: None,
            read_only_dirs: Vec::new(),
            scratch_root: None,
            max_scratch: 64 << 20,
        }
    }
}

impl EngineConfig {
    /// The most [`EngineConfig::max_memory`] may be: 4 GiB, the address
    /// space the pooling allocator reserves per memory slot on a 64-bit
    /// host (wasmtime's `memory_reservation`), which is also all that a
    /// 32-bit wasm memory can address. wasmtime refuses a larger maximum.
    pub const MAX_MEMORY: u64 = 4 << 30;

    /// The default of [`EngineConfig::max_memory`]: 1 GiB.
    pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;

    /// A configuration with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many tasks run at once. Default: the number of CPU cores.
    pub fn workers(&mut self, workers: usize) -> &mut Self {
        self.workers = workers;
        self
    }

    /// How many tasks run at once (see [`EngineConfig::workers`]).
    pub fn worker_count(&self) -> usize {
        self.workers
    }

    /// The most workers the pool can ever be resized to while it runs; the
    /// engine's instance pool is sized for this many. Default: `workers`.
    pub fn max_workers(&mut self, max_workers: usize) -> &mut Self {
        self.max_workers = Some(max_workers);
        self
    }

    /// The largest memory limit any task may have, in bytes, from 64 KiB
    /// to [`EngineConfig::MAX_MEMORY`] (4 GiB). Default: 1 GiB.
    ///
    /// The pooling allocator reserves (but does not commit) address space
    /// for every memory slot: 4 GiB plus a 32 MiB guard, whatever this is
    /// set to, so a smaller value saves no address space; it is the bound
    /// past which a task's `memory.grow` fails.
    pub fn max_memory(&mut self, bytes: u64) -> &mut Self {
        self.max_memory = bytes;
        self
    }

    /// The largest memory limit any task may have, in bytes (see
    /// [`EngineConfig::max_memory`]).
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory
    }

    /// Whether the engine meters fuel. With it, every run reports the fuel
    /// it consumed and fuel budgets work; without it, CPU-bound guests run
    /// faster (roughly 1.3× on this kind of code) and a task asking for a
    /// fuel budget is refused. Default: on.
    pub fn fuel_metering(&mut self, on: bool) -> &mut Self {
        self.fuel_metering = on;
        self
    }

    /// How often the epoch ticker advances the engine's epoch; the
    /// resolution of timeouts and cancels for a guest spinning in wasm.
    /// Default: 1 ms.
    pub fn epoch_tick(&mut self, tick: Duration) -> &mut Self {
        self.epoch_tick = tick;
        self
    }

    /// The maximum wasm stack of a task, in bytes; deeper recursion traps
    /// with a stack overflow. Default: 1 MiB.
    pub fn max_wasm_stack(&mut self, bytes: usize) -> &mut Self {
        self.max_wasm_stack = bytes;
        self
    }

    /// How many core instances (and so memories and tables) one task may
    /// create. A plain command module needs one; components made by
    /// language toolchains (Python, JavaScript) bundle several. Default: 32.
    pub fn instances_per_task(&mut self, count: u32) -> &mut Self {
        self.instances_per_task = count;
        self
    }

    /// The limits of a task that asks for none. Default: [`Limits::default`].
    pub fn default_limits(&mut self, limits: Limits) -> &mut Self {
        self.default_limits = limits;
        self
    }

    /// A directory for compiled artifacts, so that a module compiled once is
    /// loaded, not compiled again, after a restart (see
    /// [`ArtifactCache`](crate::ArtifactCache)). Default: none (compiled
    /// modules live in memory only). [`Pool::open`](crate::Pool::open) sets
    /// it to `<data-dir>/artifacts`.
    pub fn artifact_dir(&mut self, dir: impl Into<std::path::PathBuf>) -> &mut Self {
        self.artifact_dir = Some(dir.into());
        self
    }

    /// Grants a host directory, read-only, to the tasks of all modules or of
    /// some (see [`ReadOnlyDir`](crate::ReadOnlyDir)). Default: none (a
    /// task sees no host directory).
    pub fn read_only_dir(&mut self, dir: crate::ReadOnlyDir) -> &mut Self {
        self.read_only_dirs.push(dir);
        self
    }

    /// Where tasks' scratch directories are made (each in a directory of
    /// its own, removed when the task ends; those of a process that was
    /// killed are removed when the next executor starts, on Linux).
    /// Default: `wpool-scratch` in the system's temporary directory.
    pub fn scratch_root(&mut self, dir: impl Into<std::path::PathBuf>) -> &mut Self {
        self.scratch_root = Some(dir.into());
        self
    }

    /// The largest scratch directory a module may ask for
    /// ([`ModuleSettings::scratch`](crate::ModuleSettings::scratch)), in
    /// bytes; 0 gives no module a scratch directory. Default: 64 MiB.
    ///
    /// The bound of each directory is kept by wpool's own WASI preview 1
    /// calls: a write (or a new file, directory or link) that would take
    /// the directory past its bound fails with `ENOSPC`, as on a full disk;
    /// a file grown past the bound by writing after a seek past its end
    /// stops the task with a trap. Files count by length, and each entry
    /// for 4 KiB more. Only WASI preview 1 commands get a scratch
    /// directory.
    pub fn max_scratch(&mut self, bytes: u64) -> &mut Self {
        self.max_scratch = bytes;
        self
    }

    /// The directory scratch directories are made in.
    pub(crate) fn scratch_root_dir(&self) -> std::path::PathBuf {
        self.scratch_root
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("wpool-scratch"))
    }

    /// The number of worker slots the engine is sized for.
    pub fn slots(&self) -> usize {
        self.max_workers.unwrap_or(self.workers).max(self.workers)
    }

    /// The wasmtime configuration this describes: the pooling allocator
    /// sized for [`EngineConfig::slots`], fuel and epochs, the wasm stack
    /// and features. Public so that a baseline (the benchmark's raw
    /// wasmtime loop) can use exactly the same engine.
    pub fn wasmtime_config(&self) -> Result<wasmtime::Config> {
        self.validate()?;
        let config = self;
        let slots = u32::try_from(config.slots()).expect("validated: at most 4096");
        let per_task = config.instances_per_task;
        let max_memory = usize::try_from(config.max_memory)
            .map_err(|_| Error::Config("`max_memory` does not fit this platform".into()))?;

        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_core_instances(slots * per_task)
            .total_component_instances(slots)
            .total_memories(slots * per_task)
            .total_tables(slots * per_task)
            .total_stacks(slots)
            .max_core_instances_per_component(per_task)
            .max_memories_per_component(per_task)
            .max_tables_per_component(per_task)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(100_000)
            .max_memory_size(max_memory)
            // A store that throws wasm exceptions has one GC heap (taken
            // from the memory pool); at most one store per slot.
            .total_gc_heaps(slots)
            .max_core_instance_size(1 << 20)
            .max_component_instance_size(1 << 20)
            // Per-task cost is dominated by giving memory back to the kernel
            // when a store is dropped; batching and keeping a little resident
            // (with pagemap scanning to reset it) cut it by 3-4x. A batch
            // holds the memory of the tasks in it until it is given back, so
            // it is no larger than the number of workers: what it holds is
            // then at most what the running tasks could hold (measured: a
            // batch of 16 kept six 8 MiB-input tasks' 24 MiB memories each).
            .decommit_batch_size(config.workers.clamp(1, 16))
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);

        let mut wasm = wasmtime::Config::new();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))
            .consume_fuel(config.fuel_metering)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // The fiber stack must hold the wasm stack plus host frames.
            .async_stack_size(config.max_wasm_stack + (1 << 20))
            .wasm_component_model(true)
            // The exception-handling proposal (standard, exnref-based), for
            // programs built with wasm exceptions; wasmtime allocates thrown
            // exceptions in a GC heap, hence its `gc` cargo feature.
            .wasm_exceptions(true)
            // A task host runs single-threaded guests: shared memories are
            // compiled out (cargo features); the GC proposal itself, stack
            // switching and 64-bit memories are turned off here.
            .wasm_gc(false)
            .wasm_stack_switching(false)
            .wasm_memory64(false)
            .parallel_compilation(true);
        Ok(wasm)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::Config("`workers` must be at least 1".into()));
        }
        if self.slots() > 4096 {
            return Err(Error::Config(format!(
                "{} worker slots is more than the maximum of 4096",
                self.slots()
            )));
        }
        if self.max_memory < 65_536 || self.max_memory > Self::MAX_MEMORY {
            return Err(Error::Config(format!(
                "`max_memory` must be between 64 KiB and {} (the address space the pooling \
                 allocator reserves for each memory, and all a 32-bit wasm memory can \
                 address), not {}",
                crate::units::format_size(Self::MAX_MEMORY),
                crate::units::format_size(self.max_memory)
            )));
        }
        if self.epoch_tick.is_zero() || self.epoch_tick > Duration::from_secs(1) {
            return Err(Error::Config(
                "`epoch_tick` must be between 1 ns and 1 s".into(),
            ));
        }
        if self.max_wasm_stack < 64 << 10 || self.max_wasm_stack > 64 << 20 {
            return Err(Error::Config(
                "`max_wasm_stack` must be between 64 KiB and 64 MiB".into(),
            ));
        }
        if self.instances_per_task == 0 || self.instances_per_task > 1024 {
            return Err(Error::Config(
                "`instances_per_task` must be between 1 and 1024".into(),
            ));
        }
        for dir in &self.read_only_dirs {
            dir.validate()?;
        }
        self.default_limits.validate(self.max_memory)
    }
}

/// A wasmtime engine and the thread that ticks its epoch.
///
/// The ticker holds only a weak reference to the engine and stops when this
/// value is dropped (or when the engine is gone).
#[derive(Debug)]
pub(crate) struct WasmEngine {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) fuel_metering: bool,
    stop_ticker: Arc<AtomicBool>,
}

impl WasmEngine {
    pub(crate) fn new(config: &EngineConfig) -> Result<Self> {
        let wasm = config.wasmtime_config()?;
        let engine = wasmtime::Engine::new(&wasm)
            .map_err(|e| Error::Config(format!("wasmtime refused the configuration: {e}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = stop_ticker.clone();
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("wpool-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::Host(format!("cannot start the epoch ticker thread: {e}")))?;

        Ok(Self {
            engine,
            fuel_metering: config.fuel_metering,
            stop_ticker,
        })
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}
