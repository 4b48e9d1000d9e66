// Build: cargo build --release --target wasm32-wasip1 (or wasm32-wasip2) --manifest-path examples/rust/Cargo.toml -p hello

//! Greets by name: `{"name": "Ada"}` → `{"greeting": "Hello, Ada!"}`.

use serde::{Deserialize, Serialize};

/// The task's input.
#[derive(Debug, Deserialize)]
pub struct Input {
    /// Who to greet.
    pub name: String,
}

/// The task's output.
#[derive(Debug, Serialize)]
pub struct Output {
    /// The greeting.
    pub greeting: String,
}

/// Greets `input.name`.
#[wpool_guest::task]
pub fn run(input: Input) -> Result<Output, String> {
    wpool_guest::log(&format!("greeting {}", input.name));
    Ok(Output {
        greeting: format!("Hello, {}!", input.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wpool_guest::testing;

    #[test]
    fn greets_by_name_through_the_json_codec() {
        let output = testing::run_json(run, r#"{"name": "Ada"}"#).unwrap();
        assert_eq!(output, r#"{"greeting":"Hello, Ada!"}"#);
    }

    #[test]
    fn a_missing_name_is_an_input_error() {
        let failure = testing::run_json(run, r#"{"nom": "Ada"}"#).unwrap_err();
        assert_eq!(failure.exit_code(), 2);
        assert!(
            failure.message().contains("missing field `name`"),
            "{failure}"
        );
    }
}
