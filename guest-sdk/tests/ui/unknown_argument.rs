#[wpool_guest::task(json)]
fn run(input: String) -> Result<String, String> {
    Ok(input)
}

fn main() {}
