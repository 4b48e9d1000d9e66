//! `native-hash ROUNDS TASKS THREADS`: runs `hash::sha256_rounds(b"wpool",
//! ROUNDS)` TASKS times spread over THREADS threads, with sha2's portable
//! code, and prints `TASKS_PER_SEC DIGEST_HEX` (the digest so that the
//! benchmark can check that the same function ran).

use std::time::Instant;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("native-hash ROUNDS TASKS THREADS"))
        .collect();
    let [rounds, tasks, threads] = args[..] else {
        eprintln!("usage: native-hash ROUNDS TASKS THREADS");
        std::process::exit(2);
    };
    let per_thread = tasks.div_ceil(threads);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut last = None;
                for _ in 0..per_thread {
                    last = std::hint::black_box(hash::sha256_rounds(
                        std::hint::black_box(b"wpool"),
                        rounds,
                    ));
                }
                last
            })
        })
        .collect();
    let digests: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let rate = (per_thread * threads) as f64 / started.elapsed().as_secs_f64();
    let digest = digests[0].expect("rounds > 0");
    println!("{rate} {}", hex::encode(digest));
}
