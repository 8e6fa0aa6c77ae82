//! Model checking of vmem-core with `loom`; the models are in
//! `tests/loom.rs`, which says what each one checks. They exist only under
//! `--cfg loom`, which swaps vmem-core's locks and atomics for loom's:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p vmem-loom --release -- --nocapture
//! ```
//!
//! The library itself is empty: cargo wants a target beside the tests.
