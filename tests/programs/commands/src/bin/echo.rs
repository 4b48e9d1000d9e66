//! Copies stdin to stdout and says so on stderr.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    eprintln!("echoing {} bytes", input.len());
    std::io::stdout().write_all(&input).unwrap();
}
