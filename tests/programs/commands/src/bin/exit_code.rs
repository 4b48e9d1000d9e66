//! Logs twenty lines, then exits with code 3.
fn main() {
    for i in 1..=20 {
        eprintln!("log line {i}");
    }
    print!("partial output");
    std::process::exit(3);
}
