//! One CPU slot's counters ([`ObjectCache::cpu_stats`]): each CPU counts
//! its own hits, misses and depot exchanges, on the locked path
//! ([`FixedCpu`]) and on the fast path ([`ThreadCpus`]); the slots add up
//! to the cache's figures; an index past the slots is refused.

use std::sync::Barrier;
use std::thread;

use vmem_core::{
    Arena, CacheConfig, CacheStats, CpuGuard, CpuStats, ErrorKind, FixedCpu, HeapMeta, MAX_CPUS,
    ObjectCache, ThreadCpus,
};

fn arena() -> &'static Arena<'static> {
    vmem_testkit::leaked_arena("objs", 64, 0x10_0000, 1 << 20)
}

/// Every slot's counters added up.
fn sum(cache: &ObjectCache<'_>) -> CpuStats {
    let mut all = CpuStats::default();
    for cpu in 0..MAX_CPUS {
        all += cache.cpu_stats(cpu).unwrap();
    }
    all
}

/// The slots' sum is what the cache counts for all CPUs.
fn agrees(all: CpuStats, s: CacheStats) {
    assert_eq!(
        (
            all.alloc_hits,
            all.alloc_misses,
            all.free_hits,
            all.free_misses
        ),
        (
            s.magazine_hits,
            s.magazine_misses,
            s.free_magazine_hits,
            s.free_magazine_misses
        ),
        "{all:?} {s:?}"
    );
}

#[test]
fn each_fixed_cpu_counts_its_own_calls() {
    let cpu: &'static FixedCpu = Box::leak(Box::new(FixedCpu::new(1)));
    let config = CacheConfig::new("locked", 64, &HeapMeta, cpu).magazine(3);
    let cache = ObjectCache::new(config, arena()).unwrap();
    let objs: Vec<u64> = (0..5).map(|_| cache.alloc().unwrap()).collect();
    for &obj in &objs {
        cache.free(obj).unwrap();
    }
    cpu.set(2);
    let two: Vec<u64> = (0..2).map(|_| cache.alloc().unwrap()).collect();
    let one = cache.cpu_stats(1).unwrap();
    let other = cache.cpu_stats(2).unwrap();
    assert_eq!(one.alloc_hits + one.alloc_misses, 5, "{one:?}");
    assert_eq!(one.free_hits + one.free_misses, 5, "{one:?}");
    // CPU 1's frees found no magazine of their own: the first came from
    // the depot.
    assert!(one.free_hits > 0 && one.depot_exchanges > 0, "{one:?}");
    assert_eq!(other.alloc_hits + other.alloc_misses, 2, "{other:?}");
    assert_eq!((other.free_hits, other.free_misses), (0, 0), "{other:?}");
    assert_eq!(cache.cpu_stats(0).unwrap(), CpuStats::default());
    agrees(sum(&cache), cache.stats());
    for obj in two {
        cache.free(obj).unwrap();
    }
    assert_eq!(
        cache.cpu_stats(2).unwrap().free_hits + cache.cpu_stats(2).unwrap().free_misses,
        2
    );
    assert_eq!(
        cache.cpu_stats(1).unwrap(),
        one,
        "CPU 2's frees are not CPU 1's"
    );
    agrees(sum(&cache), cache.stats());
    cache.check().unwrap();
}

#[test]
fn an_index_past_the_slots_is_refused() {
    let cpu: &'static FixedCpu = Box::leak(Box::new(FixedCpu::new(0)));
    let cache = ObjectCache::new(CacheConfig::new("c", 64, &HeapMeta, cpu), arena()).unwrap();
    let x = cache.alloc().unwrap();
    cache.free(x).unwrap();
    assert!(cache.cpu_stats(MAX_CPUS - 1).is_ok());
    for cpu in [MAX_CPUS, MAX_CPUS + 1, usize::MAX] {
        let e = cache.cpu_stats(cpu).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadConstraint, "{cpu}");
    }
    cache.check().unwrap();
}

#[test]
fn held_cpus_count_their_misses_and_exchanges_apart() {
    let cpus = ThreadCpus::leak();
    let cache: &'static ObjectCache<'static> = Box::leak(Box::new(
        ObjectCache::new(
            CacheConfig::new("held", 64, &HeapMeta, cpus)
                .local(cpus)
                .magazine(3),
            arena(),
        )
        .unwrap(),
    ));
    // Each thread allocates `n` objects, frees them, and again, says
    // which CPU it held, and waits for the other (so both hold a slot at
    // once, and not the same one).
    let both = Barrier::new(2);
    let run = |n: usize| {
        for _ in 0..2 {
            let objs: Vec<u64> = (0..n).map(|_| cache.alloc_local(cpus).unwrap()).collect();
            for obj in objs {
                cache.free_local(cpus, obj).unwrap();
            }
        }
        let index = CpuGuard::enter(cpus).map(|g| g.index());
        both.wait();
        index.unwrap()
    };
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| run(4));
        let b = s.spawn(|| run(10));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a, b);
    let (sa, sb) = (cache.cpu_stats(a).unwrap(), cache.cpu_stats(b).unwrap());
    assert_eq!(sa.alloc_hits + sa.alloc_misses, 8, "{sa:?}");
    assert_eq!(sa.free_hits + sa.free_misses, 8, "{sa:?}");
    assert_eq!(sb.alloc_hits + sb.alloc_misses, 20, "{sb:?}");
    assert_eq!(sb.free_hits + sb.free_misses, 20, "{sb:?}");
    // Ten objects in 3-round magazines: the second thread missed, and
    // traded with the depot; its counts are its own.
    assert!(sb.alloc_misses > 0 && sb.depot_exchanges > 0, "{sb:?}");
    agrees(sum(cache), cache.stats());
    cache.check().unwrap();
}
