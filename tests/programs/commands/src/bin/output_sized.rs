//! Writes exactly as many bytes as its input asks, `SIZE SEED [LOG]` (bare,
//! or as a JSON string): a PRNG sequence seeded by SEED, so that every
//! task's output is its own; and LOG bytes of text lines to stderr.
use std::io::{Read, Write};

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let mut words = input.trim_matches(|c: char| c == '"' || c.is_whitespace()).split_whitespace();
    let size: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let mut x: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(1) | 1;
    let log: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let line = format!("{:>63}\n", format!("log line of seed {x}"));
    let mut stderr = std::io::stderr().lock();
    for _ in 0..log / line.len() {
        stderr.write_all(line.as_bytes()).unwrap();
    }
    stderr.write_all(&line.as_bytes()[..log % line.len()]).unwrap();
    let mut chunk = vec![0u8; 64 << 10];
    let mut left = size;
    let mut stdout = std::io::stdout().lock();
    while left > 0 {
        for pair in chunk.chunks_mut(8) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let bytes = x.to_le_bytes();
            pair.copy_from_slice(&bytes[..pair.len()]);
        }
        let n = left.min(chunk.len());
        stdout.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}
