//! The magazine layer's fast path ([`ObjectCache::alloc_local`]) on the
//! host's [`ThreadCpus`]: hits counted, misses through the depot, another
//! thread's reap asked of a slot's owner and answered, a thread's slot and
//! objects given back when it exits, threads beyond the slots on the
//! locked path, and misuse refused with the cache still consistent.

use std::sync::mpsc;
use std::thread;

use std::alloc::GlobalAlloc;

use vmem_core::{
    Arena, ArenaConfig, CacheConfig, CpuGuard, ErrorKind, GlobalHeap, HeapMeta, MAX_CPUS,
    ObjectCache, SizeClasses, ThreadCpus,
};

/// A cache of 64-integer objects with `rounds`-round magazines on `cpus`.
fn cache(
    arena: &'static Arena<'static>,
    cpus: &'static ThreadCpus,
    rounds: u32,
    debug: bool,
) -> ObjectCache<'static> {
    let config = CacheConfig::new("fast", 64, &HeapMeta, cpus)
        .local(cpus)
        .magazine(rounds)
        .debug(debug);
    ObjectCache::new(config, arena).unwrap()
}

fn arena() -> &'static Arena<'static> {
    vmem_testkit::leaked_arena("objs", 64, 0x10_0000, 1 << 20)
}

/// Magazines in the CPU slots: those the cache owns less the depot's.
fn in_slots(cache: &ObjectCache<'_>) -> u64 {
    let s = cache.stats();
    s.magazines - s.depot_full - s.depot_empty
}

#[test]
fn hits_are_counted_and_misses_trade_with_the_depot() {
    let cpus = ThreadCpus::leak();
    let cache = cache(arena(), cpus, 3, false);
    let objs: Vec<u64> = (0..8).map(|_| cache.alloc_local(cpus).unwrap()).collect();
    let s = cache.stats();
    assert_eq!((s.magazine_hits, s.magazine_misses), (0, 8), "{s:?}");
    for &obj in &objs {
        cache.free_local(cpus, obj).unwrap();
    }
    let s = cache.stats();
    assert_eq!(s.free_magazine_hits + s.free_magazine_misses, 8);
    assert!(s.free_magazine_hits >= 3, "{s:?}");
    assert_eq!(cpus.claimed(), 1, "this thread claimed one slot");
    cache.check().unwrap();
    // The round trip stocked the depot; now pairs are hits.
    let before = cache.stats();
    for _ in 0..100 {
        let x = cache.alloc_local(cpus).unwrap();
        cache.free_local(cpus, x).unwrap();
    }
    let s = cache.stats();
    assert_eq!(s.magazine_hits - before.magazine_hits, 100, "{s:?}");
    assert_eq!(s.free_magazine_hits - before.free_magazine_hits, 100);
    assert_eq!(s.slabs_created, before.slabs_created);
    // Enough allocations to empty both held magazines go on to the
    // depot's full ones, then to the slabs.
    let many: Vec<u64> = (0..20).map(|_| cache.alloc_local(cpus).unwrap()).collect();
    let s = cache.stats();
    assert!(s.magazine_misses > before.magazine_misses, "{s:?}");
    assert_eq!(s.depot_full, 0, "{s:?}");
    assert_eq!(s.in_use, 20);
    cache.check().unwrap();
    for obj in many {
        cache.free_local(cpus, obj).unwrap();
    }
    cache.check().unwrap();
    assert_eq!(cache.stats().in_use, 0);
    // This thread's own held magazines go back at once on its reap.
    cache.reap().unwrap();
    let s = cache.stats();
    assert_eq!((s.slabs, s.magazines, s.meta_pages), (0, 0, 0), "{s:?}");
    cache.check().unwrap();
}

#[test]
fn a_reap_from_another_thread_is_asked_of_the_owner_and_answered() {
    let cpus = ThreadCpus::leak();
    let cache: &'static ObjectCache<'static> = Box::leak(Box::new(cache(arena(), cpus, 3, true)));
    let (ready_tx, ready) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        let objs: Vec<u64> = (0..6).map(|_| cache.alloc_local(cpus).unwrap()).collect();
        for obj in objs {
            cache.free_local(cpus, obj).unwrap();
        }
        ready_tx.send(in_slots(cache)).unwrap();
        go_rx.recv().unwrap();
        // The request is pending: the next hit does not see it ...
        let x = cache.alloc_local(cpus).unwrap();
        assert!(in_slots(cache) > 0, "a hit answers nothing");
        // ... the hook answers it.
        let guard = CpuGuard::enter(cpus).unwrap();
        cache.honour(&guard);
        drop(guard);
        let after_honour = in_slots(cache);
        cache.free_local(cpus, x).unwrap();
        ready_tx.send(after_honour).unwrap();
        go_rx.recv().unwrap();
    });
    let held = ready.recv().unwrap();
    assert!(held > 0, "the owner holds magazines");
    cache.reap().unwrap();
    let s = cache.stats();
    assert!(
        s.slabs > 0,
        "the owner's objects stay until it answers: {s:?}"
    );
    assert_eq!(
        in_slots(cache),
        held,
        "the reap left the owner's slot alone"
    );
    cache.check().unwrap();
    go.send(()).unwrap();
    assert_eq!(ready.recv().unwrap(), 0, "honour drained the owner's slot");
    go.send(()).unwrap();
    owner.join().unwrap();
    cache.check().unwrap();
    assert_eq!(cache.stats().in_use, 0);
}

#[test]
fn the_owners_next_slow_path_answers_a_request() {
    let cpus = ThreadCpus::leak();
    let cache: &'static ObjectCache<'static> = Box::leak(Box::new(cache(arena(), cpus, 1, false)));
    let (ready_tx, ready) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let owner = thread::spawn(move || {
        let (a, b) = (
            cache.alloc_local(cpus).unwrap(),
            cache.alloc_local(cpus).unwrap(),
        );
        cache.free_local(cpus, a).unwrap();
        cache.free_local(cpus, b).unwrap();
        ready_tx.send(in_slots(cache)).unwrap();
        go_rx.recv().unwrap();
        // A hit, then a miss: the miss answers the request first.
        let x = cache.alloc_local(cpus).unwrap();
        let y = cache.alloc_local(cpus).unwrap();
        ready_tx.send(in_slots(cache)).unwrap();
        go_rx.recv().unwrap();
        (x, y)
    });
    assert_eq!(ready.recv().unwrap(), 1, "one magazine held, with a round");
    cache.reap().unwrap();
    go.send(()).unwrap();
    assert_eq!(ready.recv().unwrap(), 0, "the miss drained the held slot");
    go.send(()).unwrap();
    let (x, y) = owner.join().unwrap();
    cache.free(x).unwrap();
    cache.free(y).unwrap();
    cache.check().unwrap();
}

#[test]
fn a_thread_that_exits_gives_back_its_slot_and_its_objects() {
    let cpus = ThreadCpus::leak();
    let cache: &'static ObjectCache<'static> = Box::leak(Box::new(cache(arena(), cpus, 7, true)));
    // Joined one by one: a join waits for the thread's thread-local
    // destructors, where the end of a `thread::scope` does not.
    let threads: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || {
                let objs: Vec<u64> = (0..20).map(|_| cache.alloc_local(cpus).unwrap()).collect();
                for obj in objs {
                    cache.free_local(cpus, obj).unwrap();
                }
                assert!(in_slots(cache) > 0);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(cpus.claimed(), 0, "both threads let their slots go");
    // A thread may also let go before it exits.
    thread::spawn(move || {
        let x = cache.alloc_local(cpus).unwrap();
        cache.free_local(cpus, x).unwrap();
        assert_eq!(cpus.claimed(), 1);
        cpus.let_go();
        assert_eq!(cpus.claimed(), 0);
    })
    .join()
    .unwrap();
    let s = cache.stats();
    assert_eq!((s.in_use, s.allocs, s.frees), (0, 41, 41), "{s:?}");
    assert!(in_slots(cache) > 0, "their magazines stay in their slots");
    // Nobody holds those slots now: the check sees them whole, and the
    // reap drains them.
    let s = cache.stats();
    assert_eq!(s.slabs_destroyed, 0, "{s:?}");
    cache.check().unwrap();
    cache.reap().unwrap();
    let s = cache.stats();
    assert_eq!((s.slabs, s.magazines, s.meta_pages), (0, 0, 0), "{s:?}");
    cache.check().unwrap();
}

#[test]
fn threads_beyond_the_slots_take_the_locked_path() {
    let cpus = ThreadCpus::leak();
    let cache = cache(arena(), cpus, 3, false);
    // Another context holds every slot.
    let guards: Vec<_> = (0..MAX_CPUS)
        .map(|i| CpuGuard::enter_idle(cpus, i).unwrap())
        .collect();
    assert!(
        CpuGuard::enter_idle(cpus, 0).is_none(),
        "a slot has one holder"
    );
    assert!(CpuGuard::enter_idle(cpus, MAX_CPUS).is_none());
    thread::scope(|s| {
        s.spawn(|| {
            let g = CpuGuard::enter(cpus);
            assert!(g.is_none(), "no slot left: {g:?} {}", cpus.claimed());
            for _ in 0..10 {
                let x = cache.alloc_local(cpus).unwrap();
                cache.free_local(cpus, x).unwrap();
            }
        });
    });
    let s = cache.stats();
    assert_eq!((s.allocs, s.frees, s.in_use), (10, 10, 0), "{s:?}");
    assert!(s.magazine_hits > 0, "the locked magazines served: {s:?}");
    drop(guards);
    assert_eq!(cpus.claimed(), 0);
    cache.check().unwrap();
    cache.reap().unwrap();
    assert_eq!(cache.stats().magazines, 0);
}

#[test]
fn misuse_is_refused_and_the_cache_stays_consistent() {
    let cpus = ThreadCpus::leak();
    let other = ThreadCpus::leak();
    let cache = cache(arena(), cpus, 3, true);
    let x = cache.alloc_local(cpus).unwrap();
    cache.free_local(cpus, x).unwrap();
    assert_eq!(
        cache.free_local(cpus, x).unwrap_err().kind(),
        ErrorKind::BadFree,
        "double free"
    );
    assert_eq!(
        cache.free_local(cpus, 0x10).unwrap_err().kind(),
        ErrorKind::BadFree,
        "not this cache's object"
    );
    cache.check().unwrap();
    // A platform the cache was not made with: the locked path.
    let before = cache.stats();
    let y = cache.alloc_local(other).unwrap();
    cache.free_local(other, y).unwrap();
    assert_eq!(cache.stats().allocs, before.allocs + 1);
    // A nested call (this thread already holds its CPU): the locked path.
    let guard = CpuGuard::enter(cpus).unwrap();
    assert!(CpuGuard::enter(cpus).is_none(), "no nested hold");
    let z = cache.alloc_local(cpus).unwrap();
    cache.free_local(cpus, z).unwrap();
    // The checker and the reap from inside a hold: the held part is this
    // context's, so nothing is left out.
    cache.check().unwrap();
    drop(guard);
    // A cache made without a platform takes the locked path throughout.
    let plain = ObjectCache::new(
        CacheConfig::new("plain", 64, &HeapMeta, cpus).debug(true),
        arena(),
    )
    .unwrap();
    let w = plain.alloc_local(cpus).unwrap();
    plain.free_local(cpus, w).unwrap();
    plain.check().unwrap();
    assert_eq!(plain.stats().in_use, 0);
    cache.reap().unwrap();
    cache.check().unwrap();
    assert_eq!(cache.stats().in_use, 0);
}

/// Size classes made `with_local` the host platform, over a memory arena
/// of 1 MiB of leaked host memory.
fn new_classes(cpus: &'static ThreadCpus) -> SizeClasses<'static> {
    let memory = vmem_testkit::buffer(1 << 20);
    let arena: &'static Arena<'static> = Box::leak(Box::new(
        Arena::create(
            ArenaConfig::new("heap", 4096)
                .span(memory, 1 << 20)
                .meta(&HeapMeta),
        )
        .unwrap(),
    ));
    // SAFETY: the arena's integers are addresses of a leaked host buffer
    // nothing else uses.
    unsafe { SizeClasses::with_local(arena, &HeapMeta, cpus, cpus, false) }.unwrap()
}

fn classes(cpus: &'static ThreadCpus) -> &'static SizeClasses<'static> {
    Box::leak(Box::new(new_classes(cpus)))
}

#[test]
fn size_classes_take_the_fast_path_and_answer_a_reap_from_another_thread() {
    let cpus = ThreadCpus::leak();
    let classes = classes(cpus);
    let class64 = &classes.caches()[5];
    assert_eq!(class64.object_size(), 64);
    // Warm the held magazines, then pairs are held hits.
    let warm: Vec<u64> = (0..40)
        .map(|_| classes.alloc_local(cpus, 64, 8).unwrap())
        .collect();
    for &a in &warm {
        classes.free_local(cpus, a, 64, 8).unwrap();
    }
    let before = class64.cpu_stats(0).unwrap();
    for _ in 0..100 {
        let a = classes.alloc_local(cpus, 60, 8).unwrap();
        // SAFETY: 60 bytes of the leaked buffer, ours until freed.
        unsafe { (a as usize as *mut u8).write_bytes(0xa5, 60) };
        classes.free_local(cpus, a, 60, 8).unwrap();
    }
    let after = class64.cpu_stats(0).unwrap();
    assert_eq!(after.alloc_hits - before.alloc_hits, 100, "{after:?}");
    assert_eq!(after.free_hits - before.free_hits, 100, "{after:?}");
    // Blocks above the largest class and bad requests go where `alloc` sends them.
    let big = classes.alloc_local(cpus, 3 * 4096, 8).unwrap();
    classes.free_local(cpus, big, 3 * 4096, 8).unwrap();
    assert_eq!(
        classes.alloc_local(cpus, 0, 8).unwrap_err().kind(),
        ErrorKind::ZeroSize
    );
    assert_eq!(
        classes.free_local(cpus, warm[0], 64, 3).unwrap_err().kind(),
        ErrorKind::BadConstraint
    );
    // A reap from another thread is asked of this one, which answers.
    let held = in_slots(class64);
    assert!(held > 0);
    thread::scope(|s| {
        s.spawn(|| classes.reap().unwrap());
    });
    assert_eq!(in_slots(class64), held, "the reap asked, it did not take");
    let guard = CpuGuard::enter(cpus).unwrap();
    classes.honour(&guard);
    drop(guard);
    assert_eq!(
        in_slots(class64),
        0,
        "honour gave back every class's held magazines"
    );
    classes.reap().unwrap();
    classes.check().unwrap();
    assert!(classes.caches().iter().all(|c| c.stats().slabs == 0));
}

#[test]
fn a_global_heap_with_a_platform_serves_from_the_held_magazines() {
    static CPUS: std::sync::OnceLock<&'static ThreadCpus> = std::sync::OnceLock::new();
    fn init() -> Option<SizeClasses<'static>> {
        Some(new_classes(*CPUS.get()?))
    }
    let cpus = *CPUS.get_or_init(ThreadCpus::leak);
    let heap: &'static GlobalHeap<vmem_core::DefaultLock, ThreadCpus> =
        Box::leak(Box::new(GlobalHeap::with_local(init, cpus)));
    let layout = std::alloc::Layout::from_size_align(48, 8).unwrap();
    // SAFETY: layouts of non-zero size, each pointer freed once with its layout.
    unsafe {
        for _ in 0..50 {
            let p = heap.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(7, 48);
            heap.dealloc(p, layout);
        }
    }
    let class48 = &heap.classes().unwrap().caches()[4];
    assert_eq!(class48.object_size(), 48);
    let s = class48.cpu_stats(0).unwrap();
    assert!(s.alloc_hits >= 48 && s.free_hits >= 48, "{s:?}");
    assert_eq!(class48.stats().in_use, 0);
}
