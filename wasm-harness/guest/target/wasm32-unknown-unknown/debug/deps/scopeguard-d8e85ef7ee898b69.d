/work/main/wasm-harness/guest/target/wasm32-unknown-unknown/debug/deps/scopeguard-d8e85ef7ee898b69.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/scopeguard-1.2.0/src/lib.rs

/work/main/wasm-harness/guest/target/wasm32-unknown-unknown/debug/deps/libscopeguard-d8e85ef7ee898b69.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/scopeguard-1.2.0/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/scopeguard-1.2.0/src/lib.rs:
