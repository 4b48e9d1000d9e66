#[wpool_guest::task]
struct Task;

fn main() {}
