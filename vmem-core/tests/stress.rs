//! Host stress: several threads, each its own CPU, allocating and freeing
//! across object caches in memory mode over a real host buffer, writing and
//! verifying a pattern in every object, freeing many objects on another CPU
//! than the one they came from; and a quantum-cached arena shared the same
//! way. The checker runs at the end, and after a reap every arena is back
//! to where it started.
//!
//! `VMEM_STRESS_ROUNDS` sets the rounds per thread (default 20,000).

use std::alloc::{Layout, alloc_zeroed};
use std::cell::Cell;
use std::sync::Mutex;
use std::thread;

use vmem_core::{
    Arena, ArenaConfig, CacheConfig, CpuId, HeapMeta, ObjectCache, Policy, QuantumCaches, Segment,
};

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

fn walk(arena: &Arena<'_>) -> Vec<Segment> {
    let mut out = Vec::new();
    arena.walk(|s| out.push(s));
    out
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
