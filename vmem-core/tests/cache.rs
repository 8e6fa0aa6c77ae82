//! Object caches, magazines, quantum caches, reserves and size classes,
//! through the public API.

use std::sync::atomic::{AtomicU64, Ordering};

use vmem_core::{
    Arena, ArenaConfig, CacheConfig, ErrorKind, FixedCpu, HeapMeta, ObjectCache, Policy,
    QuantumCaches, Reserve, SizeClasses,
};
use vmem_testkit::{buffer, walk};

#[test]
fn no_touch_cache_allocates_frees_and_reaps_back_to_the_start() {
    let cpu = FixedCpu::new(0);
    let arena: Arena = Arena::create(
        ArenaConfig::new("ids", 1)
            .span(1000, 100_000)
            .meta(&HeapMeta),
    )
    .unwrap();
    let before = walk(&arena);
    let cache = ObjectCache::new(CacheConfig::new("ids4", 4, &HeapMeta, &cpu), &arena).unwrap();
    let objs: Vec<u64> = (0..500).map(|_| cache.alloc().unwrap()).collect();
    let mut sorted = objs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), objs.len(), "objects are distinct");
    assert!(
        sorted.windows(2).all(|w| w[1] - w[0] >= 4),
        "objects do not overlap"
    );
    assert!(objs.iter().all(|&o| arena.contains(o, 4).unwrap()));
    cache.check().unwrap();
    let s = cache.stats();
    assert_eq!((s.allocs, s.in_use, s.objects_per_slab), (500, 500, 8));
    for o in objs {
        cache.free(o).unwrap();
    }
    cache.check().unwrap();
    assert!(
        cache.stats().free_magazine_hits > 0,
        "frees went into magazines"
    );
    // Allocations now come from the magazines.
    let again: Vec<u64> = (0..10).map(|_| cache.alloc().unwrap()).collect();
    assert_eq!(cache.stats().magazine_hits, 10);
    for o in again {
        cache.free(o).unwrap();
    }
    cache.reap().unwrap();
    cache.check().unwrap();
    assert_eq!(
        walk(&arena),
        before,
        "after reap the arena is as before the cache"
    );
    assert_eq!(cache.stats().slabs, 0);
    arena.check().unwrap();
}

#[test]
fn objects_move_between_cpus_through_the_depot() {
    let cpu = FixedCpu::new(0);
    let arena: Arena = Arena::create(
        ArenaConfig::new("va", 4096)
            .span(0x10_0000, 1 << 30)
            .meta(&HeapMeta),
    )
    .unwrap();
    let cache = ObjectCache::new(
        CacheConfig::new("pages", 4096, &HeapMeta, &cpu).magazine(3),
        &arena,
    )
    .unwrap();
    // Cold: CPU 1's frees find a single empty magazine (stocked by CPU 0's
    // first allocation); a free allocates none, so the rest go to the slabs.
    let objs: Vec<u64> = (0..100).map(|_| cache.alloc().unwrap()).collect();
    cpu.set(1);
    for &o in &objs {
        cache.free(o).unwrap();
    }
    let s = cache.stats();
    assert_eq!(
        (s.free_magazine_hits, s.free_magazine_misses, s.magazines),
        (3, 97, 1),
        "{s:?}"
    );
    // Warm: CPU 0's allocations from the slabs stock an empty magazine for
    // every three frees that went unmet, and CPU 1's frees fill them.
    cpu.set(0);
    let objs: Vec<u64> = (0..100).map(|_| cache.alloc().unwrap()).collect();
    cpu.set(1);
    for &o in &objs {
        cache.free(o).unwrap();
    }
    let s = cache.stats();
    assert!(s.depot_full > 0, "full magazines went to the depot: {s:?}");
    assert!(s.free_magazine_hits >= 3 + 99, "{s:?}");
    cpu.set(2);
    let back: Vec<u64> = (0..20).map(|_| cache.alloc().unwrap()).collect();
    assert!(
        cache.stats().magazine_hits >= 18,
        "CPU 2 took full magazines from the depot"
    );
    assert!(back.iter().all(|o| objs.contains(o)));
    cache.check().unwrap();
    for o in back {
        cache.free(o).unwrap();
    }
    cache.reap().unwrap();
    assert_eq!(arena.size().alloc, 0);
    cache.check().unwrap();
}

#[test]
fn magazines_off_goes_straight_to_the_slabs() {
    let cpu = FixedCpu::new(0);
    let arena: Arena =
        Arena::create(ArenaConfig::new("a", 16).span(0, 1 << 20).meta(&HeapMeta)).unwrap();
    let cache = ObjectCache::new(
        CacheConfig::new("c", 48, &HeapMeta, &cpu).magazine(0),
        &arena,
    )
    .unwrap();
    let a = cache.alloc().unwrap();
    cache.free(a).unwrap();
    let s = cache.stats();
    assert_eq!(
        (s.magazine_hits, s.free_magazine_hits, s.magazines),
        (0, 0, 0)
    );
    assert_eq!(s.slabs_empty, 1);
    cache.reap().unwrap();
    assert_eq!(arena.size().alloc, 0);
}

#[test]
fn debug_checks_catch_double_and_foreign_frees_without_changing_anything() {
    let cpu = FixedCpu::new(0);
    let arena: Arena =
        Arena::create(ArenaConfig::new("a", 1).span(0, 1 << 20).meta(&HeapMeta)).unwrap();
    let a = ObjectCache::new(
        CacheConfig::new("a8", 8, &HeapMeta, &cpu).debug(true),
        &arena,
    )
    .unwrap();
    let b = ObjectCache::new(
        CacheConfig::new("b8", 8, &HeapMeta, &cpu).debug(true),
        &arena,
    )
    .unwrap();
    let x = a.alloc().unwrap();
    let y = b.alloc().unwrap();
    a.free(x).unwrap();
    assert_eq!(
        a.free(x).unwrap_err().kind(),
        ErrorKind::BadFree,
        "double free"
    );
    assert_eq!(
        a.free(y).unwrap_err().kind(),
        ErrorKind::BadFree,
        "another cache's object"
    );
    assert_eq!(
        a.free(x + 1).unwrap_err().kind(),
        ErrorKind::BadFree,
        "inside an object"
    );
    assert_eq!(
        a.free(999_999).unwrap_err().kind(),
        ErrorKind::BadFree,
        "not from any slab"
    );
    a.check().unwrap();
    b.check().unwrap();
    assert_eq!(b.stats().in_use, 1);
    b.free(y).unwrap();
    b.check().unwrap();
}

#[test]
fn memory_mode_poisons_and_guards_red_zones() {
    let cpu = FixedCpu::new(0);
    let base = buffer(1 << 20);
    let arena: Arena = Arena::create(
        ArenaConfig::new("mem", 4096)
            .span(base, 1 << 20)
            .meta(&HeapMeta),
    )
    .unwrap();
    // SAFETY: the arena's integers are addresses inside the leaked buffer.
    let config = unsafe { CacheConfig::new("obj20", 20, &HeapMeta, &cpu).memory() }.debug(true);
    let cache = ObjectCache::new(config, &arena).unwrap();
    let x = cache.alloc().unwrap();
    // SAFETY: x is a 20-byte object in the buffer.
    unsafe { std::ptr::write_bytes(x as *mut u8, 0x11, 20) };
    cache.free(x).unwrap();
    assert_eq!(cache.free(x).unwrap_err().kind(), ErrorKind::BadFree);
    // Write after free: found when the object is handed out again. The
    // refused allocation leaves the object where it was, so it is found
    // again until the poison is repaired.
    // SAFETY: still inside the buffer.
    let poison = unsafe { (x as *const u8).add(3).read() };
    // SAFETY: as above.
    unsafe { (x as *mut u8).add(3).write(0x42) };
    let e = cache.alloc().unwrap_err();
    assert_eq!((e.kind(), e.addr()), (ErrorKind::Corrupt, Some(x)));
    assert_eq!(cache.stats().in_use, 0);
    assert_eq!(cache.alloc().unwrap_err().addr(), Some(x));
    cache.check().unwrap();
    // SAFETY: as above.
    unsafe { (x as *mut u8).add(3).write(poison) };
    assert_eq!(cache.alloc().unwrap(), x);
    // An overrun into the red zone: found when the object is freed.
    let y = cache.alloc().unwrap();
    // SAFETY: byte 20 is the pad after the object, inside the buffer.
    unsafe { (y as *mut u8).add(20).write(0) };
    let e = cache.free(y).unwrap_err();
    assert_eq!((e.kind(), e.addr()), (ErrorKind::Corrupt, Some(y)));
    // SAFETY: as above; repair the pad and the object goes back fine.
    unsafe { (y as *mut u8).add(20).write(0xbb) };
    cache.free(y).unwrap();
}

#[test]
fn constructors_run_when_objects_leave_the_slabs() {
    static BUILT: AtomicU64 = AtomicU64::new(0);
    static TORN: AtomicU64 = AtomicU64::new(0);
    let ctor = |_obj: u64| {
        BUILT.fetch_add(1, Ordering::Relaxed);
    };
    let dtor = |_obj: u64| {
        TORN.fetch_add(1, Ordering::Relaxed);
    };
    let cpu = FixedCpu::new(0);
    let arena: Arena =
        Arena::create(ArenaConfig::new("a", 1).span(0, 1 << 16).meta(&HeapMeta)).unwrap();
    let cache = ObjectCache::new(
        CacheConfig::new("c", 2, &HeapMeta, &cpu).hooks(Some(&ctor), Some(&dtor)),
        &arena,
    )
    .unwrap();
    let objs: Vec<u64> = (0..5).map(|_| cache.alloc().unwrap()).collect();
    assert_eq!(BUILT.load(Ordering::Relaxed), 5);
    for o in objs {
        cache.free(o).unwrap();
    }
    assert_eq!(
        TORN.load(Ordering::Relaxed),
        0,
        "magazines keep objects constructed"
    );
    let o = cache.alloc().unwrap();
    assert_eq!(
        BUILT.load(Ordering::Relaxed),
        5,
        "a magazine hit constructs nothing"
    );
    cache.free(o).unwrap();
    cache.reap().unwrap();
    assert_eq!(TORN.load(Ordering::Relaxed), 5);
}

#[test]
fn quantum_caches_serve_small_sizes_and_reap_back() {
    let cpu = FixedCpu::new(0);
    let qc = QuantumCaches::new(4096, 4 * 4096, &HeapMeta, &cpu).unwrap();
    let arena: Arena = Arena::create(
        ArenaConfig::new("kmem_va", 4096)
            .span(0x1000_0000, 1 << 28)
            .meta(&HeapMeta)
            .qcache(&qc),
    )
    .unwrap();
    let before = walk(&arena);
    let small: Vec<(u64, u64)> = (0..200)
        .map(|i| (i % 4 + 1) * 4096)
        .map(|s| (arena.alloc(s, Policy::InstantFit).unwrap(), s))
        .collect();
    let big = arena.alloc(5 * 4096, Policy::InstantFit).unwrap();
    let x = arena
        .xalloc(
            4096,
            &vmem_core::Constraints::aligned(1 << 20),
            Policy::InstantFit,
        )
        .unwrap();
    let stats: Vec<u64> = qc.stats().map(|(_, s)| s.in_use).collect();
    assert_eq!(stats, vec![50, 50, 50, 50]);
    assert_eq!(
        qc.stats().next().unwrap().1.slab_size,
        1 << 16,
        "max(2^highbit(3 * 16K), 64)"
    );
    arena.check().unwrap();
    // Bad frees keep their answers through the quantum caches.
    let (a, s) = small[0];
    assert_eq!(
        arena.free(a, s + 4096).unwrap_err().kind(),
        ErrorKind::BadFree
    );
    assert_eq!(arena.xfree(a, s).unwrap_err().kind(), ErrorKind::BadFree);
    assert_eq!(
        arena.free(big + 4096, 4096).unwrap_err().kind(),
        ErrorKind::BadFree
    );
    assert_eq!(arena.destroy().unwrap_err().kind(), ErrorKind::InUse);
    for &(a, s) in &small {
        arena.free(a, s).unwrap();
    }
    assert_eq!(
        arena.free(a, s).unwrap_err().kind(),
        ErrorKind::BadFree,
        "double free"
    );
    arena.free(big, 5 * 4096).unwrap();
    arena.xfree(x, 4096).unwrap();
    arena.check().unwrap();
    assert!(
        arena.size().alloc > 0,
        "slabs and magazines hold space until reaped"
    );
    arena.reap().unwrap();
    assert_eq!(walk(&arena), before);
    arena.check().unwrap();
    arena.destroy().unwrap();
}

#[test]
fn quantum_caches_fall_back_to_the_arena_when_no_slab_fits() {
    let cpu = FixedCpu::new(0);
    let qc = QuantumCaches::new(4096, 16 * 4096, &HeapMeta, &cpu).unwrap();
    // A span smaller than one quantum-cache slab (256 KiB).
    let arena: Arena = Arena::create(
        ArenaConfig::new("small", 4096)
            .span(0x1000, 0x10000)
            .meta(&HeapMeta)
            .qcache(&qc),
    )
    .unwrap();
    let a = arena.alloc(4096, Policy::InstantFit).unwrap();
    assert_eq!(a, 0x1000);
    arena.free(a, 4096).unwrap();
    arena.check().unwrap();
    assert_eq!(arena.size().alloc, 0);
}

#[test]
fn quantum_cache_storage_serves_one_arena_of_its_quantum() {
    let cpu = FixedCpu::new(0);
    let qc = QuantumCaches::new(4096, 8192, &HeapMeta, &cpu).unwrap();
    assert_eq!(
        Arena::<vmem_core::DefaultLock>::create(ArenaConfig::new("q", 512).qcache(&qc))
            .unwrap_err()
            .kind(),
        ErrorKind::BadConstraint
    );
    let _a: Arena = Arena::create(ArenaConfig::new("a", 4096).qcache(&qc)).unwrap();
    assert_eq!(
        Arena::<vmem_core::DefaultLock>::create(ArenaConfig::new("b", 4096).qcache(&qc))
            .unwrap_err()
            .kind(),
        ErrorKind::InUse
    );
    assert_eq!(
        QuantumCaches::new(4096, 17 * 4096, &HeapMeta, &cpu)
            .unwrap_err()
            .kind(),
        ErrorKind::BadConstraint
    );
}

#[test]
fn reserves_hand_out_set_aside_objects_without_the_arena() {
    let cpu = FixedCpu::new(0);
    let arena: Arena =
        Arena::create(ArenaConfig::new("a", 64).span(0, 64 * 64).meta(&HeapMeta)).unwrap();
    let cache = ObjectCache::new(
        CacheConfig::new("c", 64, &HeapMeta, &cpu).magazine(0),
        &arena,
    )
    .unwrap();
    let reserve = Reserve::new(&cache, 4, &HeapMeta).unwrap();
    // Exhaust the cache and arena.
    let mut others = Vec::new();
    while let Ok(o) = cache.alloc() {
        others.push(o);
    }
    assert_eq!(others.len(), 64 - 4);
    let allocs_before = arena.stats().allocs;
    let got: Vec<u64> = (0..4).map(|_| reserve.alloc().unwrap()).collect();
    assert_eq!(
        arena.stats().allocs,
        allocs_before,
        "the arena was not touched"
    );
    assert_eq!(
        reserve.alloc().unwrap_err().kind(),
        ErrorKind::NoSpace,
        "beyond the reserve it fails cleanly"
    );
    reserve.free(got[0]).unwrap();
    assert_eq!(reserve.free(got[0]).unwrap_err().kind(), ErrorKind::BadFree);
    assert_eq!(reserve.available(), 1);
    for o in &got[1..] {
        reserve.free(*o).unwrap();
    }
    drop(reserve);
    for o in others {
        cache.free(o).unwrap();
    }
    cache.reap().unwrap();
    assert_eq!(arena.size().alloc, 0);
    cache.check().unwrap();
}

#[test]
fn size_classes_serve_every_size_and_alignment() {
    let cpu = FixedCpu::new(0);
    let base = buffer(16 << 20);
    let arena: Arena = Arena::create(
        ArenaConfig::new("heap", 4096)
            .span(base, 16 << 20)
            .meta(&HeapMeta),
    )
    .unwrap();
    // SAFETY: the arena hands out addresses inside the leaked buffer.
    let classes = unsafe { SizeClasses::new(&arena, &HeapMeta, &cpu, false) }.unwrap();
    let mut live = Vec::new();
    for (i, size) in [1u64, 7, 8, 9, 24, 100, 500, 4000, 5000, 8192, 9000, 100_000]
        .into_iter()
        .enumerate()
    {
        for align in [1u64, 8, 64, 4096, 1 << 16] {
            let a = classes.alloc(size, align).unwrap();
            assert_eq!(a % align, 0, "size {size} align {align}");
            // SAFETY: the block is `size` bytes of the buffer.
            unsafe { std::ptr::write_bytes(a as *mut u8, i as u8, size as usize) };
            live.push((a, size, align, i as u8));
        }
    }
    for &(a, size, _, fill) in &live {
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(a as *const u8, size as usize) };
        assert!(bytes.iter().all(|&b| b == fill), "blocks do not overlap");
    }
    for (a, size, align, _) in live {
        classes.free(a, size, align).unwrap();
    }
    classes.check().unwrap();
    classes.reap().unwrap();
    assert_eq!(arena.size().alloc, 0);
    assert_eq!(classes.alloc(0, 8).unwrap_err().kind(), ErrorKind::ZeroSize);
    assert_eq!(
        classes.alloc(8, 3).unwrap_err().kind(),
        ErrorKind::BadConstraint
    );
}

#[test]
fn size_classes_import_large_blocks_through_an_importing_arena() {
    let cpu = FixedCpu::new(0);
    let base = buffer(4 << 20);
    let va: Arena = Arena::create(
        ArenaConfig::new("va", 4096)
            .span(base, 4 << 20)
            .meta(&HeapMeta),
    )
    .unwrap();
    let heap: Arena = Arena::create(
        ArenaConfig::new("heap", 4096)
            .source(&va, 64 << 10)
            .meta(&HeapMeta),
    )
    .unwrap();
    // SAFETY: the arenas hand out addresses inside the leaked buffer.
    let classes = unsafe { SizeClasses::new(&heap, &HeapMeta, &cpu, false) }.unwrap();
    let big = classes.alloc(100_000, 8).unwrap();
    // Strict alignment goes through xalloc, which imports an aligned span.
    let aligned = classes.alloc(9000, 1 << 16).unwrap();
    assert_eq!(aligned % (1 << 16), 0);
    assert!(heap.stats().imports >= 2);
    classes.free(aligned, 9000, 1 << 16).unwrap();
    classes.free(big, 100_000, 8).unwrap();
    classes.reap().unwrap();
    assert_eq!((heap.size().total, va.size().alloc), (0, 0));
}
