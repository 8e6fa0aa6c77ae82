//! Links the kernel with its own script: loaded at 1 MiB, with the PVH
//! note in a PT_NOTE segment of its own.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/layout.ld");
    println!("cargo:rerun-if-changed=layout.ld");
}
