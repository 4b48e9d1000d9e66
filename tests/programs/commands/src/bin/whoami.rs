//! Says which run it is: sleeps for the number of milliseconds given as
//! input (in a host call), then prints `task <WPOOL_TASK_ID> attempt
//! <WPOOL_ATTEMPT> slept <ms> ms`. A result names the run that made it.
use std::io::Read;
use std::time::Duration;

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let ms = input.trim().parse().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
    let task = std::env::var("WPOOL_TASK_ID").unwrap_or_default();
    let attempt = std::env::var("WPOOL_ATTEMPT").unwrap_or_default();
    print!("task {task} attempt {attempt} slept {ms} ms");
}
