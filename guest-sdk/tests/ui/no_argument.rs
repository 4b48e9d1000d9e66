#[wpool_guest::task]
fn run() -> Result<String, String> {
    Ok(String::new())
}

fn main() {}
