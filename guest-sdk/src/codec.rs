//! Decoding the input, calling the task function, encoding its output.
//!
//! Every ABI (the WASI command's `_start`, the component's `run`) and every
//! [`testing`](crate::testing) helper goes through the two functions here, so
//! a native test exercises the exact codec a deployed task uses.

use std::any::type_name;
use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Failure;

/// Runs `task` on JSON `input`: decodes `I` from the bytes, calls the
/// function, encodes `O` as compact JSON.
pub(crate) fn call_json<I, O, E, F>(task: F, input: &[u8]) -> Result<Vec<u8>, Failure>
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    let input: I = serde_json::from_slice(input).map_err(|e| {
        Failure::Input(format!(
            "invalid input: expected JSON for `{}`: {e}",
            type_name::<I>()
        ))
    })?;
    let output = task(input).map_err(|e| Failure::Task(e.to_string()))?;
    serde_json::to_vec(&output).map_err(|e| {
        Failure::Output(format!(
            "could not encode the output `{}` as JSON: {e}",
            type_name::<O>()
        ))
    })
}

/// Runs `task` on raw `input`: no codec, the bytes are handed over as they
/// are (or checked to be UTF-8 for a `String` input).
pub(crate) fn call_raw<I, O, E, F>(task: F, input: Vec<u8>) -> Result<Vec<u8>, Failure>
where
    I: RawInput,
    O: RawOutput,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    let input = I::from_input(input).map_err(Failure::Input)?;
    let output = task(input).map_err(|e| Failure::Task(e.to_string()))?;
    Ok(output.into_output())
}

/// An input type of a `#[task(raw)]` function: the input bytes as they are.
///
/// Implemented for `Vec<u8>` (any bytes) and `String` (the bytes must be
/// UTF-8; if they are not, the run fails with [`Failure::Input`]).
pub trait RawInput: Sized {
    /// Takes the input bytes, or says why they are not a valid `Self`.
    fn from_input(bytes: Vec<u8>) -> Result<Self, String>;
}

impl RawInput for Vec<u8> {
    fn from_input(bytes: Vec<u8>) -> Result<Self, String> {
        Ok(bytes)
    }
}

impl RawInput for String {
    fn from_input(bytes: Vec<u8>) -> Result<Self, String> {
        String::from_utf8(bytes).map_err(|e| format!("invalid input: expected UTF-8 text: {e}"))
    }
}

/// An output type of a `#[task(raw)]` function: bytes written as they are.
///
/// Implemented for `Vec<u8>`, `String`, `&'static str` and
/// `&'static [u8]`.
pub trait RawOutput {
    /// The output bytes.
    fn into_output(self) -> Vec<u8>;
}

impl RawOutput for Vec<u8> {
    fn into_output(self) -> Vec<u8> {
        self
    }
}

impl RawOutput for String {
    fn into_output(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl RawOutput for &'static str {
    fn into_output(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl RawOutput for &'static [u8] {
    fn into_output(self) -> Vec<u8> {
        self.to_vec()
    }
}
