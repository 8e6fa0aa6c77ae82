//! Instruction counts of the magazine layer's hot pair, for callgrind.
//!
//! Builds the cache of `benches/cache.rs`'s `hot_pair/vmem/magazine` point
//! (64-byte objects, default magazines, CPU 0 through a `FixedCpu`, made by
//! the same `vmem_testkit::heaps::vmem_cache`), warms it with 64 pairs,
//! then does `N` pairs of `ObjectCache::alloc` / `ObjectCache::free`: the
//! locked path. `N` is the first argument (1,000,000 by default); `held` as
//! the second argument runs the `vmem/held` point's cache instead, through
//! `alloc_local` / `free_local` (the fast path). It panics if a timed pair
//! was not a magazine hit.
//!
//! Timings on a shared machine are noisy; instruction counts are not. The
//! difference of two runs with different `N` is the cost of the extra
//! pairs alone, free of the setup (the 64 MiB buffer's page faults and
//! memset):
//!
//! ```text
//! cargo build --profile bench -p vmem-core --example locked_pairs
//! for n in 1000000 2000000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n \
//!     target/release/examples/locked_pairs $n    # append `held` for the fast path
//! done
//! callgrind_annotate cg.2000000 | head -30
//! ```
//!
//! Instructions per pair = (Ir(2000000) - Ir(1000000)) / 1000000; the
//! same difference per function in `callgrind_annotate`'s listings shows
//! where they go.

use std::hint::black_box;

use vmem_core::CPU0;
use vmem_testkit::heaps::{Shared, vmem_cache, vmem_held_cache};

fn run<S: Shared>(alloc: &S, n: u64) {
    (0..64).for_each(|_| alloc.pair());
    for _ in 0..n {
        alloc.pair();
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("N: a number of pairs"));
    if args.next().as_deref() == Some("held") {
        let held = vmem_held_cache("held_pairs");
        run(&held, black_box(n));
        let s = held.cache().stats();
        assert!(
            s.magazine_misses <= 1 && s.free_magazine_misses == 0,
            "{s:?}"
        );
    } else {
        let cache = vmem_cache("locked_pairs", None, &CPU0);
        run(&cache, black_box(n));
        let s = cache.stats();
        assert!(
            s.magazine_misses <= 1 && s.free_magazine_misses == 0,
            "{s:?}"
        );
    }
}
