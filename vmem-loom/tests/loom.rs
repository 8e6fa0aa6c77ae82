//! Model checking with `loom`: every interleaving (up to a preemption
//! bound) of two CPUs' lock acquisitions and atomic operations in
//!
//! - the magazine/depot exchange: small magazines traded between two CPUs'
//!   loaded/previous pairs and the depot, with frees on another CPU than
//!   the allocation's;
//! - a reap of the cache racing allocations and frees;
//! - a child arena importing from (and releasing to) its parent while
//!   another CPU frees and allocates in the parent (the child-before-parent
//!   lock order);
//! - quantum caches over a child arena: slab allocation importing through
//!   two arenas while another CPU reaps the caches.
//!
//! - the fast path on the host's `ThreadCpus`: a thread claims a CPU slot,
//!   fills its held magazine and exits (letting the slot go) while another
//!   thread reaps, which either finds the slot free and drains it itself
//!   or finds it claimed and posts a request;
//! - a reap that asks a slot's owner to drain, and the owner's next slow
//!   path answering it;
//!
//! - and, to show a deadlock would not go unseen, two locks taken in
//!   opposite orders, which must fail the model.
//!
//! Each model asserts after joining its threads that no object or segment
//! was handed out twice, that every checker passes, that the counters add
//! up, and that once everything is freed and reaped the arenas are as they
//! started.
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p vmem-loom --release -- --nocapture
//! ```
//!
//! Each model prints how many interleavings it explored. `LOOM_MAX_PREEMPTIONS`
//! overrides the models' preemption bound (a larger bound explores more and
//! takes longer).
#![cfg(loom)]

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex as HostMutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use loom::model::Builder;
use loom::thread;
use vmem_core::{
    Arena, ArenaConfig, CacheConfig, CpuId, HeapMeta, LoomLock, ObjectCache, Policy, QuantumCaches,
    Segment, ThreadCpus,
};
use vmem_testkit::walk;

type ModelArena = Arena<'static, LoomLock>;
type ModelCache = ObjectCache<'static, LoomLock>;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// The CPU index each model thread sets for itself.
struct ThreadCpu;

impl CpuId for ThreadCpu {
    fn current(&self) -> usize {
        CPU.with(Cell::get)
    }
}

static THREAD_CPU: ThreadCpu = ThreadCpu;

fn on_cpu(index: usize) {
    CPU.with(|c| c.set(index));
}

/// Stack of the thread each model runs on.
const MODEL_STACK: usize = 4 << 20;

/// Runs `model` under every interleaving within the preemption bound and
/// reports how many there were.
fn explore(name: &str, preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    // The environment (LOOM_MAX_PREEMPTIONS) wins over the model's bound.
    let bound = *builder.preemption_bound.get_or_insert(preemptions);
    builder.max_branches = 100_000;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let model = Arc::new(model);
    let start = Instant::now();
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        let model = Arc::clone(&model);
        // `loom`'s threads have small stacks, and quantum caches (16 caches
        // of 32 CPU slots) are built on the stack.
        thread::Builder::new()
            .stack_size(MODEL_STACK)
            .spawn(move || model())
            .unwrap()
            .join()
            .unwrap();
    });
    let runs = runs.load(Ordering::Relaxed);
    println!(
        "loom {name}: {runs} interleavings, preemption bound {bound}, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(runs > 1, "{name}: the threads never interleaved");
}

/// A `'static` reference for model threads, which `loom` cannot scope.
fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// Drops what [`leak`] made.
///
/// # Safety
/// `value` came from [`leak`], every thread that used it has been joined,
/// and it is not used afterwards.
unsafe fn reclaim<T>(value: &'static T) {
    // SAFETY: per the function's contract, the box is ours alone again.
    drop(unsafe { Box::from_raw(value as *const T as *mut T) });
}

fn arena(name: &str, quantum: u64, base: u64, size: u64) -> ModelArena {
    Arena::create(
        ArenaConfig::new(name, quantum)
            .span(base, size)
            .meta(&HeapMeta)
            // The static pool outlives a model run; keep every run alike.
            .static_tags(false),
    )
    .unwrap()
}

/// The objects users hold, to catch one handed out twice.
type Held = HostMutex<HashSet<u64>>;

fn take(cache: &ModelCache, held: &Held) -> u64 {
    let obj = cache.alloc().unwrap();
    assert!(
        held.lock().unwrap().insert(obj),
        "object {obj:#x} handed out twice"
    );
    obj
}

fn give(cache: &ModelCache, held: &Held, obj: u64) {
    assert!(held.lock().unwrap().remove(&obj), "{obj:#x} is not held");
    cache.free(obj).unwrap();
}

/// A cache of 64-integer objects, 8 to a slab, with one-round magazines,
/// over an arena of its own.
fn cache_world() -> (&'static ModelArena, &'static ModelCache, &'static Held) {
    let arena = leak(arena("objs", 64, 0x10_0000, 64 * 64));
    let config = CacheConfig::new("obj", 64, &HeapMeta, &THREAD_CPU)
        .magazine(1)
        .debug(true);
    let cache = leak(ObjectCache::new(config, arena).unwrap());
    // Makes every lock (see `LoomLock`) before any thread shares them.
    cache.check().unwrap();
    (arena, cache, leak(HostMutex::new(HashSet::new())))
}

/// Frees what remains, reaps, and checks the arena is back to `before`.
///
/// # Safety
/// As [`reclaim`], for all three.
unsafe fn finish(
    arena: &'static ModelArena,
    cache: &'static ModelCache,
    held: &'static Held,
    before: &[Segment],
) {
    let left: Vec<u64> = held.lock().unwrap().iter().copied().collect();
    for obj in left {
        give(cache, held, obj);
    }
    cache.check().unwrap();
    assert_eq!(cache.stats().in_use, 0);
    cache.reap().unwrap();
    cache.check().unwrap();
    let s = cache.stats();
    assert_eq!((s.slabs, s.depot_full, s.depot_empty), (0, 0, 0), "{s:?}");
    arena.check().unwrap();
    assert_eq!(walk(arena), before, "the arena is back to its start");
    // SAFETY: per the function's contract.
    unsafe {
        reclaim(cache);
        reclaim(arena);
        reclaim(held);
    }
}

/// CPU 2, after one round trip that stocks the depot with empty
/// magazines, leaves full magazines in the depot and hands an object each to
/// CPUs 0 and 1, which free it, allocate two, free one and keep the other;
/// CPU 2 then frees what they kept.
#[test]
fn magazines_trade_through_the_depot() {
    explore("magazine/depot exchange", 4, || {
        on_cpu(2);
        let (arena, cache, held) = cache_world();
        let before = walk(arena);
        // A first round trip: frees that find no empty magazine go to the
        // slabs, and the allocations after them stock the depot with empty
        // magazines (a free never allocates one).
        let warm: Vec<u64> = (0..6).map(|_| take(cache, held)).collect();
        for obj in warm {
            give(cache, held, obj);
        }
        let objs: Vec<u64> = (0..6).map(|_| take(cache, held)).collect();
        for &obj in &objs[..4] {
            give(cache, held, obj);
        }
        assert!(cache.stats().depot_full > 0, "the depot has full magazines");
        let threads: Vec<_> = (0..2)
            .map(|cpu| {
                let handed = objs[4 + cpu];
                thread::spawn(move || {
                    on_cpu(cpu);
                    give(cache, held, handed);
                    let a = take(cache, held);
                    let b = take(cache, held);
                    give(cache, held, a);
                    b
                })
            })
            .collect();
        let kept: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        cache.check().unwrap();
        let s = cache.stats();
        assert_eq!((s.in_use, s.allocs, s.frees), (2, 16, 14), "{s:?}");
        for obj in kept {
            give(cache, held, obj);
        }
        // SAFETY: the threads are joined; nothing is used afterwards.
        unsafe { finish(arena, cache, held, &before) };
    });
}

/// CPU 1 purges the cache (every CPU's magazines, the depot, empty slabs)
/// while CPU 0 allocates and frees through its magazines.
#[test]
fn reap_races_alloc_and_free() {
    explore("reap racing alloc/free", 3, || {
        on_cpu(2);
        let (arena, cache, held) = cache_world();
        let before = walk(arena);
        let objs: Vec<u64> = (0..3).map(|_| take(cache, held)).collect();
        for obj in objs {
            give(cache, held, obj);
        }
        let user = thread::spawn(move || {
            on_cpu(0);
            let a = take(cache, held);
            let b = take(cache, held);
            give(cache, held, a);
            b
        });
        let reaper = thread::spawn(move || {
            on_cpu(1);
            cache.reap().unwrap();
        });
        reaper.join().unwrap();
        let kept = user.join().unwrap();
        cache.check().unwrap();
        assert_eq!(cache.stats().in_use, 1);
        assert!(held.lock().unwrap().contains(&kept));
        // SAFETY: the threads are joined; nothing is used afterwards.
        unsafe { finish(arena, cache, held, &before) };
    });
}

/// A child arena imports a span from its parent and releases it (child
/// lock, then parent lock) while another CPU frees and allocates in the
/// parent and in the child.
#[test]
fn child_import_races_parent_free() {
    const Q: u64 = 4096;
    explore("child import racing parent free", 4, || {
        let parent = leak(arena("parent", Q, 0x100_0000, 8 * Q));
        let child = leak(
            Arena::<LoomLock>::create(
                ArenaConfig::new("child", Q)
                    .source(parent, Q)
                    .meta(&HeapMeta)
                    .static_tags(false),
            )
            .unwrap(),
        );
        child.check().unwrap();
        let before = walk(parent);
        let p = parent.alloc(2 * Q, Policy::InstantFit).unwrap();
        let importer = thread::spawn(move || {
            let x = child.alloc(Q, Policy::InstantFit).unwrap();
            child.free(x, Q).unwrap();
            child.alloc(2 * Q, Policy::InstantFit).unwrap()
        });
        let other = thread::spawn(move || {
            parent.free(p, 2 * Q).unwrap();
            let q = parent.alloc(Q, Policy::InstantFit).unwrap();
            let c = child.alloc(Q, Policy::InstantFit).unwrap();
            parent.free(q, Q).unwrap();
            c
        });
        let y = importer.join().unwrap();
        let c = other.join().unwrap();
        assert_ne!(y, c);
        child.check().unwrap();
        parent.check().unwrap();
        let (ps, cs) = (parent.stats(), child.stats());
        assert_eq!(child.size().alloc, 3 * Q);
        assert_eq!(
            parent.size().alloc,
            child.size().total,
            "the parent's allocations are the child's spans"
        );
        assert_eq!(ps.allocs, 2 + cs.imports, "{ps:?} {cs:?}");
        assert_eq!(ps.frees, 2 + cs.releases, "{ps:?} {cs:?}");
        child.free(y, 2 * Q).unwrap();
        child.free(c, Q).unwrap();
        assert_eq!(child.size().total, 0, "every imported span went back");
        parent.check().unwrap();
        assert_eq!(walk(parent), before, "the parent is back to its start");
        // SAFETY: the threads are joined; nothing is used afterwards.
        unsafe {
            reclaim(child);
            reclaim(parent);
        }
    });
}

/// Quantum caches over a child arena: CPU 0's allocation goes magazine,
/// slab layer, child arena, import from the parent; CPU 1 reaps the caches
/// (slabs back to the child, spans back to the parent) and allocates in the
/// parent meanwhile.
#[test]
fn quantum_caches_import_through_two_arenas() {
    const Q: u64 = 4096;
    explore("quantum caches over a child arena", 3, || {
        on_cpu(2);
        let parent = leak(arena("parent", Q, 0x100_0000, 64 * Q));
        let qc = leak(QuantumCaches::new(Q, 2 * Q, &HeapMeta, &THREAD_CPU).unwrap());
        let child = leak(
            Arena::<LoomLock>::create(
                ArenaConfig::new("kmem_va", Q)
                    .source(parent, 0)
                    .meta(&HeapMeta)
                    .static_tags(false)
                    .qcache(qc),
            )
            .unwrap(),
        );
        child.check().unwrap();
        let before = walk(parent);
        let warm = child.alloc(Q, Policy::InstantFit).unwrap();
        child.free(warm, Q).unwrap();
        let user = thread::spawn(move || {
            on_cpu(0);
            let a = child.alloc(Q, Policy::InstantFit).unwrap();
            let b = child.alloc(2 * Q, Policy::InstantFit).unwrap();
            child.free(a, Q).unwrap();
            b
        });
        let reaper = thread::spawn(move || {
            on_cpu(1);
            child.reap().unwrap();
            let p = parent.alloc(Q, Policy::InstantFit).unwrap();
            parent.free(p, Q).unwrap();
        });
        reaper.join().unwrap();
        let b = user.join().unwrap();
        child.check().unwrap();
        parent.check().unwrap();
        assert_eq!(parent.size().alloc, child.size().total);
        let in_use: u64 = qc.stats().map(|(_, s)| s.in_use).sum();
        assert_eq!(in_use, 1, "only the kept object is out");
        child.free(b, 2 * Q).unwrap();
        child.reap().unwrap();
        child.check().unwrap();
        assert_eq!(child.size().total, 0, "every imported span went back");
        parent.check().unwrap();
        assert_eq!(walk(parent), before, "the parent is back to its start");
        // SAFETY: the threads are joined; nothing is used afterwards. The
        // arena goes before the caches it reaps into.
        unsafe {
            reclaim(child);
            reclaim(qc);
            reclaim(parent);
        }
    });
}

/// A cache of 64-integer objects with one-round magazines on the fast path
/// of a fresh `ThreadCpus`, over an arena of its own. The model thread's
/// first check claims slot 0 for it (and makes every lock).
fn held_world() -> (
    &'static ModelArena,
    &'static ModelCache,
    &'static Held,
    &'static ThreadCpus,
) {
    let cpus = ThreadCpus::leak();
    let arena = leak(arena("objs", 64, 0x10_0000, 64 * 64));
    let config = CacheConfig::new("obj", 64, &HeapMeta, cpus)
        .local(cpus)
        .magazine(1)
        .debug(true);
    let cache = leak(ObjectCache::new(config, arena).unwrap());
    cache.check().unwrap();
    (arena, cache, leak(HostMutex::new(HashSet::new())), cpus)
}

fn take_held(cache: &ModelCache, cpus: &ThreadCpus, held: &Held) -> u64 {
    let obj = cache.alloc_local(cpus).unwrap();
    assert!(
        held.lock().unwrap().insert(obj),
        "object {obj:#x} handed out twice"
    );
    obj
}

fn give_held(cache: &ModelCache, cpus: &ThreadCpus, held: &Held, obj: u64) {
    assert!(held.lock().unwrap().remove(&obj), "{obj:#x} is not held");
    cache.free_local(cpus, obj).unwrap();
}

/// A thread claims a CPU slot, leaves a round in its held magazine and
/// lets the slot go, while another thread reaps: the reap either
/// drains the slot itself (free, or free again) or posts a request (still
/// claimed). `loom`'s cell fails the model if the reaper and the owner
/// ever touch the held part without one happening before the other; after
/// both are joined the slot is free, the checker sees it whole, and the
/// final reap empties it.
///
/// Each thread lets go by `ThreadCpus::let_go` as its last act: the code
/// its thread-local destructor runs, which `loom` cannot run itself (it
/// drops a thread's locals outside the model, where its atomics panic).
/// The reaper claimed a slot too (a reap holds its own CPU if it can).
#[test]
fn a_thread_claims_fills_and_lets_go_while_another_reaps() {
    explore("held slot claim/drain/release", 2, || {
        let (arena, cache, held, cpus) = held_world();
        let before = walk(arena);
        let owner = thread::spawn(move || {
            let a = take_held(cache, cpus, held);
            let b = take_held(cache, cpus, held);
            give_held(cache, cpus, held, a);
            give_held(cache, cpus, held, b);
            cpus.let_go();
        });
        let reaper = thread::spawn(move || {
            cache.reap().unwrap();
            cpus.let_go();
        });
        owner.join().unwrap();
        reaper.join().unwrap();
        assert_eq!(cpus.claimed(), 1, "only the model thread's slot is claimed");
        cache.check().unwrap();
        let s = cache.stats();
        assert_eq!((s.allocs, s.frees, s.in_use), (2, 2, 0), "{s:?}");
        // SAFETY: the threads are joined; nothing is used afterwards.
        unsafe { finish(arena, cache, held, &before) };
    });
}

/// The owner holds a round when the reaper posts its request; the owner's
/// next hit does not answer it, its next miss does (the held magazines go
/// back to the slab layer), whichever way the two threads interleave.
#[test]
fn a_reap_asks_the_owner_and_its_slow_path_answers() {
    explore("reap asking a slot's owner", 3, || {
        let (arena, cache, held, cpus) = held_world();
        let before = walk(arena);
        let filled = leak(loom::sync::atomic::AtomicBool::new(false));
        let reaped = leak(loom::sync::atomic::AtomicBool::new(false));
        let owner = thread::spawn(move || {
            let a = take_held(cache, cpus, held);
            let b = take_held(cache, cpus, held);
            give_held(cache, cpus, held, a);
            give_held(cache, cpus, held, b);
            filled.store(true, Ordering::Release);
            while !reaped.load(Ordering::Acquire) {
                thread::yield_now();
            }
            let x = take_held(cache, cpus, held);
            let y = take_held(cache, cpus, held);
            cpus.let_go();
            (x, y)
        });
        let reaper = thread::spawn(move || {
            while !filled.load(Ordering::Acquire) {
                thread::yield_now();
            }
            cache.reap().unwrap();
            cpus.let_go();
            reaped.store(true, Ordering::Release);
        });
        reaper.join().unwrap();
        let (x, y) = owner.join().unwrap();
        cache.check().unwrap();
        assert_eq!(cpus.claimed(), 1, "only the model thread's slot is claimed");
        let s = cache.stats();
        assert_eq!(
            s.magazines,
            s.depot_full + s.depot_empty,
            "the owner's miss drained its slot: {s:?}"
        );
        give(cache, held, x);
        give(cache, held, y);
        // SAFETY: the threads are joined; nothing is used afterwards.
        unsafe {
            finish(arena, cache, held, &before);
            reclaim(filled);
            reclaim(reaped);
        }
    });
}

/// What a lock-order inversion looks like to these models: two threads
/// taking two locks in opposite orders deadlock in some interleaving, where
/// both spin forever and `loom` stops the model at its branch limit.
#[test]
#[should_panic(expected = "maximum number of branches")]
fn opposite_lock_orders_are_caught() {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(2);
    builder.max_branches = 1_000;
    builder.check(|| {
        let first = Arc::new(lock_api::Mutex::<LoomLock, ()>::new(()));
        let second = Arc::new(lock_api::Mutex::<LoomLock, ()>::new(()));
        // Makes both locks before the threads share them.
        drop((first.lock(), second.lock()));
        let (a, b) = (Arc::clone(&first), Arc::clone(&second));
        let other = thread::spawn(move || {
            let _a = a.lock();
            let _b = b.lock();
        });
        {
            let _b = second.lock();
            let _a = first.lock();
        }
        other.join().unwrap();
    });
}
