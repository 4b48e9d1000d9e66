//! Reports progress through the stderr line protocol, and logs. With a
//! number of milliseconds as input, it then sleeps that long before it
//! ends (so that its progress can be seen while it runs).
use std::io::Read;

fn main() {
    for i in 1..=4 {
        eprintln!("step {i}");
        eprintln!("wpool:progress {i} 4");
    }
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    if let Ok(ms) = input.trim().trim_matches('"').parse::<u64>() {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    print!("done");
}
