/work/main/wasm-harness/guest/target/wasm32-unknown-unknown/debug/deps/vmem_wasm-e9409f997d3ed6ab.d: src/lib.rs Cargo.toml

/work/main/wasm-harness/guest/target/wasm32-unknown-unknown/debug/deps/libvmem_wasm-e9409f997d3ed6ab.rmeta: src/lib.rs Cargo.toml

src/lib.rs:
Cargo.toml:

# env-dep:CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
# env-dep:CLIPPY_CONF_DIR
