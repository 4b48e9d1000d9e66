//! CPU work with a known amount of it: sums a PRNG sequence of the length
//! given as input (default 1000) and prints the sum.
use std::io::Read;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let n: u64 = input.trim().parse().unwrap_or(1000);
    let mut x: u64 = 1;
    let mut sum: u64 = 0;
    for _ in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        sum = sum.wrapping_add(x >> 33);
    }
    print!("{sum}");
}
