//! Integration tests of wpool: real WASM through real wasmtime, the real
//! binary. One test binary; shared helpers in `util`.

mod cache;
mod claim_ahead;
mod cli;
mod cli_actions;
mod cli_run;
mod contract;
mod dashboard;
mod durable;
mod examples;
mod executor;
mod outputs;
mod pg;
mod pg_hosts;
mod pool;
mod postgres;
mod server;
mod server_actions;
mod server_batch;
mod server_limits;
mod submissions;
mod util;
mod wasi_programs;
