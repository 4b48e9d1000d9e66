#[wpool_guest::task]
fn run(input: String) -> String {
    input
}

fn main() {}
