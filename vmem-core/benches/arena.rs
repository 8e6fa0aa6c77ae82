//! Steady-state churn through one arena, per allocation policy, and the
//! cost of one import as the spans pile up.
//!
//! For each policy and each count of live segments, an arena with quantum
//! 4096 and one span (room for twice the largest possible live set, so it is
//! about a quarter full on average) is filled, outside the timed
//! loop, with that many allocations of pseudo-random sizes of 1 to 64
//! quanta, made with the policy under test. Tags and the allocation hash
//! grow from the heap ([`HeapMeta`]).
//!
//! The timed operation is one **pair**: free a randomly chosen live segment,
//! then allocate a new random size (1 to 64 quanta) with the same policy and
//! keep it in that slot, so the live count stays fixed while the free space
//! fragments. Throughput is one element per pair, so criterion's `time` is
//! the time per free + alloc pair.
//!
//! Groups: `churn/instant`, `churn/best` and `churn/next`, each at 1k, 10k,
//! 100k and 1M live segments. Best fit and next fit may search O(n) segments
//! per allocation, but even best fit at 1M stays around tens of microseconds
//! per pair, so every point uses the same settings (20 samples, 1 s warm-up,
//! 3 s measurement); the whole run takes about a minute plus build time.
//!
//! Group `span/import`: a child arena (quantum 4096, importing 64 KiB at a
//! time, as the unikernel's `kmem_default` does) already holds 10 or 10,000
//! imported spans, one per live 64 KiB allocation. The timed operation is
//! one 64 KiB `alloc`, which imports a span above all the others (the
//! parent hands out addresses in order), and its `free`, which releases that
//! span again: the cost of adding and removing one span among n.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p vmem-core --bench arena
//! ```
//!
//! (append e.g. `-- churn/instant` to run one group only).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmem_core::{Arena, ArenaConfig, HeapMeta, Policy};
use vmem_testkit::SplitMix64;

/// The arena's quantum.
const QUANTUM: u64 = 4096;
/// The largest allocation, in quanta.
const MAX_QUANTA: u64 = 64;
/// Where the span starts.
const BASE: u64 = 0x1000_0000_0000;
/// Extra room in the span beyond twice the largest possible live set.
const SLACK_QUANTA: u64 = 1024;

/// A size of 1 to `MAX_QUANTA` quanta, in integers.
fn random_size(rng: &mut SplitMix64) -> u64 {
    (1 + rng.below(MAX_QUANTA)) * QUANTUM
}

/// An arena filled with `live` allocations made by `policy`, their
/// `(addr, size)`, and the generator to continue with.
fn setup(live: usize, policy: Policy) -> (Arena<'static>, Vec<(u64, u64)>, SplitMix64) {
    let span = (live as u64 * MAX_QUANTA * 2 + SLACK_QUANTA) * QUANTUM;
    let arena: Arena<'static> = Arena::create(
        ArenaConfig::new("bench", QUANTUM)
            .span(BASE, span)
            .meta(&HeapMeta),
    )
    .unwrap_or_else(|e| panic!("Arena::create(span {BASE:#x}+{span:#x}) failed: {e:?}"));
    let mut rng = SplitMix64::new(0x5EED_0000 ^ live as u64);
    let mut segs = Vec::with_capacity(live);
    for i in 0..live {
        let size = random_size(&mut rng);
        let addr = arena.alloc(size, policy).unwrap_or_else(|e| {
            panic!("setup alloc #{i} of {size:#x} ({policy:?}, live {live}) failed: {e:?}")
        });
        segs.push((addr, size));
    }
    arena
        .check()
        .unwrap_or_else(|e| panic!("check after setup ({policy:?}, live {live}) failed: {e:?}"));
    (arena, segs, rng)
}

fn churn(c: &mut Criterion, name: &str, policy: Policy, sizes: &[usize]) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for &live in sizes {
        let (arena, mut segs, mut rng) = setup(live, policy);
        group.bench_with_input(BenchmarkId::from_parameter(live), &live, |b, &live| {
            b.iter(|| {
                let slot = rng.below(live as u64) as usize;
                let (addr, size) = segs[slot];
                arena
                    .free(black_box(addr), black_box(size))
                    .unwrap_or_else(|e| panic!("free({addr:#x}, {size:#x}) failed: {e:?}"));
                let size = random_size(&mut rng);
                let addr = arena
                    .alloc(black_box(size), policy)
                    .unwrap_or_else(|e| panic!("alloc({size:#x}, {policy:?}) failed: {e:?}"));
                segs[slot] = (black_box(addr), size);
            });
        });
        arena.check().unwrap_or_else(|e| {
            panic!("check after churn ({policy:?}, live {live}) failed: {e:?}")
        });
    }
    group.finish();
}

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

fn churn_instant(c: &mut Criterion) {
    churn(c, "churn/instant", Policy::InstantFit, &SIZES);
}

fn churn_best(c: &mut Criterion) {
    churn(c, "churn/best", Policy::BestFit, &SIZES);
}

fn churn_next(c: &mut Criterion) {
    churn(c, "churn/next", Policy::NextFit, &SIZES);
}

/// Size of one import, as `kmem_default` imports.
const IMPORT: u64 = 0x10000;

fn span_import(c: &mut Criterion) {
    let mut group = c.benchmark_group("span/import");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for spans in [10u64, 10_000] {
        let parent: Arena<'static> = Arena::create(
            ArenaConfig::new("parent", QUANTUM)
                .span(BASE, (spans + 1) * IMPORT)
                .meta(&HeapMeta),
        )
        .unwrap_or_else(|e| panic!("Arena::create(parent) failed: {e:?}"));
        let child: Arena<'_> = Arena::create(
            ArenaConfig::new("child", QUANTUM)
                .source(&parent, IMPORT)
                .meta(&HeapMeta),
        )
        .unwrap_or_else(|e| panic!("Arena::create(child) failed: {e:?}"));
        for i in 0..spans {
            child
                .alloc(IMPORT, Policy::InstantFit)
                .unwrap_or_else(|e| panic!("setup import #{i} failed: {e:?}"));
        }
        assert_eq!(child.stats().spans, spans, "one span per allocation");
        group.bench_with_input(BenchmarkId::from_parameter(spans), &spans, |b, _| {
            b.iter(|| {
                let addr = child
                    .alloc(black_box(IMPORT), Policy::InstantFit)
                    .unwrap_or_else(|e| panic!("import of {IMPORT:#x} failed: {e:?}"));
                child
                    .free(black_box(addr), IMPORT)
                    .unwrap_or_else(|e| panic!("free({addr:#x}) failed: {e:?}"));
            });
        });
        assert_eq!(child.stats().spans, spans, "each timed import was released");
        child
            .check()
            .unwrap_or_else(|e| panic!("check after span/import ({spans}) failed: {e:?}"));
    }
    group.finish();
}

criterion_group!(benches, churn_instant, churn_best, churn_next, span_import);
criterion_main!(benches);
