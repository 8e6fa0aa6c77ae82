//! Object caches against other allocators: 64-byte objects, align 8.
//!
//! Every allocator under test gets its own leaked, page-aligned 64 MiB host
//! buffer (except the system allocator, which has its own memory), made
//! outside the timed loops. The vmem variants use a memory-mode arena of
//! quantum 4096 whose one span is the buffer, with metadata from
//! [`HeapMeta`].
//!
//! Throughput is one element per **pair** (one allocation and one free), so
//! criterion's `time` is the time per pair.
//!
//! ## `hot_pair`: one thread, allocate and free the same object again
//!
//! - `vmem/magazine`: an [`ObjectCache`] in memory mode with the default
//!   magazines, warmed first so every pair is served by CPU 0's magazine
//!   under CPU 0's lock (`alloc`/`free`: the locked path);
//! - `vmem/held`: the same cache on the fast path (`alloc_local` /
//!   `free_local` on the process's `ThreadCpus`): the bench thread holds a
//!   CPU slot, and a pair takes no lock and no atomic read-modify-write;
//! - `vmem/slab`: the same cache with `.magazine(0)`, so every pair goes to
//!   the slab layer;
//! - `vmem/kmalloc`: [`SizeClasses::alloc`]`(64, 8)` / `free`;
//! - peers, through their direct (non-global, unlocked) APIs: `talc`
//!   (`talc::base::Talc` with the `Manual` source, which is talc 5's name
//!   for talc 4's `ErrOnOom`: the buffer is `claim`ed and nothing more is
//!   ever acquired), `linked_list_allocator` (`Heap`, first fit),
//!   `buddy_system_allocator` (`Heap<32>`), `rlsf` (`Tlsf<u32, u32, 24,
//!   16>`), and `system` (`std::alloc::System` through `GlobalAlloc`).
//!
//! ## `two_threads`: objects freed by another thread
//!
//! Id `ALLOCATOR/2_threads`: two threads share one allocator. In each round
//! both threads allocate a batch of [`BATCH`] objects, publish it, meet at a
//! spinning barrier, and each frees the batch the *other* thread allocated,
//! so every object is freed by a thread other than the one that allocated
//! it. The time is wall-clock time from the first round's start to the last
//! round's end, divided by the pairs done by both threads together.
//!
//! Id `ALLOCATOR/1_thread`: the same workload on one thread (allocate a batch
//! of [`BATCH`], free it in the same order), so
//! `time(1_thread) / time(2_threads)` is the two-thread throughput over the
//! one-thread throughput (2.0 would be perfect scaling on two cores).
//!
//! Id `ALLOCATOR/2_threads_apart`: two threads on the one allocator, each
//! freeing only its own batches. `time(1_thread) / time(2_threads_apart)`
//! is what two CPUs give on this machine when they share nothing but the
//! allocator: the ceiling `2_threads` is read against (below 2.0 where the
//! host's two vCPUs share a core or its caches).
//!
//! The vmem caches here name the CPU with a bench-local `CpuId` that reads a
//! thread-local index set at thread start (0 and 1), since a `FixedCpu` is
//! one index for everyone; `vmem/held` gives each thread the CPU slot it
//! claims from the process's `ThreadCpus` (the two-thread runs' worker
//! threads are new each run: each claims a slot and lets it go at exit,
//! leaving its magazines to the next thread that claims that slot). The peers whose direct API takes `&mut self`
//! (talc, linked_list_allocator, buddy_system_allocator, rlsf) are each
//! wrapped in a `std::sync::Mutex` for this group; that lock is part of
//! what is measured, as a global-allocator wrapper's would be. After each
//! vmem allocator's two points the bench prints its cache's counters to
//! stderr (depot lock contention, the magazine size it grew to).
//!
//! The two-thread points need both cores to themselves: every lock and the
//! barrier spin, so any other busy process on a two-core host (a build, a
//! test run) can multiply their times. Compare them only across one quiet
//! run.
//!
//! Settings: 20 samples, 1 s warm-up, 3 s measurement per point; the whole
//! run takes about two minutes plus build time. Run it with:
//!
//! ```text
//! cargo bench -p vmem-core --bench cache
//! ```
//!
//! (append e.g. `-- hot_pair` or `-- two_threads` to run one group only).

use std::sync::Mutex;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use vmem_core::{CPU0, ObjectCache};
use vmem_testkit::cross::*;
use vmem_testkit::heaps::*;

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
}

/// Warms `alloc` (a few pairs), then times hot pairs.
fn hot_shared<S: Shared>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, alloc: &S) {
    (0..64).for_each(|_| alloc.pair());
    group.bench_function(name, |b| b.iter(|| alloc.pair()));
}

/// As [`hot_shared`], for a `&mut self` allocator (no lock).
fn hot_local<L: Local>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut alloc: L) {
    (0..64).for_each(|_| alloc.pair());
    group.bench_function(name, |b| b.iter(|| alloc.pair()));
}

fn hot_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_pair");
    configure(&mut group);

    let magazine = vmem_cache("hot_magazine", None, &CPU0);
    hot_shared(&mut group, "vmem/magazine", &magazine);
    let s = magazine.stats();
    assert!(
        s.magazine_misses <= 1 && s.free_magazine_misses == 0,
        "vmem/magazine pairs were not magazine hits: {s:?}"
    );
    magazine.check().expect("vmem/magazine check");

    let held = vmem_held_cache("hot_held");
    hot_shared(&mut group, "vmem/held", &held);
    let s = held.cache().stats();
    assert!(
        s.magazine_misses <= 1 && s.free_magazine_misses == 0,
        "vmem/held pairs were not magazine hits: {s:?}"
    );
    held.cache().check().expect("vmem/held check");

    let slab = vmem_cache("hot_slab", Some(0), &CPU0);
    hot_shared(&mut group, "vmem/slab", &slab);
    let s = slab.stats();
    assert_eq!(
        (s.magazine_hits, s.slabs_created),
        (0, 1),
        "vmem/slab: {s:?}"
    );
    slab.check().expect("vmem/slab check");

    let kmalloc = vmem_kmalloc(&CPU0);
    hot_shared(&mut group, "vmem/kmalloc", &kmalloc);
    kmalloc.0.check().expect("vmem/kmalloc check");

    hot_local(&mut group, "talc", TalcHeap::default());
    hot_local(
        &mut group,
        "linked_list_allocator",
        LinkedListHeap::default(),
    );
    hot_local(&mut group, "buddy_system_allocator", BuddyHeap::default());
    hot_local(&mut group, "rlsf", TlsfHeap::default());
    hot_shared(&mut group, "system", &SystemAlloc);
    group.finish();
}

/// Prints the magazine layer's counters after a `two_threads` run: how
/// often the depot was used and contended, and the magazine size reached.
fn report(name: &str, cache: &ObjectCache<'_>) {
    let s = cache.stats();
    let misses = s.magazine_misses + s.free_magazine_misses;
    let ops = s.allocs + s.frees;
    eprintln!(
        "two_threads/{name}: {} ops, {:.2}% went to the slab layer, depot lock contended \
         {} times, magazine size {} after {} resizes, {} magazines",
        ops,
        100.0 * misses as f64 / ops.max(1) as f64,
        s.depot_contention,
        s.magazine_size,
        s.magazine_resizes,
        s.magazines,
    );
}

/// Both `two_threads` points for one allocator.
fn cross<S: Shared>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, alloc: &S) {
    group.bench_function(BenchmarkId::new(name, "1_thread"), |b| {
        b.iter_custom(|iters| run_one_thread(alloc, iters));
    });
    group.bench_function(BenchmarkId::new(name, "2_threads"), |b| {
        b.iter_custom(|iters| run_two_threads(alloc, iters));
    });
    group.bench_function(BenchmarkId::new(name, "2_threads_apart"), |b| {
        b.iter_custom(|iters| run_two_threads_apart(alloc, iters));
    });
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("two_threads");
    configure(&mut group);

    let magazine = vmem_cache("mt_magazine", None, &THREAD_CPU);
    cross(&mut group, "vmem/magazine", &magazine);
    magazine.check().expect("vmem/magazine check");
    report("vmem/magazine", &magazine);

    let held = vmem_held_cache("mt_held");
    cross(&mut group, "vmem/held", &held);
    held.cache().check().expect("vmem/held check");
    report("vmem/held", held.cache());

    let slab = vmem_cache("mt_slab", Some(0), &THREAD_CPU);
    cross(&mut group, "vmem/slab", &slab);
    slab.check().expect("vmem/slab check");
    report("vmem/slab", &slab);

    let kmalloc = vmem_kmalloc(&THREAD_CPU);
    cross(&mut group, "vmem/kmalloc", &kmalloc);
    kmalloc.0.check().expect("vmem/kmalloc check");
    report("vmem/kmalloc (64-byte class)", &kmalloc.0.caches()[5]);

    cross(&mut group, "talc", &Locked(Mutex::new(TalcHeap::default())));
    cross(
        &mut group,
        "linked_list_allocator",
        &Locked(Mutex::new(LinkedListHeap::default())),
    );
    cross(
        &mut group,
        "buddy_system_allocator",
        &Locked(Mutex::new(BuddyHeap::default())),
    );
    cross(&mut group, "rlsf", &Locked(Mutex::new(TlsfHeap::default())));
    cross(&mut group, "system", &SystemAlloc);
    group.finish();
}

criterion_group!(benches, hot_pair, two_threads);
criterion_main!(benches);
