//! Sleeps in a host call: for the number of milliseconds given as input, or
//! for an hour when the input is empty.
use std::io::Read;
use std::time::Duration;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let ms = input.trim().parse().unwrap_or(3_600_000);
    std::thread::sleep(Duration::from_millis(ms));
    print!("slept {ms} ms");
}
