//! Reports progress through the stderr line protocol, and logs.
fn main() {
    for i in 1..=4 {
        eprintln!("step {i}");
        eprintln!("wpool:progress {i} 4");
    }
    print!("done");
}
