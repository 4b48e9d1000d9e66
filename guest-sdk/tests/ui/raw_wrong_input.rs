#[wpool_guest::task(raw)]
fn run(input: u32) -> Result<Vec<u8>, String> {
    Ok(input.to_le_bytes().to_vec())
}

fn main() {}
