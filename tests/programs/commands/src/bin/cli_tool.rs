//! Behaves like an ordinary command-line tool built for another host: reads
//! `std::env::args()` (including `args[0]`), a configuration file named by
//! its first argument, and a few environment variables; prints what it
//! found as JSON. Exits 2 with a usage line when it has no argument, as
//! such tools do.
use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let program = &args[0];
    let rest = &args[1..];
    let Some(config_path) = rest.first() else {
        eprintln!("usage: {program} CONFIG [ARGS...]");
        std::process::exit(2);
    };
    let config = match std::fs::read_to_string(config_path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{program}: cannot read {config_path}: {e}");
            std::process::exit(1);
        }
    };
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).unwrap();
    let var = |k: &str| std::env::var(k).map_or("null".to_string(), |v| format!("{v:?}"));
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    print!(
        "{{\"argv\":[{}],\"config\":{:?},\"input\":{:?},\"lang\":{},\"task_id\":{},\"attempt\":{},\"env_count\":{}}}",
        quoted.join(","),
        config.trim_end(),
        input,
        var("LANG"),
        var("WPOOL_TASK_ID"),
        var("WPOOL_ATTEMPT"),
        std::env::vars().count()
    );
}
