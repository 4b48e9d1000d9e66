//! The `wpool` command: dispatches to `wpool::cli`.

fn main() -> std::process::ExitCode {
    wpool::cli::main()
}
