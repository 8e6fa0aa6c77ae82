//! Workload 5 on heaps: hot small-object pairs, and two threads freeing
//! each other's objects, over the allocators `vmem-core/benches/cache.rs`
//! measures too (both take them from `vmem_testkit::heaps`).

use std::sync::Mutex;
use std::time::Duration;

use vmem_core::CPU0;

pub use vmem_testkit::cross::BATCH;
use vmem_testkit::cross::*;
use vmem_testkit::heaps::*;

use crate::workloads::{Budget, progress, timed_batches};

/// Times `batch` (which runs the pairs it is asked for) after a warm-up:
/// (ns per pair, pairs).
fn pairs_of(mut batch: impl FnMut(u64), b: Budget) -> (f64, u64) {
    timed_batches(&mut batch, b.warm, b.time);
    let (n, el) = timed_batches(&mut batch, b.ops, b.time);
    (el.as_nanos() as f64 / n as f64, n)
}

// The pair loops are functions of their own, never inlined into their
// callers, so each is a small function whose one call of `pair` the
// compiler inlines: the loop `vmem-core/benches/cache.rs` times (criterion
// inlines the pair into its `iter` loop). Timed through a closure that
// `pairs_of` and `timed` inlined into `hot_pairs` (two call sites, warm-up
// and timed), the held pair was left a call of its own: 117 instructions a
// pair against criterion's 104 (callgrind), and 15 to 20% more time.

/// `n` hot pairs of a shared allocator.
#[inline(never)]
fn shared_pairs<S: Shared>(s: &S, n: u64) {
    for _ in 0..n {
        s.pair();
    }
}

/// `n` hot pairs of a `&mut self` allocator.
#[inline(never)]
fn local_pairs<L: Local>(l: &mut L, n: u64) {
    for _ in 0..n {
        l.pair();
    }
}

fn shared<S: Shared>(name: &'static str, s: &S, b: Budget) -> (&'static str, f64, u64) {
    let (ns, n) = pairs_of(|n| shared_pairs(s, n), b);
    (name, ns, n)
}

fn local<L: Local>(name: &'static str, mut l: L, b: Budget) -> (&'static str, f64, u64) {
    let (ns, n) = pairs_of(|n| local_pairs(&mut l, n), b);
    (name, ns, n)
}

/// (allocator, ns per pair, pairs) for each heap.
pub fn hot_pairs(b: Budget) -> Vec<(&'static str, f64, u64)> {
    vec![
        shared(
            "vmem-core ObjectCache (held CPU, alloc_local)",
            &vmem_held_cache("hot_held"),
            b,
        ),
        shared(
            "vmem-core ObjectCache (magazine)",
            &vmem_cache("hot_magazine", None, &CPU0),
            b,
        ),
        shared(
            "vmem-core ObjectCache (slab only)",
            &vmem_cache("hot_slab", Some(0), &CPU0),
            b,
        ),
        shared("vmem-core SizeClasses", &vmem_kmalloc(&CPU0), b),
        local("talc 5", TalcHeap::default(), b),
        local("linked_list_allocator 0.10", LinkedListHeap::default(), b),
        local("buddy_system_allocator 0.13", BuddyHeap::default(), b),
        local("rlsf 0.2", TlsfHeap::default(), b),
        shared("system (glibc malloc)", &SystemAlloc, b),
    ]
}

/// One allocator's two-thread result: ns per pair on one thread and on two
/// (both threads' pairs together), in the same batches.
pub struct Cross {
    /// The allocator's name in the table.
    pub name: &'static str,
    /// Time per pair, all pairs on one thread.
    pub one: f64,
    /// Time per pair, the pairs split over two threads that free each
    /// other's objects.
    pub two: f64,
    /// Pairs timed in each of the two runs.
    pub pairs: u64,
}

/// Times `pairs` pairs on one thread and on two, three times each, keeping
/// the fastest of each (a two-core host is easily disturbed).
fn cross<S: Shared>(name: &'static str, alloc: &S, pairs: u64) -> Cross {
    let best = |f: &dyn Fn() -> Duration| (0..3).map(|_| f()).min().unwrap_or_default();
    run_one_thread(alloc, pairs.min(1 << 16));
    let one = best(&|| run_one_thread(alloc, pairs));
    let two = best(&|| run_two_threads(alloc, pairs));
    let per = |d: Duration| d.as_nanos() as f64 / pairs as f64;
    let c = Cross {
        name,
        one: per(one),
        two: per(two),
        pairs,
    };
    progress(&format!(
        "two threads {name}: {:.1} ns/pair on one thread, {:.1} ns/pair on two ({:.2}x)",
        c.one,
        c.two,
        c.one / c.two
    ));
    c
}

/// Workload 5's second half for every heap: vmem-core's caches see each
/// thread as its own CPU; the `&mut self` peers sit behind a `Mutex`.
pub fn two_threads(pairs: u64) -> Vec<Cross> {
    let held = vmem_held_cache("mt_held");
    let magazine = vmem_cache("mt_magazine", None, &THREAD_CPU);
    let kmalloc = vmem_kmalloc(&THREAD_CPU);
    let rows = vec![
        cross(
            "vmem-core ObjectCache (held CPU, alloc_local)",
            &held,
            pairs,
        ),
        cross("vmem-core ObjectCache (magazine)", &magazine, pairs),
        cross("vmem-core SizeClasses", &kmalloc, pairs),
        cross(
            "talc 5 (Mutex)",
            &Locked(Mutex::new(TalcHeap::default())),
            pairs,
        ),
        cross(
            "linked_list_allocator 0.10 (Mutex)",
            &Locked(Mutex::new(LinkedListHeap::default())),
            pairs,
        ),
        cross(
            "buddy_system_allocator 0.13 (Mutex)",
            &Locked(Mutex::new(BuddyHeap::default())),
            pairs,
        ),
        cross(
            "rlsf 0.2 (Mutex)",
            &Locked(Mutex::new(TlsfHeap::default())),
            pairs,
        ),
        cross("system (glibc malloc)", &SystemAlloc, pairs),
    ];
    held.cache()
        .check()
        .expect("held cache consistent after the run");
    magazine
        .check()
        .expect("magazine cache consistent after the run");
    kmalloc
        .0
        .check()
        .expect("size classes consistent after the run");
    rows
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Counts allocations and frees, and checks each free is of the
    /// object allocated last.
    #[derive(Default)]
    struct Counted {
        allocs: AtomicU64,
        frees: AtomicU64,
    }

    impl Shared for Counted {
        fn alloc(&self) -> usize {
            (self.allocs.fetch_add(1, Ordering::Relaxed) + 1) as usize * 64
        }
        unsafe fn free(&self, p: usize) {
            assert_eq!(p as u64, self.allocs.load(Ordering::Relaxed) * 64);
            self.frees.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Local for Counted {
        fn alloc(&mut self) -> usize {
            Shared::alloc(self)
        }
        unsafe fn free(&mut self, p: usize) {
            // SAFETY: passed on from the caller.
            unsafe { Shared::free(self, p) }
        }
    }

    #[test]
    fn pair_loops_run_the_pairs_asked_for() {
        let s = Counted::default();
        shared_pairs(&s, 300);
        assert_eq!(s.allocs.load(Ordering::Relaxed), 300);
        assert_eq!(s.frees.load(Ordering::Relaxed), 300);
        let mut l = Counted::default();
        local_pairs(&mut l, 7);
        local_pairs(&mut l, 0);
        assert_eq!(l.allocs.load(Ordering::Relaxed), 7);
        assert_eq!(l.frees.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn a_row_times_the_budget_after_its_warm_up() {
        let b = Budget {
            ops: 1000,
            time: Duration::from_secs(60),
            warm: 300,
        };
        let s = Counted::default();
        let (name, ns, pairs) = shared("counted", &s, b);
        assert_eq!((name, pairs), ("counted", 1000));
        assert!(ns.is_finite() && ns >= 0.0);
        assert_eq!(s.allocs.load(Ordering::Relaxed), 1300);
        assert_eq!(s.frees.load(Ordering::Relaxed), 1300);
        let (_, _, pairs) = local("counted", Counted::default(), b);
        assert_eq!(pairs, 1000);
    }
}
