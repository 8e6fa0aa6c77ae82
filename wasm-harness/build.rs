//! Builds the guest module (`guest/`, crate `vmem-wasm`) from the current
//! sources on every harness build whose inputs changed, and hands its path
//! to the library as `VMEM_WASM_PATH`. The module is never checked in, so
//! the harness cannot run a stale one.
//!
//! The guest is its own workspace with its own target directory
//! (`target/wasm-guest`), so this nested cargo never waits on the lock of
//! the build that runs it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

include!("src/guest_stack.rs");

/// Variables of the outer build that would change how the guest builds:
/// its flags and target directory, and wrappers such as clippy-driver.
fn leaks_into_nested_cargo(name: &str) -> bool {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];
    const PREFIXES_KEPT: &[&str] = &["CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_"];
    if KEEP.contains(&name) || PREFIXES_KEPT.iter().any(|p| name.starts_with(p)) {
        return false;
    }
    name.starts_with("CARGO_")
        || matches!(
            name,
            "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
        )
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("wasm-harness sits in the workspace");
    let guest = manifest_dir.join("guest");
    let core = workspace.join("vmem-core");
    for input in [
        core.join("src"),
        core.join("Cargo.toml"),
        guest.join("src"),
        guest.join("Cargo.toml"),
        guest.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    let target_dir = workspace.join("target").join("wasm-guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&guest)
        // Cargo reads this script's stdout for directives: keep the nested
        // cargo's out of it (its messages go to stderr).
        .stdout(Stdio::null());
    for (name, _) in env::vars_os() {
        if name.to_str().is_some_and(leaks_into_nested_cargo) {
            command.env_remove(&name);
        }
    }
    // The stack size is the guest's one link flag (see src/guest_stack.rs).
    let rustflags = format!("-C\x1flink-arg=-zstack-size={GUEST_STACK_BYTES}");
    command.env("CARGO_ENCODED_RUSTFLAGS", rustflags);

    let status = command
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the guest: {e}"));
    assert!(
        status.success(),
        "building the guest module (wasm-harness/guest) failed: {status}"
    );

    let built = target_dir.join("wasm32-unknown-unknown/release/vmem_wasm.wasm");
    // A copy in OUT_DIR belongs to this build script's run: removing
    // target/wasm-guest cannot leave the library pointing at nothing.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let module = out_dir.join("vmem_wasm.wasm");
    copy(&built, &module);
    println!("cargo:rustc-env=VMEM_WASM_PATH={}", module.display());
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap_or_else(|e| {
        panic!(
            "could not copy the guest module {} to {}: {e}",
            from.display(),
            to.display()
        )
    });
}
