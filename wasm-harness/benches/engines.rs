//! One 100,000-operation scenario (allocs, xallocs and their frees over
//! three arenas, `wasm_harness::workload::churn`) run natively and in the
//! Wasm module. The module is compiled once before timing; every Wasm run
//! gets a fresh store, as `run_wasm` always does, so instantiation is part
//! of the time.
//!
//! ```sh
//! cargo bench -p wasm-harness --bench engines
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use wasm_harness::workload::churn;
use wasm_harness::{run_native, run_wasm};

const OPERATIONS: usize = 100_000;

fn engines(c: &mut Criterion) {
    let script = churn(OPERATIONS);
    // Compile the module, and check the engines agree before timing them.
    let wasm = run_wasm(&script).expect("the scenario runs in Wasm");
    assert_eq!(wasm, run_native(&script), "the engines disagree");

    let mut group = c.benchmark_group(format!("churn_{OPERATIONS}_ops"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("native", |b| b.iter(|| run_native(black_box(&script))));
    group.bench_function("wasm", |b| {
        b.iter(|| run_wasm(black_box(&script)).expect("the scenario runs in Wasm"))
    });
    group.finish();
}

criterion_group!(benches, engines);
criterion_main!(benches);
