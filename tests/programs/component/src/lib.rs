//! A component of the `wpool:task` world whose behaviour the input picks:
//! used to show that the host's limits and kills hold for components too.
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Echo { text: String },
    Spin,
    Sleep { ms: u64 },
    Fail { message: String },
    Progress { steps: u64 },
    Alloc { mib: usize },
}

#[derive(Serialize)]
struct Out {
    text: String,
}

#[wpool_guest::task]
fn run(op: Op) -> Result<Out, String> {
    match op {
        Op::Echo { text } => {
            wpool_guest::log(&format!("echoing {} bytes", text.len()));
            Ok(Out { text })
        }
        Op::Spin => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Op::Sleep { ms } => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(Out { text: format!("slept {ms} ms") })
        }
        Op::Fail { message } => Err(message),
        Op::Progress { steps } => {
            for i in 1..=steps {
                wpool_guest::progress(i, steps);
            }
            Ok(Out { text: format!("{steps} steps") })
        }
        Op::Alloc { mib } => {
            let hoard: Vec<Vec<u8>> = (0..mib).map(|_| vec![7u8; 1 << 20]).collect();
            Ok(Out { text: format!("{} MiB", std::hint::black_box(hoard).len()) })
        }
    }
}
