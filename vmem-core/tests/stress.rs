//! Host stress: several threads, each its own CPU, allocating and freeing
//! across object caches in memory mode over a real host buffer, writing and
//! verifying a pattern in every object, freeing many objects on another CPU
//! than the one they came from; and a quantum-cached arena shared the same
//! way. The checker runs at the end, and after a reap every arena is back
//! to where it started.
//!
//! `VMEM_STRESS_ROUNDS` sets the rounds per thread (default 20,000).
//!
//! The arena-tree run has many threads on a tree of arenas whose metadata
//! comes from an arena too, for a set time: `VMEM_STRESS_SECS` (default 3)
//! and `VMEM_STRESS_THREADS` (default 8). The long run:
//!
//! ```sh
//! VMEM_STRESS_SECS=60 VMEM_STRESS_THREADS=16 cargo test -p vmem-core --release \
//!     --test stress arena_tree -- --nocapture
//! ```

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use vmem_core::{
    Arena, ArenaConfig, ArenaMeta, CacheConfig, Constraints, CpuId, ErrorKind, HeapMeta,
    ObjectCache, Policy, QuantumCaches, Segment,
};
use vmem_testkit::walk;

thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// The CPU index each test thread sets for itself.
struct ThreadCpu;

impl CpuId for ThreadCpu {
    fn current(&self) -> usize {
        CPU.with(Cell::get)
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn rounds() -> u64 {
    std::env::var("VMEM_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn pattern(addr: u64, size: u64) -> impl Iterator<Item = (u64, u8)> {
    (0..size).map(move |i| (addr + i, (addr.wrapping_mul(31) ^ i) as u8))
}

fn fill(addr: u64, size: u64) {
    for (a, b) in pattern(addr, size) {
        // SAFETY: the object is `size` bytes of the test's buffer, held by this thread.
        unsafe { (a as *mut u8).write(b) };
    }
}

fn verify(addr: u64, size: u64) {
    for (a, b) in pattern(addr, size) {
        // SAFETY: as in `fill`.
        let got = unsafe { (a as *const u8).read() };
        assert_eq!(
            got,
            b,
            "object at {addr:#x} was overwritten at byte {}",
            a - addr
        );
    }
}

#[test]
fn threads_share_memory_mode_caches() {
    const BYTES: usize = 64 << 20;
    let layout = Layout::from_size_align(BYTES, 4096).unwrap();
    // SAFETY: non-zero size; leaked for the life of the test.
    let base = unsafe { alloc_zeroed(layout) } as u64;
    let arena: Arena = Arena::create(
        ArenaConfig::new("heap", 4096)
            .span(base, BYTES as u64)
            .meta(&HeapMeta),
    )
    .unwrap();
    let before = walk(&arena);
    let cpu = ThreadCpu;
    let caches: Vec<ObjectCache> = [16u64, 64, 200, 1000, 4096]
        .iter()
        .map(|&size| {
            // SAFETY: the arena hands out addresses inside the leaked buffer.
            let config =
                unsafe { CacheConfig::new("obj", size, &HeapMeta, &cpu).memory() }.magazine(7);
            ObjectCache::new(config, &arena).unwrap()
        })
        .collect();
    // Objects handed between threads: (cache index, address).
    let exchange: Mutex<Vec<(usize, u64)>> = Mutex::new(Vec::new());
    let threads = 4;
    thread::scope(|s| {
        for t in 0..threads {
            let (caches, exchange) = (&caches, &exchange);
            s.spawn(move || {
                CPU.with(|c| c.set(t));
                let mut rng = Rng(0x9e37_79b9 + t as u64);
                let mut mine: Vec<(usize, u64)> = Vec::new();
                for _ in 0..rounds() {
                    match rng.below(10) {
                        0..=4 => {
                            let which = rng.below(caches.len() as u64) as usize;
                            let cache = &caches[which];
                            let addr = cache.alloc().unwrap();
                            fill(addr, cache.object_size());
                            mine.push((which, addr));
                        }
                        5 if !mine.is_empty() => {
                            // Hand one to another thread.
                            let obj = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            exchange.lock().unwrap().push(obj);
                        }
                        6 => {
                            let taken = exchange.lock().unwrap().pop();
                            if let Some((which, addr)) = taken {
                                verify(addr, caches[which].object_size());
                                caches[which].free(addr).unwrap();
                            }
                        }
                        _ if !mine.is_empty() => {
                            let (which, addr) =
                                mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            verify(addr, caches[which].object_size());
                            caches[which].free(addr).unwrap();
                        }
                        _ => {}
                    }
                }
                for (which, addr) in mine {
                    verify(addr, caches[which].object_size());
                    caches[which].free(addr).unwrap();
                }
            });
        }
    });
    for (which, addr) in exchange.into_inner().unwrap() {
        verify(addr, caches[which].object_size());
        caches[which].free(addr).unwrap();
    }
    for cache in &caches {
        cache.check().unwrap();
        let s = cache.stats();
        assert_eq!(s.in_use, 0);
        assert!(s.magazine_hits > 0 && s.free_magazine_hits > 0, "{s:?}");
        cache.reap().unwrap();
        cache.check().unwrap();
    }
    arena.check().unwrap();
    assert_eq!(walk(&arena), before, "nothing leaked");
}

#[test]
fn threads_share_a_quantum_cached_arena() {
    let cpu = ThreadCpu;
    let qc = QuantumCaches::new(4096, 8 * 4096, &HeapMeta, &cpu).unwrap();
    let va: Arena = Arena::create(
        ArenaConfig::new("va", 4096)
            .span(0x100_0000_0000, 1 << 34)
            .meta(&HeapMeta),
    )
    .unwrap();
    let kmem_va: Arena = Arena::create(
        ArenaConfig::new("kmem_va", 4096)
            .source(&va, 1 << 22)
            .meta(&HeapMeta)
            .qcache(&qc),
    )
    .unwrap();
    let exchange: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..4 {
            let (arena, exchange) = (&kmem_va, &exchange);
            s.spawn(move || {
                CPU.with(|c| c.set(t));
                let mut rng = Rng(7 + t as u64);
                let mut mine = Vec::new();
                for _ in 0..rounds() {
                    if rng.below(2) == 0 || mine.is_empty() {
                        let size = 4096 * (1 + rng.below(12));
                        mine.push((arena.alloc(size, Policy::InstantFit).unwrap(), size));
                    } else {
                        let obj = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                        if rng.below(3) == 0 {
                            exchange.lock().unwrap().push(obj);
                        } else {
                            arena.free(obj.0, obj.1).unwrap();
                        }
                    }
                    if rng.below(8) == 0 {
                        let taken = exchange.lock().unwrap().pop();
                        if let Some((a, s)) = taken {
                            arena.free(a, s).unwrap();
                        }
                    }
                }
                for (a, s) in mine {
                    arena.free(a, s).unwrap();
                }
            });
        }
    });
    for (a, s) in exchange.into_inner().unwrap() {
        kmem_va.free(a, s).unwrap();
    }
    kmem_va.check().unwrap();
    kmem_va.reap().unwrap();
    kmem_va.check().unwrap();
    assert_eq!(kmem_va.size().total, 0, "every imported span went back");
    assert_eq!(va.size().alloc, 0);
    va.check().unwrap();
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a thread holds, and how it goes back.
#[derive(Clone, Copy, Debug)]
enum Owner {
    /// An object of cache `caches[i]`.
    Object(usize),
    /// From `alloc` of arena `arenas[i]`.
    Alloc(usize),
    /// From `xalloc` of arena `arenas[i]`.
    Xalloc(usize),
}

/// A live allocation and the stamp of the pattern written into it.
#[derive(Clone, Copy, Debug)]
struct Live {
    owner: Owner,
    addr: u64,
    size: u64,
    stamp: u64,
}

/// The words of `[addr, addr + size)` a pattern covers: all of small ranges,
/// one in 64 (and the last) of large ones.
fn stamped_words(addr: u64, size: u64) -> impl Iterator<Item = u64> {
    let words = size / 8;
    let step = if size <= 4096 { 1 } else { 64 };
    (0..words)
        .step_by(step)
        .chain((words > 0 && !(words - 1).is_multiple_of(step as u64)).then(|| words - 1))
        .map(move |w| addr + 8 * w)
}

fn stamp_word(stamp: u64, at: u64) -> u64 {
    (stamp ^ at).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn stamp(live: &Live) {
    for at in stamped_words(live.addr, live.size) {
        // SAFETY: the range is in the test's buffer and held by this thread.
        unsafe { (at as *mut u64).write(stamp_word(live.stamp, at)) };
    }
}

fn check_stamp(live: &Live) {
    for at in stamped_words(live.addr, live.size) {
        // SAFETY: as in `stamp`.
        let got = unsafe { (at as *const u64).read() };
        assert_eq!(
            got,
            stamp_word(live.stamp, at),
            "{live:?} was overwritten at {at:#x}: handed out twice?"
        );
    }
}

/// Operations one thread did, by kind.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    allocs: u64,
    xallocs: u64,
    frees: u64,
    cross_frees: u64,
    reaps: u64,
    checks: u64,
    refused: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.allocs += o.allocs;
        self.xallocs += o.xallocs;
        self.frees += o.frees;
        self.cross_frees += o.cross_frees;
        self.reaps += o.reaps;
        self.checks += o.checks;
        self.refused += o.refused;
    }

    fn ops(&self) -> u64 {
        self.allocs + self.xallocs + self.frees + self.cross_frees + self.reaps + self.checks
    }
}

/// Out of space is a fair answer under load; anything else is a bug.
fn refused(e: vmem_core::Error) {
    assert!(
        matches!(e.kind(), ErrorKind::NoSpace | ErrorKind::ImportFailed),
        "{e:?}"
    );
}

/// Many threads on a tree of arenas over a host buffer: `phys` (pages)
/// feeds `heap` (pages, quantum-cached), which feeds `bytes` (16-byte
/// quantum); memory-mode object caches sit on `heap` and `bytes`; every
/// arena and cache takes its metadata from a `meta` arena. Threads
/// allocate, `xalloc` with constraints, write and verify patterns, free
/// their own and each other's allocations, reap caches, and check `phys`
/// and `bytes` while the others run. At the end every checker passes,
/// every arena is as it started, and once the caches and arenas are gone
/// the `meta` arena is too.
#[test]
fn arena_tree_under_many_threads() {
    const PAGE: u64 = 4096;
    const PHYS: usize = 128 << 20;
    const META: usize = 32 << 20;
    const HELD_MAX: usize = 256;
    let secs = env_or("VMEM_STRESS_SECS", 3);
    let threads = env_or("VMEM_STRESS_THREADS", 8) as usize;
    assert!(threads <= vmem_core::MAX_CPUS, "one CPU slot per thread");
    let layout = Layout::from_size_align(PHYS + META, PAGE as usize).unwrap();
    // SAFETY: non-zero size; freed at the end, after every arena is gone.
    let buffer = unsafe { alloc_zeroed(layout) };
    assert!(!buffer.is_null());
    let base = buffer as u64;

    let meta_arena: Arena = Arena::create(
        ArenaConfig::new("meta", PAGE)
            .span(base + PHYS as u64, META as u64)
            .meta(&HeapMeta),
    )
    .unwrap();
    let meta_start = walk(&meta_arena);
    // SAFETY: `meta_arena` hands out addresses inside the buffer, unused otherwise.
    let meta = unsafe { ArenaMeta::new(&meta_arena) };
    let cpu = ThreadCpu;
    let qc = QuantumCaches::new(PAGE, 4 * PAGE, &meta, &cpu).unwrap();
    let phys: Arena = Arena::create(
        ArenaConfig::new("phys", PAGE)
            .span(base, PHYS as u64)
            .meta(&meta),
    )
    .unwrap();
    let heap: Arena = Arena::create(
        ArenaConfig::new("heap", PAGE)
            .source(&phys, 64 * PAGE)
            .meta(&meta)
            .qcache(&qc),
    )
    .unwrap();
    let bytes: Arena = Arena::create(
        ArenaConfig::new("bytes", 16)
            .source(&heap, 16 * PAGE)
            .meta(&meta),
    )
    .unwrap();
    let arenas = [&phys, &heap, &bytes];
    let starts: Vec<Vec<Segment>> = arenas.iter().map(|a| walk(a)).collect();
    // (size, over heap?, magazine rounds, debug)
    let kinds = [
        (24, false, 1, true),
        (64, false, 3, false),
        (200, false, 7, true),
        (1000, true, 15, false),
        (4096, true, 1, true),
    ];
    let caches: Vec<ObjectCache> = kinds
        .iter()
        .map(|&(size, over_heap, rounds, debug)| {
            // SAFETY: `heap` and `bytes` hand out addresses inside the buffer.
            let config = unsafe { CacheConfig::new("obj", size, &meta, &cpu).memory() }
                .magazine(rounds)
                .debug(debug);
            ObjectCache::new(config, if over_heap { &heap } else { &bytes }).unwrap()
        })
        .collect();

    let exchange: Mutex<Vec<Live>> = Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let free = |live: Live| {
        check_stamp(&live);
        match live.owner {
            Owner::Object(i) => caches[i].free(live.addr).unwrap(),
            Owner::Alloc(i) => arenas[i].free(live.addr, live.size).unwrap(),
            Owner::Xalloc(i) => arenas[i].xfree(live.addr, live.size).unwrap(),
        }
    };
    let started = Instant::now();
    let mut total = Tally::default();
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (caches, exchange, free) = (&caches, &exchange, &free);
                let (arenas, heap) = (&arenas, &heap);
                s.spawn(move || {
                    CPU.with(|c| c.set(t));
                    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (t as u64 + 1) << 32);
                    let mut tally = Tally::default();
                    let mut mine: Vec<Live> = Vec::new();
                    let mut seq = 0u64;
                    let mut keep = |owner, addr, size, mine: &mut Vec<Live>| {
                        seq += 1;
                        let live = Live {
                            owner,
                            addr,
                            size,
                            stamp: (t as u64) << 48 | seq,
                        };
                        stamp(&live);
                        mine.push(live);
                    };
                    for round in 0u64.. {
                        if round % 64 == 0 && Instant::now() >= deadline {
                            break;
                        }
                        // A thread holding its most frees one of its own.
                        let pick = if mine.len() >= HELD_MAX {
                            52
                        } else {
                            rng.below(100)
                        };
                        match pick {
                            0..30 => {
                                let i = rng.below(caches.len() as u64) as usize;
                                match caches[i].alloc() {
                                    Ok(addr) => {
                                        let size = caches[i].object_size();
                                        keep(Owner::Object(i), addr, size, &mut mine);
                                        tally.allocs += 1;
                                    }
                                    Err(e) => {
                                        refused(e);
                                        tally.refused += 1;
                                    }
                                }
                            }
                            30..45 => {
                                // `heap` in pages (quantum-cached up to four),
                                // or `bytes` in 16-byte units, by any policy.
                                let pages = if rng.below(8) == 0 { 64 } else { 6 };
                                let (i, size) = if rng.below(2) == 0 {
                                    (1, PAGE * (1 + rng.below(pages)))
                                } else {
                                    (2, 16 * (1 + rng.below(600)))
                                };
                                let policy = [Policy::InstantFit, Policy::BestFit, Policy::NextFit]
                                    [rng.below(3) as usize];
                                match arenas[i].alloc(size, policy) {
                                    Ok(addr) => {
                                        keep(Owner::Alloc(i), addr, size, &mut mine);
                                        tally.allocs += 1;
                                    }
                                    Err(e) => {
                                        refused(e);
                                        tally.refused += 1;
                                    }
                                }
                            }
                            45..52 => {
                                let i = rng.below(2) as usize;
                                let size = PAGE * (1 + rng.below(16));
                                let c = match rng.below(3) {
                                    0 => Constraints::aligned(PAGE << rng.below(6)),
                                    1 => Constraints {
                                        align: 16 * PAGE,
                                        phase: PAGE * rng.below(16),
                                        ..Constraints::NONE
                                    },
                                    _ => Constraints {
                                        nocross: 64 * PAGE,
                                        ..Constraints::NONE
                                    },
                                };
                                match arenas[i].xalloc(size, &c, Policy::InstantFit) {
                                    Ok(addr) => {
                                        let align = c.align.max(PAGE);
                                        assert_eq!(addr % align, c.phase, "{c:?}");
                                        assert_eq!(
                                            addr.checked_div(c.nocross),
                                            (addr + size - 1).checked_div(c.nocross),
                                            "crosses {c:?}"
                                        );
                                        keep(Owner::Xalloc(i), addr, size, &mut mine);
                                        tally.xallocs += 1;
                                    }
                                    Err(e) => {
                                        refused(e);
                                        tally.refused += 1;
                                    }
                                }
                            }
                            52..80 if !mine.is_empty() => {
                                let live = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                                free(live);
                                tally.frees += 1;
                            }
                            80..87 if !mine.is_empty() => {
                                let live = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                                exchange.lock().unwrap().push(live);
                            }
                            87..95 => {
                                let taken = exchange.lock().unwrap().pop();
                                if let Some(live) = taken {
                                    free(live);
                                    tally.cross_frees += 1;
                                }
                            }
                            95..97 => {
                                let cache = &caches[rng.below(caches.len() as u64) as usize];
                                if rng.below(2) == 0 {
                                    cache.reap().unwrap();
                                } else {
                                    cache.reap_idle().unwrap();
                                }
                                tally.reaps += 1;
                            }
                            97 => {
                                heap.reap().unwrap();
                                tally.reaps += 1;
                            }
                            98 => {
                                // No quantum or object caches of their own: a
                                // check under the arena's lock is exact.
                                arenas[if rng.below(2) == 0 { 0 } else { 2 }]
                                    .check()
                                    .unwrap();
                                tally.checks += 1;
                            }
                            _ => {}
                        }
                    }
                    for live in mine {
                        free(live);
                        tally.frees += 1;
                    }
                    tally
                })
            })
            .collect();
        for worker in workers {
            total.add(worker.join().unwrap());
        }
    });
    let elapsed = started.elapsed();
    let mut tally = Tally::default();
    for live in exchange.into_inner().unwrap() {
        free(live);
        tally.frees += 1;
    }
    total.add(tally);
    println!(
        "arena tree: {threads} threads, {:.1} s, {} operations ({} allocs, {} xallocs, {} frees, \
         {} cross-thread frees, {} reaps, {} checks; {} refused for space)",
        elapsed.as_secs_f64(),
        total.ops(),
        total.allocs,
        total.xallocs,
        total.frees,
        total.cross_frees,
        total.reaps,
        total.checks,
        total.refused,
    );
    assert_eq!(
        total.allocs + total.xallocs,
        total.frees + total.cross_frees,
        "every allocation was freed once"
    );
    assert!(total.cross_frees > 0 && total.xallocs > 0 && total.reaps > 0);

    for cache in &caches {
        cache.check().unwrap();
        assert_eq!(cache.stats().in_use, 0);
        cache.reap().unwrap();
        cache.check().unwrap();
        assert_eq!(cache.stats().slabs, 0);
    }
    heap.reap().unwrap();
    for (arena, start) in arenas.iter().zip(&starts) {
        arena.check().unwrap();
        assert_eq!(&walk(arena), start, "{} is back to its start", arena.name());
    }
    assert_eq!(qc.stats().map(|(_, s)| s.slabs).sum::<u64>(), 0);
    drop(caches);
    drop(bytes);
    drop(heap);
    drop(qc);
    drop(phys);
    meta_arena.check().unwrap();
    assert_eq!(walk(&meta_arena), meta_start, "every meta page came back");
    drop(meta_arena);
    // SAFETY: every arena over the buffer is gone.
    unsafe { dealloc(buffer, layout) };
}
