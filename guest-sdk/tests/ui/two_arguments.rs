#[wpool_guest::task]
fn run(a: String, b: String) -> Result<String, String> {
    Ok(a + &b)
}

fn main() {}
