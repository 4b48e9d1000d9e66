#[wpool_guest::task]
fn run(input: &str) -> Result<String, String> {
    Ok(input.to_string())
}

fn main() {}
