// Build: cargo build --release --target wasm32-wasip1 (or wasm32-wasip2) --manifest-path examples/rust/Cargo.toml -p hash

//! CPU-bound: `{"data": "abc", "rounds": N}` → `{"sha256": "<hex>", "rounds": N}`,
//! the digest after applying SHA-256 `N` times: first to the bytes of
//! `data` (UTF-8), then to each previous 32-byte digest.
//!
//! [`sha256_rounds`] is the whole computation, public so that a native
//! benchmark can time the same code the task runs.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The task's input.
#[derive(Debug, Deserialize)]
pub struct Input {
    /// The text to hash (its UTF-8 bytes).
    pub data: String,
    /// How many times to apply SHA-256; at least 1.
    pub rounds: u64,
}

/// The task's output.
#[derive(Debug, Serialize)]
pub struct Output {
    /// The final digest, lowercase hex.
    pub sha256: String,
    /// The rounds applied, as given.
    pub rounds: u64,
}

/// Applies SHA-256 `rounds` times: to `data`, then to each digest.
/// `None` for zero rounds, where no digest is computed.
pub fn sha256_rounds(data: &[u8], rounds: u64) -> Option<[u8; 32]> {
    if rounds == 0 {
        return None;
    }
    let mut digest: [u8; 32] = Sha256::digest(data).into();
    for _ in 1..rounds {
        digest = Sha256::digest(digest).into();
    }
    Some(digest)
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// Hashes `input.data` `input.rounds` times.
#[wpool_guest::task]
pub fn run(input: Input) -> Result<Output, String> {
    let digest = sha256_rounds(input.data.as_bytes(), input.rounds)
        .ok_or_else(|| "rounds must be at least 1".to_string())?;
    Ok(Output {
        sha256: to_hex(&digest),
        rounds: input.rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::testing;

    // Expected digests computed independently (Python's hashlib).
    const ABC_1: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_3: &str = "f2a778f1a6ed3d5bc59a5d79104c598f3f07093f240ca4e91333fb09ed4f36da";

    #[test]
    fn one_round_is_plain_sha256() {
        assert_eq!(to_hex(&sha256_rounds(b"abc", 1).unwrap()), ABC_1);
    }

    #[test]
    fn rounds_hash_the_previous_digest() {
        let output = testing::run_json(run, r#"{"data": "abc", "rounds": 3}"#).unwrap();
        assert_eq!(output, format!(r#"{{"sha256":"{ABC_3}","rounds":3}}"#));
    }

    #[test]
    fn zero_rounds_is_an_error() {
        let failure = testing::run_json(run, r#"{"data": "abc", "rounds": 0}"#).unwrap_err();
        assert_eq!(failure.to_string(), "rounds must be at least 1");
    }

    #[test]
    fn negative_rounds_are_invalid_input() {
        let failure = testing::run_json(run, r#"{"data": "abc", "rounds": -1}"#).unwrap_err();
        assert_eq!(failure.exit_code(), 2, "{failure}");
    }
}
