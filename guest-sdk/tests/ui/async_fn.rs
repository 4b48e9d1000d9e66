#[wpool_guest::task]
async fn run(input: String) -> Result<String, String> {
    Ok(input)
}

fn main() {}
