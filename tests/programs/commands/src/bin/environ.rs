//! Prints its `argv` and environment as JSON (`{"argv": [...], "env":
//! ["KEY=VALUE", ...]}`), in the order it is given them, and reads
//! nothing else: no file and no wait, so that its runs may be direct
//! calls.
fn main() {
    let quoted = |items: Vec<String>| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let argv = quoted(std::env::args().collect());
    let env = quoted(std::env::vars().map(|(k, v)| format!("{k}={v}")).collect());
    print!("{{\"argv\":[{argv}],\"env\":[{env}]}}");
}
