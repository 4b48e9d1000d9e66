//! Exits with the code given on stdin (a decimal `u32`), after a line of
//! output and of log: what `exit(code)` does in any language.
use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let code: u32 = input.trim().parse().expect("a decimal exit code on stdin");
    print!("exiting with {code}");
    eprintln!("about to exit with {code}");
    // `std::process::exit` takes an `i32`; the guest passes its bits to
    // `proc_exit` unchanged, so every `u32` can be given.
    std::process::exit(i32::from_ne_bytes(code.to_ne_bytes()));
}
