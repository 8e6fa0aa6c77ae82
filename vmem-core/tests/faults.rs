//! Fault injection under random operation sequences.
//!
//! A parent arena with one span, a child importing from it (each with or
//! without quantum caches), and object caches over the child run random
//! allocations, frees, reaps and CPU switches while faults are injected by
//! random plans: into the child's imports, into both arenas' tag refills,
//! and into the meta sources of the parent, the child and the caches
//! ([`FaultyMeta`]). Resources are ample, so every failure must come from
//! an injected fault (a child's aligned `xalloc` imports an aligned span
//! as a plain `alloc` imports). After every step:
//! - a failure has the kind its fault stands for (`ImportFailed` for an
//!   import, `NoSpace` for tags and slab records), and left every arena
//!   and cache as it was (walks, sizes and counters other than failure
//!   counts and spare tags);
//! - a success meets its request and overlaps nothing live;
//! - `check` passes everywhere.
//!
//! At the end everything is freed, the plans set to `Never` and the caches
//! reaped: each arena walks exactly as at the start, each meta source's
//! pages are the arena's tag pages and hash table, and once everything is
//! dropped every meta page has gone back.
//!
//! A second property runs random scenario scripts full of `fail` lines
//! through the interpreter: no panic, one JSON object per line, kinds from
//! the spec's closed set, failed lines change no arena, `check` passes after
//! every line, and a second run gives the same bytes.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vmem_core::scenario::Interpreter;
use vmem_core::{
    Arena, ArenaConfig, ArenaSize, CacheConfig, CacheStats, Constraints, ErrorKind, FaultPlan,
    FaultSite, FaultyMeta, FixedCpu, HeapMeta, META_PAGE, MetaSource, ObjectCache, Policy,
    QuantumCaches, Segment, SegmentKind, Stats,
};
use vmem_testkit::walk;

const Q: u64 = 0x1000;
const BASE: u64 = 0x1_0000_0000;
const PARENT_SIZE: u64 = 1 << 30;
/// Object sizes of the caches over the child.
const OBJECT_SIZES: [u64; 4] = [64, 200, 4096, 12288];

/// Meta pages from the heap, counting those handed out and not given back.
#[derive(Default)]
struct CountedMeta {
    out: AtomicUsize,
}

impl MetaSource for CountedMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let page = HeapMeta.alloc_pages(pages)?;
        self.out.fetch_add(pages, Ordering::AcqRel);
        Some(page)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        self.out.fetch_sub(pages, Ordering::AcqRel);
        // SAFETY: the caller's promise: these pages came from `alloc_pages`.
        unsafe { HeapMeta.free_pages(base, pages) }
    }
}

impl CountedMeta {
    fn out(&self) -> usize {
        self.out.load(Ordering::Acquire)
    }
}

/// Where a plan applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    ChildImport,
    ChildTags,
    ParentTags,
    ChildMeta,
    ParentMeta,
    CacheMeta,
}

const TARGETS: [Target; 6] = [
    Target::ChildImport,
    Target::ChildTags,
    Target::ParentTags,
    Target::ChildMeta,
    Target::ParentMeta,
    Target::CacheMeta,
];

#[derive(Clone, Debug)]
enum Op {
    ParentAlloc { quanta: u64, policy: Policy },
    ParentXalloc { quanta: u64, align_log: u32 },
    ChildAlloc { quanta: u64, policy: Policy },
    ChildXalloc { quanta: u64, align_log: u32 },
    CacheAlloc { cache: usize },
    Free { pick: usize },
    Reap,
    Cpu { index: usize },
    Plan { target: Target, plan: FaultPlan },
}

#[derive(Clone, Debug)]
struct Case {
    parent_qcache: Option<u64>,
    child_qcache: Option<u64>,
    import_min: u64,
    magazines: [u32; OBJECT_SIZES.len()],
    plans: Vec<FaultPlan>,
    ops: Vec<Op>,
}

fn plan() -> impl Strategy<Value = FaultPlan> {
    prop_oneof![
        Just(FaultPlan::Never),
        (0u64..4).prop_map(FaultPlan::Next),
        (1u64..6).prop_map(FaultPlan::EveryNth),
        (any::<u64>(), 1u64..8).prop_map(|(seed, one_in)| FaultPlan::Random { seed, one_in }),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::InstantFit),
        Just(Policy::BestFit),
        Just(Policy::NextFit)
    ]
}

/// Mostly sizes the quantum caches serve, some above, a few large.
fn quanta() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 1u64..=16, 3 => 17u64..=40, 1 => 64u64..=256]
}

fn op() -> impl Strategy<Value = Op> {
    let target = prop::sample::select(TARGETS.to_vec());
    prop_oneof![
        6 => (quanta(), policy()).prop_map(|(quanta, policy)| Op::ParentAlloc { quanta, policy }),
        1 => (quanta(), 12u32..=20).prop_map(|(quanta, align_log)| Op::ParentXalloc { quanta, align_log }),
        6 => (quanta(), policy()).prop_map(|(quanta, policy)| Op::ChildAlloc { quanta, policy }),
        1 => (quanta(), 12u32..=16).prop_map(|(quanta, align_log)| Op::ChildXalloc { quanta, align_log }),
        6 => (0..OBJECT_SIZES.len()).prop_map(|cache| Op::CacheAlloc { cache }),
        9 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => Just(Op::Reap),
        1 => (0usize..4).prop_map(|index| Op::Cpu { index }),
        2 => (target, plan()).prop_map(|(target, plan)| Op::Plan { target, plan }),
    ]
}

/// Operations, with bursts of small parent allocations among them so the
/// parent needs more tags than its first page holds and refills.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let burst = (8usize..40).prop_map(|n| {
        vec![
            Op::ParentXalloc {
                quanta: 1,
                align_log: 12
            };
            n
        ]
    });
    prop::collection::vec(
        prop_oneof![20 => op().prop_map(|o| vec![o]), 1 => burst],
        1..200,
    )
    .prop_map(|runs| runs.into_iter().flatten().collect())
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::option::of(1u64..=16),
        prop::option::of(1u64..=16),
        prop_oneof![Just(0u64), Just(16 * Q), Just(64 * Q)],
        prop::array::uniform4(0u32..=15),
        prop::collection::vec(plan(), TARGETS.len()),
        ops(),
    )
        .prop_map(
            |(parent_qcache, child_qcache, import_min, magazines, plans, ops)| Case {
                parent_qcache,
                child_qcache,
                import_min,
                magazines,
                plans,
                ops,
            },
        )
}

/// A live allocation and how to free it.
#[derive(Clone, Copy, Debug)]
enum Live {
    Parent { addr: u64, size: u64, x: bool },
    Child { addr: u64, size: u64, x: bool },
    Object { cache: usize, addr: u64 },
}

/// Frees a live allocation the way it was made.
fn release(
    l: Live,
    parent: &Arena,
    child: &Arena,
    caches: &[ObjectCache],
) -> vmem_core::Result<()> {
    match l {
        Live::Parent { addr, size, x } => {
            if x {
                parent.xfree(addr, size)
            } else {
                parent.free(addr, size)
            }
        }
        Live::Child { addr, size, x } => {
            if x {
                child.xfree(addr, size)
            } else {
                child.free(addr, size)
            }
        }
        Live::Object { cache, addr } => caches[cache].free(addr),
    }
}

fn spans(a: &Arena) -> Vec<(u64, u64)> {
    walk(a)
        .into_iter()
        .filter(|s| matches!(s.kind, SegmentKind::Span { .. }))
        .map(|s| (s.start, s.start + s.size))
        .collect()
}

/// Counters a failed call may change: failure counts, and the stock of
/// spare tags (refilled before the call found it could not go on).
fn arena_stats(a: &Arena) -> Stats {
    Stats {
        alloc_fails: 0,
        import_fails: 0,
        tags: 0,
        tags_spare: 0,
        tag_pages: 0,
        ..a.stats()
    }
}

fn cache_stats(s: CacheStats) -> CacheStats {
    CacheStats {
        alloc_fails: 0,
        magazine_misses: 0,
        // Metadata kept for reuse, as the arena's tag figures above.
        meta_pages: 0,
        ..s
    }
}

/// Everything a failed call must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    walks: [Vec<Segment>; 2],
    sizes: [ArenaSize; 2],
    stats: [Stats; 2],
    caches: Vec<CacheStats>,
}

/// Injected faults so far, by where they strike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Injected {
    child_import: u64,
    child_tags: u64,
    parent_tags: u64,
    cache_meta: u64,
}

impl Injected {
    fn total(&self) -> u64 {
        self.child_import + self.child_tags + self.parent_tags + self.cache_meta
    }

    fn since(&self, before: &Injected) -> Injected {
        Injected {
            child_import: self.child_import - before.child_import,
            child_tags: self.child_tags - before.child_tags,
            parent_tags: self.parent_tags - before.parent_tags,
            cache_meta: self.cache_meta - before.cache_meta,
        }
    }
}

/// Faults injected across every case of the run, by where they struck.
static INJECTED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Faults that the call they struck still got through (the layer above
/// fell back, or the fault only cost a hash table or a magazine).
static ABSORBED: AtomicU64 = AtomicU64::new(0);
/// Calls that failed cleanly.
static FAILED_CALLS: AtomicU64 = AtomicU64::new(0);

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let parent_pages = CountedMeta::default();
    let child_pages = CountedMeta::default();
    let cache_pages = CountedMeta::default();
    {
        let parent_meta = FaultyMeta::new(&parent_pages, FaultPlan::Never);
        let child_meta = FaultyMeta::new(&child_pages, FaultPlan::Never);
        let cache_meta = FaultyMeta::new(&cache_pages, FaultPlan::Never);
        let cpu = FixedCpu::new(0);
        let parent_qc = case
            .parent_qcache
            .map(|n| QuantumCaches::new(Q, n * Q, &cache_meta, &cpu).unwrap());
        let child_qc = case
            .child_qcache
            .map(|n| QuantumCaches::new(Q, n * Q, &cache_meta, &cpu).unwrap());
        let mut config = ArenaConfig::new("parent", Q)
            .span(BASE, PARENT_SIZE)
            .meta(&parent_meta)
            .static_tags(false);
        if let Some(qc) = &parent_qc {
            config = config.qcache(qc);
        }
        let parent: Arena = Arena::create(config).unwrap();
        let mut config = ArenaConfig::new("child", Q)
            .source(&parent, case.import_min)
            .meta(&child_meta)
            .static_tags(false);
        if let Some(qc) = &child_qc {
            config = config.qcache(qc);
        }
        let child: Arena = Arena::create(config).unwrap();
        let caches: Vec<ObjectCache> = OBJECT_SIZES
            .iter()
            .zip(case.magazines)
            .map(|(&size, magazine)| {
                let config = CacheConfig::new("objects", size, &cache_meta, &cpu)
                    .magazine(magazine)
                    .debug(true);
                ObjectCache::new(config, &child).unwrap()
            })
            .collect();
        let start = (walk(&parent), walk(&child));
        prop_assert_eq!(&start.1, &vec![]);

        let set_plan = |target: Target, plan: FaultPlan| match target {
            Target::ChildImport => child.inject_faults(FaultSite::Import, plan),
            Target::ChildTags => child.inject_faults(FaultSite::TagRefill, plan),
            Target::ParentTags => parent.inject_faults(FaultSite::TagRefill, plan),
            Target::ChildMeta => child_meta.set_plan(plan),
            Target::ParentMeta => parent_meta.set_plan(plan),
            Target::CacheMeta => cache_meta.set_plan(plan),
        };
        // Faults the current plan of a target has injected.
        let injected_at = |target: Target| match target {
            Target::ChildImport => child.fault_schedule(FaultSite::Import).injected(),
            Target::ChildTags => child.fault_schedule(FaultSite::TagRefill).injected(),
            Target::ParentTags => parent.fault_schedule(FaultSite::TagRefill).injected(),
            Target::ChildMeta => child_meta.schedule().injected(),
            Target::ParentMeta => parent_meta.schedule().injected(),
            Target::CacheMeta => cache_meta.schedule().injected(),
        };
        // Faults injected by each target's earlier plans (a new plan counts
        // afresh), in the order of TARGETS.
        let mut carried = [0u64; TARGETS.len()];
        let injected_now = |carried: &[u64; TARGETS.len()]| {
            let at = |i: usize| carried[i] + injected_at(TARGETS[i]);
            Injected {
                child_import: at(0),
                child_tags: at(1) + at(3),
                parent_tags: at(2) + at(4),
                cache_meta: at(5),
            }
        };
        let snapshot = || Snapshot {
            walks: [walk(&parent), walk(&child)],
            sizes: [parent.size(), child.size()],
            stats: [arena_stats(&parent), arena_stats(&child)],
            caches: caches
                .iter()
                .map(|c| c.stats())
                .chain(parent_qc.iter().flat_map(|qc| qc.stats().map(|s| s.1)))
                .chain(child_qc.iter().flat_map(|qc| qc.stats().map(|s| s.1)))
                .map(cache_stats)
                .collect(),
        };
        for (&target, &plan) in TARGETS.iter().zip(&case.plans) {
            set_plan(target, plan);
        }

        let mut live: Vec<Live> = Vec::new();
        for op in &case.ops {
            let before = snapshot();
            let faults_before = injected_now(&carried);
            let result: Result<Option<Live>, vmem_core::Error> = match *op {
                Op::ParentAlloc { quanta, policy } => {
                    parent.alloc(quanta * Q, policy).map(|addr| {
                        Some(Live::Parent {
                            addr,
                            size: quanta * Q,
                            x: false,
                        })
                    })
                }
                Op::ParentXalloc { quanta, align_log } => parent
                    .xalloc(
                        quanta * Q,
                        &Constraints::aligned(1 << align_log),
                        Policy::InstantFit,
                    )
                    .map(|addr| {
                        Some(Live::Parent {
                            addr,
                            size: quanta * Q,
                            x: true,
                        })
                    }),
                Op::ChildAlloc { quanta, policy } => child.alloc(quanta * Q, policy).map(|addr| {
                    Some(Live::Child {
                        addr,
                        size: quanta * Q,
                        x: false,
                    })
                }),
                Op::ChildXalloc { quanta, align_log } => {
                    let (size, align) = (quanta * Q, 1u64 << align_log);
                    child
                        .xalloc(size, &Constraints::aligned(align), Policy::InstantFit)
                        .map(|addr| {
                            Some(Live::Child {
                                addr,
                                size,
                                x: true,
                            })
                        })
                }
                Op::CacheAlloc { cache } => caches[cache]
                    .alloc()
                    .map(|addr| Some(Live::Object { cache, addr })),
                Op::Free { pick } => {
                    if live.is_empty() {
                        Ok(None)
                    } else {
                        let freed = release(
                            live.swap_remove(pick % live.len()),
                            &parent,
                            &child,
                            &caches,
                        );
                        prop_assert!(freed.is_ok(), "a free failed: {:?}", freed);
                        Ok(None)
                    }
                }
                Op::Reap => {
                    for c in &caches {
                        prop_assert!(c.reap().is_ok());
                    }
                    prop_assert!(child.reap().is_ok());
                    prop_assert!(parent.reap().is_ok());
                    Ok(None)
                }
                Op::Cpu { index } => {
                    cpu.set(index);
                    Ok(None)
                }
                Op::Plan { target, plan } => {
                    if let Some(i) = TARGETS.iter().position(|&t| t == target) {
                        carried[i] += injected_at(target);
                    }
                    set_plan(target, plan);
                    Ok(None)
                }
            };
            let struck = injected_now(&carried).since(&faults_before);
            for (counter, n) in INJECTED.iter().zip([
                struck.child_import,
                struck.child_tags,
                struck.parent_tags,
                struck.cache_meta,
            ]) {
                counter.fetch_add(n, Ordering::Relaxed);
            }
            match result {
                Err(e) => {
                    FAILED_CALLS.fetch_add(1, Ordering::Relaxed);
                    let (no_space, import_failed) = match op {
                        Op::ParentAlloc { .. } | Op::ParentXalloc { .. } => {
                            (struck.parent_tags > 0, false)
                        }
                        // An aligned xalloc imports an aligned span as a
                        // plain alloc imports any span.
                        Op::ChildAlloc { .. } | Op::ChildXalloc { .. } => (
                            struck.child_tags > 0,
                            struck.child_import > 0 || struck.parent_tags > 0,
                        ),
                        // A slab: its record from the cache meta source, its
                        // integers from the child, which may import.
                        Op::CacheAlloc { .. } => (
                            struck.child_tags > 0 || struck.cache_meta > 0,
                            struck.child_import > 0 || struck.parent_tags > 0,
                        ),
                        _ => (false, false),
                    };
                    let expected = match e.kind() {
                        ErrorKind::NoSpace => no_space,
                        ErrorKind::ImportFailed => import_failed,
                        _ => false,
                    };
                    prop_assert!(
                        expected,
                        "{:?} failed with {} after faults {:?}",
                        op,
                        e,
                        struck
                    );
                    prop_assert_eq!(snapshot(), before, "failed {:?} changed something", op);
                }
                Ok(got) => {
                    if !matches!(op, Op::Plan { .. }) {
                        ABSORBED.fetch_add(struck.total(), Ordering::Relaxed);
                    }
                    if let Some(new) = got {
                        check_new(&new, &live, &parent, &child, &caches)?;
                        live.push(new);
                    }
                }
            }
            for c in &caches {
                prop_assert!(c.check().is_ok(), "{:?}", c.check());
            }
            prop_assert!(parent.check().is_ok(), "{:?}", parent.check());
            prop_assert!(child.check().is_ok(), "{:?}", child.check());
            check_layers(case, &live, &parent, &child, &caches)?;
        }

        // Free everything, stop injecting, reap: nothing may be left.
        for target in TARGETS {
            set_plan(target, FaultPlan::Never);
        }
        for l in live.drain(..) {
            let freed = release(l, &parent, &child, &caches);
            prop_assert!(freed.is_ok(), "{:?}", freed);
        }
        for c in &caches {
            prop_assert!(c.reap().is_ok());
            prop_assert_eq!(c.stats().slabs, 0);
        }
        prop_assert!(child.reap().is_ok());
        prop_assert!(parent.reap().is_ok());
        prop_assert_eq!((walk(&parent), walk(&child)), start, "something leaked");
        prop_assert!(parent.check().is_ok() && child.check().is_ok());
        // The arenas' meta pages are their tag pages and hash tables.
        for (arena, pages) in [(&parent, &parent_pages), (&child, &child_pages)] {
            let s = arena.stats();
            prop_assert_eq!(
                pages.out() as u64,
                s.tag_pages + hash_table_pages(s.hash_buckets),
                "{} meta pages unaccounted for",
                arena.name()
            );
        }
    }
    // Dropped: every meta page went back.
    prop_assert_eq!(
        (parent_pages.out(), child_pages.out(), cache_pages.out()),
        (0, 0, 0)
    );
    Ok(())
}

/// Pages of the hash table an arena installed: none while the buckets are
/// the 16 inside the arena, else 16-byte buckets in whole pages.
fn hash_table_pages(buckets: u64) -> u64 {
    if buckets <= 16 {
        0
    } else {
        (buckets * 16).div_ceil(META_PAGE as u64)
    }
}

/// A new allocation meets its request and overlaps nothing live.
fn check_new(
    new: &Live,
    live: &[Live],
    parent: &Arena,
    child: &Arena,
    caches: &[ObjectCache],
) -> Result<(), TestCaseError> {
    let (range, level) = extent(new, caches);
    if !matches!(new, Live::Object { .. }) {
        prop_assert_eq!(range.0 % Q, 0, "{:?} is not quantum-aligned", new);
    }
    match new {
        Live::Parent { .. } => {
            prop_assert!(parent.contains(range.0, range.1 - range.0).unwrap());
            for span in spans(child) {
                prop_assert!(!overlaps(range, span), "{:?} overlaps a child span", new);
            }
        }
        Live::Child { .. } => prop_assert!(child.contains(range.0, range.1 - range.0).unwrap()),
        Live::Object { .. } => prop_assert!(child.contains(range.0, range.1 - range.0).unwrap()),
    }
    for other in live {
        let (r, l) = extent(other, caches);
        prop_assert!(
            l != level || !overlaps(range, r),
            "{:?} overlaps live {:?}",
            new,
            other
        );
    }
    Ok(())
}

/// The integers an allocation holds and its arena (0 parent, 1 child).
fn extent(l: &Live, caches: &[ObjectCache]) -> ((u64, u64), u8) {
    match *l {
        Live::Parent { addr, size, .. } => ((addr, addr + size), 0),
        Live::Child { addr, size, .. } => ((addr, addr + size), 1),
        Live::Object { cache, addr } => ((addr, addr + caches[cache].object_size()), 1),
    }
}

/// Each arena's allocated bytes are what lives in it (when no quantum cache
/// makes the split between slabs and direct allocations ambiguous), and the
/// child's spans overlap no live allocation of the parent.
fn check_layers(
    case: &Case,
    live: &[Live],
    parent: &Arena,
    child: &Arena,
    caches: &[ObjectCache],
) -> Result<(), TestCaseError> {
    let child_spans = spans(child);
    for l in live {
        if let Live::Parent { addr, size, .. } = *l {
            for &span in &child_spans {
                prop_assert!(!overlaps((addr, addr + size), span));
            }
        }
    }
    if case.parent_qcache.is_none() {
        let own: u64 = live
            .iter()
            .map(|l| match l {
                Live::Parent { size, .. } => *size,
                _ => 0,
            })
            .sum();
        prop_assert_eq!(parent.size().alloc, child.size().total + own);
    }
    if case.child_qcache.is_none() {
        let own: u64 = live
            .iter()
            .map(|l| match l {
                Live::Child { size, .. } => *size,
                _ => 0,
            })
            .sum();
        let slabs: u64 = caches
            .iter()
            .map(|c| c.stats())
            .map(|s| s.slabs * s.slab_size)
            .sum();
        prop_assert_eq!(child.size().alloc, own + slabs);
    }
    let s = child.size();
    prop_assert_eq!(s.alloc + s.free, s.total);
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn faults_leave_arenas_and_caches_consistent() {
    let mut runner = TestRunner::new(Config {
        cases: cases(256),
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&case(), |case| run_case(&case));
    let by_site: Vec<u64> = INJECTED.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let injected: u64 = by_site.iter().sum();
    let absorbed = ABSORBED.load(Ordering::Relaxed);
    eprintln!(
        "faults: {injected} injected and survived (child imports {}, child tags {}, \
         parent tags {}, cache meta {}); {absorbed} absorbed by calls that still \
         succeeded; {} calls failed cleanly",
        by_site[0],
        by_site[1],
        by_site[2],
        by_site[3],
        FAILED_CALLS.load(Ordering::Relaxed),
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(
        by_site.iter().all(|&n| n > 0) && absorbed > 0,
        "every site must be struck, and some faults absorbed"
    );
}

// ---------------------------------------------------------------------------
// Scenario scripts.

/// One line of a random script: mostly well formed, some not.
fn script_line() -> impl Strategy<Value = String> {
    let arena = prop::sample::select(vec!["root", "va", "leaf", "nowhere"]);
    let handle = (0u8..12).prop_map(|h| format!("h{h}"));
    let size = prop_oneof![
        (1u64..=20).prop_map(|q| format!("{}K", 4 * q)),
        (1u64..=4).prop_map(|m| format!("{m}M")),
        Just("3000".to_string()),
    ];
    prop_oneof![
        4 => (arena.clone(), prop::option::of(0u64..5)).prop_map(|(a, n)| match n {
            Some(n) => format!("fail {a} import count={n}"),
            None => format!("fail {a} import"),
        }),
        1 => prop::sample::select(vec![
            "fail va", "fail va export", "fail va import count=x", "fail va import 3",
            "fail", "h0 = fail va import",
        ]).prop_map(str::to_string),
        6 => (handle.clone(), arena.clone(), size.clone(), policy())
            .prop_map(|(h, a, s, p)| {
                let p = match p {
                    Policy::InstantFit => "instant",
                    Policy::BestFit => "best",
                    Policy::NextFit => "next",
                };
                format!("{h} = alloc {a} {s} {p}")
            }),
        1 => (handle.clone(), arena.clone(), size, 12u32..=16)
            .prop_map(|(h, a, s, l)| format!("{h} = xalloc {a} {s} align={}", 1u64 << l)),
        5 => (arena.clone(), handle.clone(), any::<bool>())
            .prop_map(|(a, h, x)| format!("{} {a} {h}", if x { "xfree" } else { "free" })),
        3 => (handle.clone(), prop::sample::select(vec!["objs", "big"]))
            .prop_map(|(h, c)| format!("{h} = cache_alloc {c}")),
        3 => (prop::sample::select(vec!["objs", "big"]), handle.clone())
            .prop_map(|(c, h)| format!("cache_free {c} {h}")),
        1 => (0u8..3).prop_map(|n| format!("rsv{n} = reserve_alloc pool")),
        1 => (0u8..3).prop_map(|n| format!("reserve_free pool rsv{n}")),
        1 => Just("reap".to_string()),
        1 => (0u64..40).prop_map(|n| format!("cpu {n}")),
        1 => arena.clone().prop_map(|a| format!("destroy {a}")),
        1 => arena.prop_map(|a| format!("stats {a}")),
    ]
}

fn script() -> impl Strategy<Value = (String, Vec<String>)> {
    (
        (4u64..=64).prop_map(|q| q * 64), // root size in K
        prop::sample::select(vec!["", " qcache=16K", " qcache=64K"]),
        prop::sample::select(vec!["4K", "16K", "64K"]),
        prop::collection::vec(script_line(), 1..120),
    )
        .prop_map(|(root_k, qcache, import, body)| {
            let prelude = format!(
                "arena root quantum=4K base=0x1000000 size={root_k}K\n\
                 arena va quantum=4K source=root import={import}{qcache}\n\
                 arena leaf quantum=4K source=va import=16K qcache=8K\n\
                 cache objs size=100 arena=va magazine=3\n\
                 cache big size=20K arena=leaf\n\
                 reserve pool cache=objs count=2\n"
            );
            (prelude, body)
        })
}

const KINDS: [&str; 16] = [
    "Parse",
    "UnknownArena",
    "UnknownCache",
    "UnknownHandle",
    "DuplicateName",
    "ZeroSize",
    "Misaligned",
    "BadConstraint",
    "Overconstrained",
    "Overflow",
    "NoSpace",
    "BadFree",
    "Overlap",
    "InUse",
    "ImportFailed",
    "Corrupt",
];

/// Script lines that failed with `ImportFailed` (the `fail` lines at work).
static SCRIPT_IMPORT_FAILS: AtomicU64 = AtomicU64::new(0);

fn run_script(prelude: &str, body: &[String]) -> Result<String, TestCaseError> {
    let mut interpreter = Interpreter::new();
    let mut out = String::new();
    let mut line_no = 0;
    let mut run = |interpreter: &mut Interpreter, text: &str| -> Result<String, TestCaseError> {
        line_no += 1;
        let json = interpreter.run_line(line_no, text);
        prop_assert!(json.is_some(), "line {:?} gave no output", text);
        let json = json.unwrap_or_default();
        prop_assert!(!json.contains('\n'));
        out.push_str(&json);
        out.push('\n');
        Ok(json)
    };
    for line in prelude.lines() {
        let json = run(&mut interpreter, line)?;
        prop_assert!(json.contains(r#""ok":true"#), "{} -> {}", line, json);
    }
    let walks = |interpreter: &mut Interpreter,
                 run: &mut dyn FnMut(&mut Interpreter, &str) -> Result<String, TestCaseError>|
     -> Result<Vec<String>, TestCaseError> {
        ["root", "va", "leaf"]
            .iter()
            .map(|a| {
                let json = run(interpreter, &format!("walk {a}"))?;
                // Drop the line number: the same walk on another line.
                Ok(json
                    .split_once(',')
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or(json))
            })
            .collect()
    };
    for line in body {
        let before = walks(&mut interpreter, &mut run)?;
        let json = run(&mut interpreter, line)?;
        if json.contains(r#""ok":false"#) {
            let kind = json
                .split(r#""kind":""#)
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("");
            prop_assert!(KINDS.contains(&kind), "{} -> {}", line, json);
            prop_assert!(kind != "Corrupt", "{} -> {}", line, json);
            if kind == "ImportFailed" {
                SCRIPT_IMPORT_FAILS.fetch_add(1, Ordering::Relaxed);
            }
            prop_assert_eq!(
                walks(&mut interpreter, &mut run)?,
                before,
                "failed line {} changed an arena",
                line
            );
        } else {
            prop_assert!(json.contains(r#""ok":true"#), "{} -> {}", line, json);
        }
        let check = run(&mut interpreter, "check")?;
        prop_assert!(check.contains(r#""ok":true"#), "after {}: {}", line, check);
    }
    Ok(out)
}

#[test]
fn scenario_scripts_with_fail_lines_stay_consistent() {
    let mut runner = TestRunner::new(Config {
        cases: cases(128),
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&script(), |(prelude, body)| {
        let first = run_script(&prelude, &body)?;
        prop_assert_eq!(
            run_script(&prelude, &body)?,
            first,
            "same script, other output"
        );
        Ok(())
    });
    let import_fails = SCRIPT_IMPORT_FAILS.load(Ordering::Relaxed);
    eprintln!("scenario scripts: {import_fails} lines failed with ImportFailed");
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(import_fails > 0, "the fail lines must strike");
}
