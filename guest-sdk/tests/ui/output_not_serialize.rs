// The codec's bounds are checked natively too, not only in a wasm build.
struct Out;

#[wpool_guest::task]
fn run(input: String) -> Result<Out, String> {
    drop(input);
    Ok(Out)
}

fn main() {}
