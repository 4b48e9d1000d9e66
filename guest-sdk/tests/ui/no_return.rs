#[wpool_guest::task]
fn run(input: String) {
    drop(input);
}

fn main() {}
