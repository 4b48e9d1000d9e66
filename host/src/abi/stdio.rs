//! A command's stdio without a WASI context, until it needs one.
//!
//! wasmtime-wasi's WASI preview 1 context is built whole: seeding its
//! two random number generators (a ChaCha block of the thread's generator
//! at every run), a table of resources, a descriptor for each of stdin,
//! stdout and stderr, boxed streams behind them. Building and dropping it
//! takes some 3,000 instructions a run, more than the executor's own work
//! for a task. Yet most tasks use WASI for their stdio alone: a Rust
//! program that reads its input and prints its result imports `fd_read`,
//! `fd_write`, `environ_*` and `proc_exit`, and `random_get` if it builds
//! a `HashMap`.
//!
//! So a run without files (no directory granted, no scratch directory:
//! then stdin, stdout and stderr are its only descriptors) starts with its
//! stdio alone ([`LazyWasi::Pending`]), and wpool answers these calls
//! itself while it is so ([`read`], [`write`], [`random`]); the first call
//! wpool leaves to wasmtime-wasi (`fd_fdstat_get`, `clock_time_get`, any
//! other) builds the context ([`LazyWasi::ctx`]), with stdin at the point
//! where the guest's reads left it, and every later read and write is
//! wasmtime-wasi's.
//! A run with files builds its context before the guest starts, as before.
//!
//! wpool's calls do what wasmtime-wasi's do, so that a guest cannot tell
//! which answered: a read fills the first non-empty buffer given, from the
//! input, and a write writes the whole of the first non-empty buffer; a
//! pointer out of the guest's memory or misaligned traps (a
//! [`wiggle::GuestError`], whose outcome says "bad pointer"); an array of
//! buffers longer than the call's host-call fuel (wasmtime's bound on what
//! one call may copy) is refused with `ENOMEM`. One difference:
//! `random_get` fills the guest's buffer from the thread's generator
//! (`rand`'s, which wasmtime-wasi's context is seeded from) at any length
//! the guest's memory holds, where wasmtime-wasi's allocates the bytes
//! first and traps past 64 MiB.

use bytes::Bytes;
use rand::Rng as _;
use wasmtime::{AsContextMut, Caller};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use super::environ::{guest_memory, put_u32, region};
use super::io::{CappedOutput, LogSink};

/// WASI preview 1's `nomem` errno.
const ERRNO_NOMEM: i32 = 48;

/// The stdio of a run: its input, how much of it the guest has read, and
/// where its output and log go.
pub(crate) struct Stdio {
    pub(crate) input: Bytes,
    pub(crate) read: usize,
    pub(crate) output: CappedOutput,
    pub(crate) log: LogSink,
}

/// A command's WASI context, built when a call needs it (see the module
/// docs).
#[allow(
    clippy::large_enum_variant,
    reason = "it lives in the run's store, allocated once; a box would be one more allocation a run"
)]
pub(crate) enum LazyWasi {
    /// Not built: the guest has made no call but wpool's own.
    Pending(Stdio),
    /// Built: every WASI call but wpool's own is wasmtime-wasi's.
    Built(WasiP1Ctx),
}

impl LazyWasi {
    /// The WASI context, built now if it was not: stdin is the input from
    /// where the guest's reads left it, stdout and stderr the run's.
    pub(crate) fn ctx(&mut self) -> &mut WasiP1Ctx {
        if let LazyWasi::Pending(stdio) = self {
            let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
            builder
                .stdout(stdio.output.clone())
                .stderr(stdio.log.clone())
                .stdin(MemoryInputPipe::new(stdio.input.slice(stdio.read..)));
            *self = LazyWasi::Built(builder.build_p1());
        }
        match self {
            LazyWasi::Built(ctx) => ctx,
            LazyWasi::Pending(_) => unreachable!("the context was built just above"),
        }
    }

    /// Whether the context was built.
    pub(crate) fn is_built(&self) -> bool {
        matches!(self, LazyWasi::Built(_))
    }

    fn pending(&mut self) -> Option<&mut Stdio> {
        match self {
            LazyWasi::Pending(stdio) => Some(stdio),
            LazyWasi::Built(_) => None,
        }
    }
}

/// Where a run's store data keeps its [`LazyWasi`].
pub(crate) type WasiOf<T> = fn(&mut T) -> &mut LazyWasi;

/// wpool's `fd_read` of stdin (descriptor 0) while the context is not
/// built; `None` where it does not answer (another descriptor, or the
/// context is built), and the call is wasmtime-wasi's.
pub(crate) fn read<T>(
    caller: &mut Caller<'_, T>,
    wasi: WasiOf<T>,
    fd: i32,
    iovs: i32,
    count: i32,
    nread: i32,
) -> Option<wasmtime::Result<i32>> {
    if fd != 0 {
        return None;
    }
    transfer(
        caller,
        wasi,
        iovs,
        count,
        nread,
        |stdio, data, start, len| {
            let rest = &stdio.input[stdio.read..];
            let n = rest.len().min(usize::try_from(len)?);
            // Only the bytes read must be in the guest's memory, as in
            // wasmtime-wasi's (at the input's end, none).
            region(data, start, u32::try_from(n)?)?.copy_from_slice(&rest[..n]);
            stdio.read += n;
            Ok(n)
        },
    )
}

/// wpool's `fd_write` to stdout or stderr (descriptors 1 and 2) while the
/// context is not built; `None` where it does not answer. A write past
/// the output limit traps, as the output's stream does.
pub(crate) fn write<T>(
    caller: &mut Caller<'_, T>,
    wasi: WasiOf<T>,
    fd: i32,
    iovs: i32,
    count: i32,
    written: i32,
) -> Option<wasmtime::Result<i32>> {
    if !(fd == 1 || fd == 2) {
        return None;
    }
    transfer(
        caller,
        wasi,
        iovs,
        count,
        written,
        |stdio, data, start, len| {
            let buf = region(data, start, len)?;
            if fd == 1 {
                stdio
                    .output
                    .write_bytes(buf)
                    .map_err(wasmtime::Error::new)?;
            } else {
                stdio.log.write(buf);
            }
            Ok(buf.len())
        },
    )
}

/// wpool's `random_get`, built context or not (see the module docs).
pub(crate) fn random<T>(caller: &mut Caller<'_, T>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let memory = guest_memory(caller)?;
    let data = memory.data_mut(caller);
    let (start, len) = (buf.cast_unsigned(), len.cast_unsigned());
    let target = region(data, start, len)?;
    rand::rng().fill_bytes(target);
    Ok(0)
}

/// The first non-empty buffer of the guest's array of `count` buffers at
/// `iovs` (each a 4-byte-aligned pair of a 32-bit address and length), as
/// `(start, len)`; `(0, 0)` if all are empty. Each entry up to it is
/// checked as wasmtime-wasi checks it.
fn first_non_empty(data: &[u8], iovs: u32, count: u32) -> Result<(u32, u32), wiggle::GuestError> {
    for i in 0..count {
        let at = i
            .checked_mul(8)
            .and_then(|offset| iovs.checked_add(offset))
            .ok_or(wiggle::GuestError::PtrOverflow)?;
        let entry = wiggle::Region::new(at, 8);
        if !at.is_multiple_of(4) {
            return Err(wiggle::GuestError::PtrNotAligned(entry, 4));
        }
        let bytes = usize::try_from(at)
            .ok()
            .and_then(|at| data.get(at..at.checked_add(8)?))
            .ok_or(wiggle::GuestError::PtrOutOfBounds(entry))?;
        let word =
            |k: usize| u32::from_le_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
        let (buf, len) = (word(0), word(4));
        if len != 0 {
            return Ok((buf, len));
        }
    }
    Ok((0, 0))
}

/// A read or a write of the first non-empty buffer of the guest's `iovs`
/// (its `start` and `len` in the guest's memory `data`) by `transfer`,
/// which answers how many bytes it took or gave; that count is written at
/// `done`. `None` once the context is built: the call is wasmtime-wasi's.
fn transfer<T>(
    caller: &mut Caller<'_, T>,
    wasi: WasiOf<T>,
    iovs: i32,
    count: i32,
    done: i32,
    transfer: impl FnOnce(&mut Stdio, &mut [u8], u32, u32) -> wasmtime::Result<usize>,
) -> Option<wasmtime::Result<i32>> {
    if wasi(caller.data_mut()).is_built() {
        return None;
    }
    let pending = move || -> wasmtime::Result<i32> {
        let fuel = caller.as_context_mut().hostcall_fuel();
        let memory = guest_memory(caller)?;
        let (data, state) = memory.data_and_store_mut(caller);
        let (iovs, count) = (iovs.cast_unsigned(), count.cast_unsigned());
        // wasmtime-wasi's bound: the array, then the buffer, within the fuel.
        let Some(fuel) = fuel.checked_sub(usize::try_from(count)?.saturating_mul(8)) else {
            return Ok(ERRNO_NOMEM);
        };
        let (start, len) = first_non_empty(data, iovs, count)?;
        if usize::try_from(len)? > fuel {
            return Ok(ERRNO_NOMEM);
        }
        let stdio = wasi(state)
            .pending()
            .expect("the context was not built: checked above");
        let n = transfer(stdio, data, start, len)?;
        put_u32(data, done, u32::try_from(n)?)?;
        Ok(0)
    };
    Some(pending())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_empty_buffer_is_found_and_bad_entries_refused() {
        let mut data = vec![0u8; 64];
        // Two entries at 16: an empty one, then 5 bytes at 40.
        data[16..24].copy_from_slice(&[40, 0, 0, 0, 0, 0, 0, 0]);
        data[24..32].copy_from_slice(&[40, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(first_non_empty(&data, 16, 2).unwrap(), (40, 5));
        assert_eq!(first_non_empty(&data, 16, 1).unwrap(), (0, 0));
        assert_eq!(first_non_empty(&data, 16, 0).unwrap(), (0, 0));
        assert!(matches!(
            first_non_empty(&data, 18, 1),
            Err(wiggle::GuestError::PtrNotAligned(_, 4))
        ));
        // The array runs past the memory before a non-empty entry.
        assert!(matches!(
            first_non_empty(&data, 56, 2),
            Err(wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert!(matches!(
            first_non_empty(&data, u32::MAX - 3, 2),
            Err(wiggle::GuestError::PtrOverflow | wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert!(matches!(
            region(&mut data, 60, 5),
            Err(wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert!(matches!(
            region(&mut data, u32::MAX, 2),
            Err(wiggle::GuestError::PtrOutOfBounds(_))
        ));
        assert_eq!(region(&mut data, 60, 4).unwrap().len(), 4);
    }
}
