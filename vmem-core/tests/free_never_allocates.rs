//! A free never allocates: arenas, object caches, quantum caches, size
//! classes and `GlobalHeap` free without calling a meta source, even when the frees
//! need more magazines than the caches have and the meta source refuses
//! every page. What finds no room in a magazine goes back to its slab.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::spin_loop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmem_core::{
    Arena, ArenaConfig, CacheConfig, FixedCpu, GlobalHeap, HeapMeta, MetaSource, ObjectCache,
    Policy, QuantumCaches, SizeClasses,
};
use vmem_testkit::{buffer, walk};

/// Meta pages from the heap, counting every request, and refusing them all
/// once told to.
struct CountingMeta {
    calls: AtomicU64,
    refuse: AtomicBool,
}

impl CountingMeta {
    const fn new() -> Self {
        CountingMeta {
            calls: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
        }
    }

    /// Refuses every page from now on, and returns the requests so far.
    fn run_dry(&self) -> u64 {
        self.refuse.store(true, Ordering::SeqCst);
        self.calls.load(Ordering::SeqCst)
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl MetaSource for CountingMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            return None;
        }
        HeapMeta.alloc_pages(pages)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        // SAFETY: the pages came from `HeapMeta` through `alloc_pages`.
        unsafe { HeapMeta.free_pages(base, pages) }
    }
}

/// Acquisitions of every [`CountingLock`] so far.
static ARENA_LOCKS: AtomicU64 = AtomicU64::new(0);

/// A spin lock that counts its acquisitions: an arena built on it shows
/// whether a cache's free reached the arena.
struct CountingLock(AtomicBool);

// SAFETY: a spin lock: `try_lock` succeeds for one caller until `unlock`.
unsafe impl lock_api::RawMutex for CountingLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = CountingLock(AtomicBool::new(false));
    type GuardMarker = lock_api::GuardSend;

    fn lock(&self) {
        while !self.try_lock() {
            spin_loop();
        }
    }

    fn try_lock(&self) -> bool {
        ARENA_LOCKS.fetch_add(1, Ordering::SeqCst);
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// CPUs the frees run on: never the one that allocated the object, so the
/// freeing CPU's magazines fill at once and every further free needs an
/// empty magazine from the depot.
fn other_cpu(i: usize) -> usize {
    4 + i % 3
}

/// Frees in an order unlike the allocations': from both ends inwards.
fn scrambled<T: Copy>(objs: &[T]) -> Vec<T> {
    let (front, back) = objs.split_at(objs.len() / 2);
    back.iter()
        .rev()
        .zip(front.iter())
        .flat_map(|(&a, &b)| [a, b])
        .chain(back.first().copied().filter(|_| back.len() > front.len()))
        .collect()
}

/// An object cache on several CPUs, with small magazines so the frees
/// need many of them.
/// Returns the meta-page requests made during its frees.
fn object_cache() -> u64 {
    let meta = CountingMeta::new();
    let cpu = FixedCpu::new(0);
    let arena: Arena<'_, CountingLock> =
        Arena::create(ArenaConfig::new("ids", 1).span(0x1000, 1 << 24).meta(&meta)).unwrap();
    let before = walk(&arena);
    let cache = ObjectCache::new(
        CacheConfig::new("objs", 64, &meta, &cpu)
            .magazine(3)
            .debug(true),
        &arena,
    )
    .unwrap();
    // Warm-up: magazines and slabs come into being.
    for _ in 0..2 {
        let objs: Vec<u64> = (0..300)
            .map(|i| {
                cpu.set(i % 4);
                cache.alloc().unwrap()
            })
            .collect();
        for (i, &o) in objs.iter().enumerate() {
            cpu.set(i % 4);
            cache.free(o).unwrap();
        }
    }
    let objs: Vec<u64> = (0..1200)
        .map(|i| {
            cpu.set(i % 4);
            cache.alloc().unwrap()
        })
        .collect();
    let calls = meta.run_dry();
    let hits = cache.stats().free_magazine_hits;
    let arena_locks = ARENA_LOCKS.load(Ordering::SeqCst);
    for (i, o) in scrambled(&objs).into_iter().enumerate() {
        cpu.set(other_cpu(i));
        cache.free(o).unwrap();
    }
    let during_frees = meta.calls() - calls;
    assert_eq!(
        ARENA_LOCKS.load(Ordering::SeqCst),
        arena_locks,
        "a cache's free never takes its arena's lock"
    );
    let s = cache.stats();
    assert!(
        s.free_magazine_hits > hits && s.free_magazine_misses > 0,
        "the frees used the magazines there were, and the slabs beyond: {s:?}"
    );
    cache.check().unwrap();
    assert_eq!(cache.stats().in_use, 0);
    cache.reap().unwrap();
    cache.check().unwrap();
    assert_eq!(cache.stats().slabs, 0);
    assert_eq!(meta.calls(), calls + during_frees, "a reap gives back only");
    arena.check().unwrap();
    assert_eq!(walk(&arena), before, "the arena is whole again");
    during_frees
}

/// A parent and a child that imports from it, no caches: `free` and
/// `xfree` (releasing imported spans to the parent on the way) while the
/// hash is large and possibly mid-resize. Returns the meta-page requests
/// made during its frees.
fn plain_arenas() -> u64 {
    let meta = CountingMeta::new();
    let parent: Arena = Arena::create(
        ArenaConfig::new("parent", 4096)
            .span(0x1000_0000, 1 << 36)
            .meta(&meta)
            .static_tags(false),
    )
    .unwrap();
    let child: Arena = Arena::create(
        ArenaConfig::new("child", 4096)
            .source(&parent, 1 << 20)
            .meta(&meta)
            .static_tags(false),
    )
    .unwrap();
    let (parent_before, child_before) = (walk(&parent), walk(&child));
    let objs: Vec<(u64, u64, bool)> = (0..20_000u64)
        .map(|i| {
            let size = (i % 7 + 1) * 4096;
            if i % 5 == 0 {
                let c = vmem_core::Constraints::aligned(2 * 4096);
                (
                    parent.xalloc(size, &c, Policy::InstantFit).unwrap(),
                    size,
                    true,
                )
            } else {
                (child.alloc(size, Policy::InstantFit).unwrap(), size, false)
            }
        })
        .collect();
    let calls = meta.run_dry();
    for (a, s, x) in scrambled(&objs) {
        if x {
            parent.xfree(a, s).unwrap();
        } else {
            child.free(a, s).unwrap();
        }
    }
    let during_frees = meta.calls() - calls;
    child.check().unwrap();
    parent.check().unwrap();
    assert_eq!(walk(&child), child_before, "the child gave back every span");
    assert_eq!(walk(&parent), parent_before, "the parent is whole again");
    during_frees
}

/// An arena's quantum caches, freed through `Arena::free`.
/// Returns the meta-page requests made during its frees.
fn quantum_caches() -> u64 {
    let meta = CountingMeta::new();
    let cpu = FixedCpu::new(0);
    let qc = QuantumCaches::new(4096, 4 * 4096, &meta, &cpu).unwrap();
    let arena: Arena = Arena::create(
        ArenaConfig::new("va", 4096)
            .span(0x1000_0000, 1 << 32)
            .meta(&meta)
            .qcache(&qc),
    )
    .unwrap();
    let before = walk(&arena);
    let alloc = |i: usize| {
        cpu.set(i % 4);
        let size = (i as u64 % 4 + 1) * 4096;
        (arena.alloc(size, Policy::InstantFit).unwrap(), size)
    };
    let warm: Vec<(u64, u64)> = (0..200).map(alloc).collect();
    for (i, &(a, s)) in warm.iter().enumerate() {
        cpu.set(i % 4);
        arena.free(a, s).unwrap();
    }
    let objs: Vec<(u64, u64)> = (0..1600).map(alloc).collect();
    let calls = meta.run_dry();
    for (i, (a, s)) in scrambled(&objs).into_iter().enumerate() {
        cpu.set(other_cpu(i));
        arena.free(a, s).unwrap();
    }
    let during_frees = meta.calls() - calls;
    arena.check().unwrap();
    assert!(qc.stats().all(|(_, s)| s.in_use == 0));
    arena.reap().unwrap();
    arena.check().unwrap();
    assert_eq!(meta.calls(), calls + during_frees, "a reap gives back only");
    assert_eq!(walk(&arena), before, "the arena is whole again");
    during_frees
}

/// Size classes over memory, with debug checks (poison, red zones).
/// Returns the meta-page requests made during its frees.
fn size_classes() -> u64 {
    let meta = CountingMeta::new();
    let cpu = FixedCpu::new(0);
    let arena: Arena = Arena::create(
        ArenaConfig::new("heap", 4096)
            .span(buffer(64 << 20), 64 << 20)
            .meta(&meta),
    )
    .unwrap();
    let before = walk(&arena);
    // SAFETY: the arena's integers are addresses of a leaked buffer.
    let classes = unsafe { SizeClasses::new(&arena, &meta, &cpu, true) }.unwrap();
    let sizes = [8u64, 24, 100, 500, 1000, 3000, 8000, 20_000];
    let alloc = |i: usize| {
        cpu.set(i % 4);
        let size = sizes[i % sizes.len()];
        (classes.alloc(size, 8).unwrap(), size)
    };
    let warm: Vec<(u64, u64)> = (0..160).map(alloc).collect();
    for (i, &(a, s)) in warm.iter().enumerate() {
        cpu.set(i % 4);
        classes.free(a, s, 8).unwrap();
    }
    let objs: Vec<(u64, u64)> = (0..1600).map(alloc).collect();
    let calls = meta.run_dry();
    for (i, (a, s)) in scrambled(&objs).into_iter().enumerate() {
        cpu.set(other_cpu(i));
        classes.free(a, s, 8).unwrap();
    }
    let during_frees = meta.calls() - calls;
    classes.check().unwrap();
    assert!(classes.caches().iter().all(|c| c.stats().in_use == 0));
    classes.reap().unwrap();
    classes.check().unwrap();
    assert_eq!(meta.calls(), calls + during_frees, "a reap gives back only");
    arena.check().unwrap();
    assert_eq!(walk(&arena), before, "the arena is whole again");
    during_frees
}

/// `GlobalHeap::dealloc`, which cannot report an error at all.
/// Returns the meta-page requests made during its frees.
fn global_heap() -> u64 {
    static META: CountingMeta = CountingMeta::new();
    static CPU: FixedCpu = FixedCpu::new(0);
    static HEAP: GlobalHeap = GlobalHeap::new(|| {
        let arena: &'static Arena<'static> = Box::leak(Box::new(
            Arena::create(
                ArenaConfig::new("global", 4096)
                    .span(buffer(32 << 20), 32 << 20)
                    .meta(&META),
            )
            .ok()?,
        ));
        // SAFETY: the arena's integers are addresses of a leaked buffer.
        unsafe { SizeClasses::new(arena, &META, &CPU, false) }.ok()
    });
    let classes = HEAP.classes().unwrap();
    let before = walk(classes.arena());
    let layouts: Vec<Layout> = [16usize, 48, 256, 1024, 4096, 8192]
        .iter()
        .map(|&size| Layout::from_size_align(size, 8).unwrap())
        .collect();
    let alloc = |i: usize| {
        CPU.set(i % 4);
        let layout = layouts[i % layouts.len()];
        // SAFETY: a non-zero size.
        let p = unsafe { HEAP.alloc(layout) };
        assert!(!p.is_null());
        (p, layout)
    };
    let objs: Vec<(*mut u8, Layout)> = (0..1200).map(alloc).collect();
    let calls = META.run_dry();
    for (i, (p, layout)) in scrambled(&objs).into_iter().enumerate() {
        CPU.set(other_cpu(i));
        // SAFETY: allocated above with this layout, freed once.
        unsafe { HEAP.dealloc(p, layout) };
    }
    let during_frees = META.calls() - calls;
    classes.check().unwrap();
    assert!(classes.caches().iter().all(|c| c.stats().in_use == 0));
    classes.reap().unwrap();
    classes.check().unwrap();
    assert_eq!(META.calls(), calls + during_frees, "a reap gives back only");
    assert_eq!(walk(classes.arena()), before, "the arena is whole again");
    during_frees
}

#[test]
fn defect_3_free_never_calls_the_meta_source() {
    let during_frees = [
        plain_arenas(),
        object_cache(),
        quantum_caches(),
        size_classes(),
        global_heap(),
    ];
    assert_eq!(
        during_frees, [0; 5],
        "meta-page requests during the frees of plain arenas, an object cache, \
         quantum caches, size classes and GlobalHeap"
    );
}

#[test]
fn scrambled_frees_each_object_once() {
    for n in [0usize, 1, 2, 7, 10] {
        let objs: Vec<usize> = (0..n).collect();
        let mut got = scrambled(&objs);
        got.sort();
        assert_eq!(got, objs);
    }
}
