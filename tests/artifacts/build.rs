//! Builds the guest programs the tests run, for the wasm targets, and
//! exports one path constant per program.
//!
//! - `tests/programs/commands/src/bin/<name>.rs` → `P1_<NAME>` (wasm32-wasip1
//!   command module); `echo` also → `P2_ECHO_COMMAND` (a wasm32-wasip2
//!   command component: a component of another world).
//! - `tests/programs/component` → `P2_COMPONENT` (a `wpool:task` component).
//! - `tests/programs/cli_p2` → `P2_CLI` (an ordinary binary for
//!   wasm32-wasip2: a `wasi:cli/run` component).
//! - `examples/rust/<name>` → `EXAMPLE_P1_<NAME>` and `EXAMPLE_P2_<NAME>`.
//!
//! Every test program must be used by a test in `tests/all/`: the build
//! fails otherwise, so no guest program lingers untested.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let target_dir = std::env::var_os("WPOOL_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("guests"));
    for watched in [
        "tests/programs",
        "examples/rust",
        "guest-sdk",
        "wit",
        "tests/all",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=WPOOL_GUEST_TARGET_DIR");

    // Programs and examples share names (`progress`): separate target dirs.
    let examples_dir = target_dir.join("examples");
    let target_dir = target_dir.join("programs");
    let programs = root.join("tests/programs");
    let examples = root.join("examples/rust");
    let mut out = String::new();

    cargo_build(
        &programs.join("Cargo.toml"),
        "wasm32-wasip1",
        &["-p", "commands"],
        &target_dir,
    );
    let mut command_names = Vec::new();
    for entry in std::fs::read_dir(programs.join("commands/src/bin")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            command_names.push(path.file_stem().unwrap().to_str().unwrap().to_string());
        }
    }
    command_names.sort();
    let mut constants = Vec::new();
    for name in &command_names {
        let wasm = target_dir.join(format!("wasm32-wasip1/release/{name}.wasm"));
        constants.push(export(
            &mut out,
            &format!("P1_{}", name.to_uppercase()),
            &wasm,
        ));
    }

    cargo_build(
        &programs.join("Cargo.toml"),
        "wasm32-wasip2",
        &["-p", "commands", "--bin", "echo"],
        &target_dir,
    );
    constants.push(export(
        &mut out,
        "P2_ECHO_COMMAND",
        &target_dir.join("wasm32-wasip2/release/echo.wasm"),
    ));
    cargo_build(
        &programs.join("Cargo.toml"),
        "wasm32-wasip2",
        &["-p", "component"],
        &target_dir,
    );
    constants.push(export(
        &mut out,
        "P2_COMPONENT",
        &target_dir.join("wasm32-wasip2/release/component.wasm"),
    ));

    cargo_build(
        &programs.join("Cargo.toml"),
        "wasm32-wasip2",
        &["-p", "cli_p2"],
        &target_dir,
    );
    constants.push(export(
        &mut out,
        "P2_CLI",
        &target_dir.join("wasm32-wasip2/release/cli_p2.wasm"),
    ));

    if examples.join("Cargo.toml").exists() {
        for target in ["wasm32-wasip1", "wasm32-wasip2"] {
            cargo_build(
                &examples.join("Cargo.toml"),
                target,
                &["--workspace"],
                &examples_dir,
            );
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&examples).unwrap() {
            let path = entry.unwrap().path();
            if path.join("Cargo.toml").exists() {
                names.push(
                    path.file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .replace('-', "_"),
                );
            }
        }
        names.sort();
        for name in names {
            for (target, short) in [("wasm32-wasip1", "P1"), ("wasm32-wasip2", "P2")] {
                let wasm = examples_dir.join(format!("{target}/release/{name}.wasm"));
                export(
                    &mut out,
                    &format!("EXAMPLE_{short}_{}", name.to_uppercase()),
                    &wasm,
                );
            }
        }
    }

    require_tests(&root.join("tests/all"), &constants);
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("programs.rs");
    std::fs::write(dest, out).unwrap();
}

fn export(out: &mut String, name: &str, wasm: &Path) -> String {
    assert!(
        wasm.exists(),
        "the build did not produce {}",
        wasm.display()
    );
    writeln!(out, "/// `{}`", wasm.display()).unwrap();
    writeln!(
        out,
        "pub const {name}: &str = {:?};",
        wasm.display().to_string()
    )
    .unwrap();
    name.to_string()
}

fn cargo_build(manifest: &Path, target: &str, args: &[&str], target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--release")
        .arg("--quiet")
        .arg("--target")
        .arg(target)
        .arg("--manifest-path")
        .arg(manifest)
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir);
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    if !status.success() {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(target))
            .unwrap_or(true);
        if !installed {
            panic!(
                "the Rust target {target} is not installed; the tests need it to build their \
                 guest programs. Install it with:\n\n    rustup target add wasm32-wasip1 wasm32-wasip2\n"
            );
        }
        panic!(
            "building the guest programs in {} for {target} failed (see above)",
            manifest.display()
        );
    }
}

fn require_tests(tests_dir: &Path, constants: &[String]) {
    let mut sources = String::new();
    if let Ok(entries) = std::fs::read_dir(tests_dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    let untested: Vec<&String> = constants
        .iter()
        .filter(|c| !sources.contains(c.as_str()))
        .collect();
    assert!(
        untested.is_empty(),
        "guest programs without a test in tests/all/: {untested:?}; add a test that runs each, \
         or remove the program"
    );
}
