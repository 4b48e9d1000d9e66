//! Recurses without bound.
fn deeper(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    deeper(frame[3] + 1) + frame[7]
}

fn main() {
    println!("{}", deeper(0));
}
