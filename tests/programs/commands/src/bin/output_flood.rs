//! Writes output without end.
use std::io::Write;

fn main() {
    let chunk = vec![b'x'; 64 << 10];
    let mut stdout = std::io::stdout();
    loop {
        if stdout.write_all(&chunk).is_err() {
            // Keep trying: a host that merely refuses writes would let us
            // spin here; wpool must stop us.
            continue;
        }
    }
}
