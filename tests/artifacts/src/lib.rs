//! Paths of the guest programs built for the tests (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
