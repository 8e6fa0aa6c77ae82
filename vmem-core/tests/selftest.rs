//! A long randomized self-test in the spirit of NetBSD's userland vmem
//! test: a tree of arenas (one with several spans, an importing child with
//! quantum 4 KiB, an ID arena with quantum 1) under a long stream of random
//! allocations, constrained allocations and frees with every policy, the
//! checker run regularly; then several threads at once on shared arenas.
//!
//! `VMEM_SELFTEST_OPS` sets the number of operations (default 1,000,000).

use std::thread;

use vmem_core::{Arena, ArenaConfig, Constraints, ErrorKind, HeapMeta, Policy};
use vmem_testkit::SplitMix64;

/// One of the three policies, drawn from `rng`.
fn policy(rng: &mut SplitMix64) -> Policy {
    *rng.pick(&[Policy::InstantFit, Policy::BestFit, Policy::NextFit])
}

#[derive(Clone, Copy)]
struct Live {
    arena: usize,
    addr: u64,
    size: u64,
    x: bool,
}

fn ops() -> u64 {
    std::env::var("VMEM_SELFTEST_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn long_random_run_over_a_tree_of_arenas() {
    const PAGE: u64 = 4096;
    let va: Arena = Arena::create(
        ArenaConfig::new("va", PAGE)
            .span(0xffff_8000_0000_0000, 1 << 30)
            .meta(&HeapMeta),
    )
    .unwrap();
    va.add_span(0x1_0000_0000, 1 << 28).unwrap();
    va.add_span(0x4000_0000, 1 << 24).unwrap();
    let heap: Arena = Arena::create(
        ArenaConfig::new("heap", PAGE)
            .source(&va, 1 << 20)
            .meta(&HeapMeta),
    )
    .unwrap();
    let ids: Arena =
        Arena::create(ArenaConfig::new("ids", 1).span(1, 30_000).meta(&HeapMeta)).unwrap();
    let arenas: [&Arena; 3] = [&va, &heap, &ids];
    let mut rng = SplitMix64::new(0x5eed);
    let mut live: Vec<Live> = Vec::new();
    let (mut allocs, mut fails) = (0u64, 0u64);
    let total = ops();
    for step in 0..total {
        let roll = rng.below(100);
        if roll < 48 || live.is_empty() {
            let which = rng.below(3) as usize;
            let arena = arenas[which];
            let q = arena.quantum();
            let size = if which == 2 {
                1 + rng.below(4)
            } else {
                q * (1 + rng.below(64))
            };
            let x = rng.below(4) == 0;
            let result = if x {
                let align = q << rng.below(6);
                let c = Constraints {
                    align,
                    phase: q * rng.below(align / q),
                    nocross: if rng.below(3) == 0 {
                        (align << 4).max(size.next_power_of_two() << 1)
                    } else {
                        0
                    },
                    ..Constraints::NONE
                };
                arena.xalloc(size, &c, policy(&mut rng)).inspect(|&r| {
                    assert_eq!(r % c.align, c.phase);
                    if let (Some(first), Some(last)) = (
                        r.checked_div(c.nocross),
                        (r + size - 1).checked_div(c.nocross),
                    ) {
                        assert_eq!(first, last, "crosses a nocross boundary");
                    }
                })
            } else {
                arena.alloc(size, policy(&mut rng))
            };
            match result {
                Ok(addr) => {
                    allocs += 1;
                    live.push(Live {
                        arena: which,
                        addr,
                        size,
                        x,
                    });
                }
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::NoSpace | ErrorKind::ImportFailed),
                        "{e}"
                    );
                    fails += 1;
                }
            }
        } else {
            let l = live.swap_remove(rng.below(live.len() as u64) as usize);
            let arena = arenas[l.arena];
            if l.x {
                arena.xfree(l.addr, l.size)
            } else {
                arena.free(l.addr, l.size)
            }
            .unwrap();
        }
        if step % 10_000 == 0 {
            for arena in arenas {
                arena.check().unwrap();
            }
        }
    }
    for l in live.drain(..) {
        let arena = arenas[l.arena];
        if l.x {
            arena.xfree(l.addr, l.size)
        } else {
            arena.free(l.addr, l.size)
        }
        .unwrap();
    }
    for arena in arenas {
        arena.check().unwrap();
        assert_eq!(arena.size().alloc, 0);
    }
    assert_eq!(heap.size().total, 0, "the heap released every span");
    assert_eq!(
        va.stats().free_segments,
        3,
        "va is back to one free segment per span"
    );
    assert!(
        allocs > total / 3,
        "the run allocated ({allocs} allocations, {fails} failures)"
    );
}

#[test]
fn threads_share_arenas() {
    const PAGE: u64 = 4096;
    let va: Arena = Arena::create(
        ArenaConfig::new("va", PAGE)
            .span(0x10_0000_0000, 1 << 32)
            .meta(&HeapMeta),
    )
    .unwrap();
    let heap: Arena = Arena::create(
        ArenaConfig::new("heap", PAGE)
            .source(&va, 1 << 18)
            .meta(&HeapMeta),
    )
    .unwrap();
    let rounds = ops() / 8;
    thread::scope(|s| {
        for t in 0..4u64 {
            let (va, heap) = (&va, &heap);
            s.spawn(move || {
                let mut rng = SplitMix64::new(t + 1);
                let mut live = Vec::new();
                for _ in 0..rounds {
                    let arena = if rng.below(2) == 0 { va } else { heap };
                    if rng.below(2) == 0 || live.is_empty() {
                        let size = PAGE * (1 + rng.below(32));
                        let addr = arena.alloc(size, policy(&mut rng)).unwrap();
                        live.push((std::ptr::eq(arena, va), addr, size));
                    } else {
                        let (on_va, addr, size) =
                            live.swap_remove(rng.below(live.len() as u64) as usize);
                        if on_va { va } else { heap }.free(addr, size).unwrap();
                    }
                }
                for (on_va, addr, size) in live {
                    if on_va { va } else { heap }.free(addr, size).unwrap();
                }
            });
        }
    });
    va.check().unwrap();
    heap.check().unwrap();
    assert_eq!((heap.size().total, va.size().alloc), (0, 0));
    let s = heap.stats();
    assert_eq!(s.imports, s.releases);
}
