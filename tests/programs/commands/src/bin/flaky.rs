//! Fails until the attempt wpool gives it (`WPOOL_ATTEMPT`) reaches the
//! number given as input; then succeeds.
use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let succeed_at: u32 = input.trim().parse().unwrap_or(1);
    let attempt: u32 = std::env::var("WPOOL_ATTEMPT")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    if attempt < succeed_at {
        eprintln!("failing on attempt {attempt} of {succeed_at}");
        std::process::exit(1);
    }
    print!("succeeded on attempt {attempt}");
}
