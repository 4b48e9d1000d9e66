#[wpool_guest::task]
fn run<T: serde::de::DeserializeOwned>(input: T) -> Result<String, String> {
    drop(input);
    Ok(String::new())
}

fn main() {}
