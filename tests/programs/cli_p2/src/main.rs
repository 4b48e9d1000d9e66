//! An ordinary Rust binary built for `wasm32-wasip2` (a `wasi:cli/run`
//! component), run as a task: echoes stdin upper-cased, with its `argv` and
//! one environment variable; exits with failure when the input is `fail`.
use std::io::{Read, Write};

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let args: Vec<String> = std::env::args().collect();
    eprintln!("argv: {args:?}");
    if input.trim() == "fail" {
        eprintln!("asked to fail");
        std::process::exit(7);
    }
    let greeting = std::env::var("GREETING").unwrap_or_default();
    write!(
        std::io::stdout(),
        "{}|{}|{}",
        args.join(" "),
        greeting,
        input.to_uppercase()
    )
    .unwrap();
}
