//! A task's `argv` and environment.
//!
//! Both are the same for every ABI: `argv` is the module's name and its
//! fixed arguments ([`ModuleSettings`]); the environment is the module's
//! variables, then the host's ([`RunEnv`]: `WPOOL_TASK_ID` and
//! `WPOOL_ATTEMPT` for a pool's task), then `TMPDIR` where a command's
//! scratch directory sets it.
//!
//! A component is given them as strings in its WASI context. A WASI
//! preview 1 command is not: wasmtime-wasi would take an allocation per
//! argument and two per variable at every run, for a guest that most
//! often reads neither (a Rust program reads its environment only when it
//! calls `std::env::var`). Its run keeps where they come from instead
//! ([`GuestEnv`]: the module's settings, shared; the task's id and
//! attempt as numbers), and wpool's own `args_*` and `environ_*` calls
//! write them into the guest's memory when the guest asks
//! ([`link`]), as wasmtime-wasi's would: the same sizes, the same
//! layout, and a trap for a pointer out of the guest's memory or
//! misaligned.

use std::sync::Arc;

use wasmtime::{Caller, Extern, Linker};

use crate::{ModuleSettings, TaskId};

/// The host's environment variables for one run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RunEnv<'a> {
    /// Variables as given ([`Executor::run`](crate::Executor::run)'s
    /// caller).
    Pairs(&'a [(&'a str, &'a str)]),
    /// A pool's task: `WPOOL_TASK_ID` and `WPOOL_ATTEMPT`, written as
    /// text only where they are read.
    Task {
        /// The task's id.
        id: TaskId,
        /// Its attempt, from 1.
        attempt: u64,
    },
}

impl RunEnv<'_> {
    /// Calls `each` with every variable, in order.
    pub(crate) fn for_each(&self, mut each: impl FnMut(&str, &str)) {
        match *self {
            RunEnv::Pairs(pairs) => {
                for (key, value) in pairs {
                    each(key, value);
                }
            }
            RunEnv::Task { id, attempt } => {
                let mut id_text = [0; TaskId::TEXT_LEN];
                let mut attempt_text = [0; 20];
                each("WPOOL_TASK_ID", id.write_text(&mut id_text));
                each("WPOOL_ATTEMPT", decimal(attempt, &mut attempt_text));
            }
        }
    }
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).expect("ASCII digits")
}

/// A command's `argv` and environment, kept in its store for its own
/// WASI calls ([`link`]).
pub(crate) struct GuestEnv {
    /// The module's own settings; `None`: the defaults (the default
    /// program name, no arguments, no variables).
    settings: Option<Arc<ModuleSettings>>,
    host: HostVars,
    /// The scratch directory's `TMPDIR`, last.
    tmpdir: Option<&'static str>,
}

/// [`RunEnv`], owned by the run's store.
enum HostVars {
    Pairs(Vec<(String, String)>),
    Task { id: TaskId, attempt: u64 },
}

impl GuestEnv {
    /// What a run with `settings` (the module's own, if it has any) and
    /// the host's `env` sees; with `tmpdir` last where a scratch
    /// directory sets it. Allocates only for [`RunEnv::Pairs`], and
    /// only if there are any.
    pub(crate) fn new(
        settings: Option<&Arc<ModuleSettings>>,
        env: RunEnv<'_>,
        tmpdir: Option<&'static str>,
    ) -> Self {
        let host = match env {
            RunEnv::Pairs(pairs) => HostVars::Pairs(
                pairs
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
            ),
            RunEnv::Task { id, attempt } => HostVars::Task { id, attempt },
        };
        GuestEnv {
            settings: settings.cloned(),
            host,
            tmpdir,
        }
    }

    /// Calls `each` with every argument, `argv[0]` first.
    fn for_each_arg(&self, mut each: impl FnMut(&str)) {
        match &self.settings {
            Some(settings) => {
                each(settings.program_name());
                for arg in &settings.args {
                    each(arg);
                }
            }
            None => each(crate::settings::DEFAULT_PROGRAM_NAME),
        }
    }

    /// Calls `each` with every variable, in order.
    fn for_each_var(&self, mut each: impl FnMut(&str, &str)) {
        if let Some(settings) = &self.settings {
            for (key, value) in &settings.env {
                each(key, value);
            }
        }
        match &self.host {
            HostVars::Pairs(pairs) => {
                for (key, value) in pairs {
                    each(key, value);
                }
            }
            HostVars::Task { id, attempt } => RunEnv::Task {
                id: *id,
                attempt: *attempt,
            }
            .for_each(&mut each),
        }
        if let Some(dir) = self.tmpdir {
            each("TMPDIR", dir);
        }
    }

    /// Calls `each` with every string of `which`, in order, as the parts
    /// WASI joins into it (`KEY`, `=`, `VALUE` for a variable); each
    /// string is then ended with a `\0`.
    fn strings(&self, which: List, mut each: impl FnMut(&[&[u8]])) {
        match which {
            List::Args => self.for_each_arg(|arg| each(&[arg.as_bytes()])),
            List::Environ => {
                self.for_each_var(|key, value| each(&[key.as_bytes(), b"=", value.as_bytes()]));
            }
        }
    }
}

/// `argv` or the environment.
#[derive(Clone, Copy)]
enum List {
    Args,
    Environ,
}

const WASI: &str = "wasi_snapshot_preview1";

/// WASI preview 1's `overflow` errno.
const ERRNO_OVERFLOW: i32 = 61;

/// Links wpool's `args_get`, `args_sizes_get`, `environ_get` and
/// `environ_sizes_get` (see the module docs), for a store whose data
/// gives its [`GuestEnv`] with `env`. Shadows wasmtime-wasi's.
pub(crate) fn link<T: 'static>(
    linker: &mut Linker<T>,
    env: fn(&T) -> &GuestEnv,
) -> wasmtime::Result<()> {
    for (name, which) in [
        ("args_sizes_get", List::Args),
        ("environ_sizes_get", List::Environ),
    ] {
        linker.func_wrap(
            WASI,
            name,
            move |mut caller: Caller<'_, T>, count: i32, size: i32| -> wasmtime::Result<i32> {
                let (mut n, mut bytes) = (0usize, 0usize);
                env(caller.data()).strings(which, |parts| {
                    n += 1;
                    bytes += parts.iter().map(|part| part.len()).sum::<usize>() + 1;
                });
                let (Ok(n), Ok(bytes)) = (u32::try_from(n), u32::try_from(bytes)) else {
                    return Ok(ERRNO_OVERFLOW);
                };
                let memory = guest_memory(&mut caller)?;
                let data = memory.data_mut(&mut caller);
                put_u32(data, count, n)?;
                put_u32(data, size, bytes)?;
                Ok(0)
            },
        )?;
    }
    for (name, which) in [("args_get", List::Args), ("environ_get", List::Environ)] {
        linker.func_wrap(
            WASI,
            name,
            move |mut caller: Caller<'_, T>, pointers: i32, buf: i32| -> wasmtime::Result<i32> {
                let memory = guest_memory(&mut caller)?;
                let (data, state) = memory.data_and_store_mut(&mut caller);
                let mut pointer = pointers.cast_unsigned();
                let mut at = buf.cast_unsigned();
                let mut fault = None;
                env(state).strings(which, |parts| {
                    if fault.is_some() {
                        return;
                    }
                    let written = put_u32(data, pointer.cast_signed(), at).and_then(|()| {
                        for part in parts {
                            at = put_bytes(data, at, part)?;
                        }
                        at = put_bytes(data, at, b"\0")?;
                        pointer = pointer
                            .checked_add(4)
                            .ok_or(wiggle::GuestError::PtrOverflow)?;
                        Ok(())
                    });
                    fault = written.err();
                });
                match fault {
                    Some(e) => Err(wasmtime::Error::new(e)),
                    None => Ok(0),
                }
            },
        )?;
    }
    Ok(())
}

/// The caller's exported memory (every command exports it: checked when
/// it was prepared).
pub(super) fn guest_memory<T>(caller: &mut Caller<'_, T>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(wasmtime::Error::msg("missing required memory export")),
    }
}

/// Writes `value` at the guest's address `at`, 4-byte aligned.
pub(super) fn put_u32(data: &mut [u8], at: i32, value: u32) -> Result<(), wiggle::GuestError> {
    let start = at.cast_unsigned();
    let region = wiggle::Region::new(start, 4);
    if !start.is_multiple_of(4) {
        return Err(wiggle::GuestError::PtrNotAligned(region, 4));
    }
    let slot = usize::try_from(start)
        .ok()
        .and_then(|start| data.get_mut(start..start.checked_add(4)?))
        .ok_or(wiggle::GuestError::PtrOutOfBounds(region))?;
    slot.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Writes `bytes` at the guest's address `at`; the address after them.
fn put_bytes(data: &mut [u8], at: u32, bytes: &[u8]) -> Result<u32, wiggle::GuestError> {
    let len = u32::try_from(bytes.len()).map_err(|_| wiggle::GuestError::PtrOverflow)?;
    let end = at.checked_add(len).ok_or(wiggle::GuestError::PtrOverflow)?;
    region(data, at, len)?.copy_from_slice(bytes);
    Ok(end)
}

/// The guest's bytes `start..start + len`, or the error wasmtime-wasi
/// traps with.
pub(super) fn region(
    data: &mut [u8],
    start: u32,
    len: u32,
) -> Result<&mut [u8], wiggle::GuestError> {
    let out_of_bounds = || wiggle::GuestError::PtrOutOfBounds(wiggle::Region::new(start, len));
    let end = start.checked_add(len).ok_or_else(out_of_bounds)?;
    let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
        return Err(out_of_bounds());
    };
    data.get_mut(start..end).ok_or_else(out_of_bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writes_every_u64() {
        let mut buf = [0; 20];
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
    }

    #[test]
    fn a_write_out_of_the_memory_or_misaligned_is_refused_and_writes_nothing() {
        let mut data = vec![0u8; 16];
        assert!(matches!(
            put_u32(&mut data, 2, 7),
            Err(wiggle::GuestError::PtrNotAligned(_, 4))
        ));
        assert!(matches!(
            put_u32(&mut data, 16, 7),
            Err(wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert!(matches!(
            put_u32(&mut data, -4, 7),
            Err(wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert!(matches!(
            put_bytes(&mut data, 10, b"1234567"),
            Err(wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert!(matches!(
            put_bytes(&mut data, u32::MAX, b"12"),
            Err(wiggle::GuestError::PtrOverflow)
        ));
        assert_eq!(data, vec![0u8; 16]);
        put_u32(&mut data, 12, 0x0403_0201).unwrap();
        assert_eq!(put_bytes(&mut data, 9, b"abc").unwrap(), 12);
        assert_eq!(&data[9..16], b"abc\x01\x02\x03\x04");
    }

    #[test]
    fn variables_come_in_order_module_then_host_then_tmpdir() {
        let mut settings = ModuleSettings {
            name: Some("tool".into()),
            args: vec!["-v".into()],
            ..ModuleSettings::default()
        };
        settings.env.insert("LANG".into(), "C".into());
        let settings = Arc::new(settings);
        let id = TaskId::new();
        let env = GuestEnv::new(
            Some(&settings),
            RunEnv::Task { id, attempt: 3 },
            Some("/tmp"),
        );
        let mut vars = Vec::new();
        env.for_each_var(|key, value| vars.push(format!("{key}={value}")));
        assert_eq!(
            vars,
            [
                "LANG=C".to_string(),
                format!("WPOOL_TASK_ID={id}"),
                "WPOOL_ATTEMPT=3".into(),
                "TMPDIR=/tmp".into()
            ]
        );
        let mut args = Vec::new();
        env.for_each_arg(|arg| args.push(arg.to_string()));
        assert_eq!(args, ["tool", "-v"]);

        let plain = GuestEnv::new(None, RunEnv::Pairs(&[("A", "1")]), None);
        let mut vars = Vec::new();
        plain.for_each_var(|key, value| vars.push(format!("{key}={value}")));
        assert_eq!(vars, ["A=1"]);
        let mut args = Vec::new();
        plain.for_each_arg(|arg| args.push(arg.to_string()));
        assert_eq!(args, [crate::settings::DEFAULT_PROGRAM_NAME]);
    }
}
