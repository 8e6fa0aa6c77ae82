//! Object caches, quantum caches and a reserve, driven by operation
//! sequences decoded with `arbitrary`.
//!
//! Four arenas: `ids` (no-touch integers), `imp` (imports from `root`, with
//! injected import failures), `va` (quantum caches in front), and `mem`
//! (real memory from a heap buffer, for memory-mode caches that poison and
//! guard their objects). Up to six caches of any size, alignment, magazine
//! size and debug setting sit on them; the operations allocate and free on
//! any CPU, free twice, free objects of another cache and addresses that
//! are no object at all (to debug caches, which must refuse them), reap,
//! purge, reap idle magazines, allocate and free through the quantum
//! caches, and make, use and drop a reserve.
//!
//! After every step: every cache's and arena's `check` passes, each cache's
//! `in_use` is what the model holds, live objects lie inside slabs of their
//! arena, meet their alignment and never overlap, and a refused call
//! changed no arena. At the end everything is freed, the reserve dropped
//! and every cache reaped: each arena is exactly as it was at the start,
//! and `imp` holds no imported span.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmem_core::{
    Arena, ArenaConfig, CacheConfig, ErrorKind, FixedCpu, HeapMeta, ObjectCache, Policy,
    QuantumCaches, Reserve, Segment, SegmentKind,
};
use vmem_testkit::walk;

// Indices into the arenas: `ids` is 0.
const IMP: usize = 1;
const VA: usize = 2;
const MEM: usize = 3;
const MEM_BYTES: usize = 1 << 20;
const MEM_QUANTUM: u64 = 8;

#[derive(Arbitrary, Debug)]
struct Input {
    /// `ids` quantum: `1 << (ids_shift % 5)`.
    ids_shift: u8,
    /// `ids` span, in quanta.
    ids_quanta: u16,
    /// `imp`'s minimum import, in bytes (of a quantum of 16).
    import_min: u16,
    /// `va`'s quantum caches serve up to this many quanta (1..=16).
    qcache_quanta: u8,
    caches: Vec<CacheSpec>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct CacheSpec {
    arena: u8,
    size: u16,
    /// `1 << (align_shift % 14)`, or 3 when it is 255 (refused).
    align_shift: u8,
    magazine: u8,
    debug: bool,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Cpu(u8),
    Alloc(u8),
    Free(u16),
    DoubleFree(u16),
    ForeignFree { pick: u16, to: u8 },
    BogusFree { cache: u8, addr: u64 },
    Reap,
    Purge(u8),
    ReapIdle(u8),
    ArenaAlloc { quanta: u8, best: bool },
    ArenaFree(u16),
    ArenaBadFree(u16),
    FailImports(u8),
    MakeReserve { cache: u8, count: u8 },
    ReserveAlloc,
    ReserveFree(u16),
    ReserveDoubleFree(u16),
    DropReserve,
}

/// A live object: its cache, and whether it came from the reserve.
#[derive(Clone, Copy, Debug)]
struct Live {
    cache: usize,
    size: u64,
    from_reserve: bool,
}

/// What the model knows of the reserve: its cache, capacity, and its
/// stack of held objects (`None` for those it took at creation, whose
/// addresses only show when they are handed out).
struct ReserveModel {
    cache: usize,
    cap: usize,
    held: Vec<Option<u64>>,
}

struct World<'a> {
    arenas: [&'a Arena<'a>; 4],
    root: &'a Arena<'a>,
    caches: &'a [(ObjectCache<'a>, usize, u64)],
    cpu: &'a FixedCpu,
    reserve: Option<Reserve<'a>>,
    rm: Option<ReserveModel>,
    /// Live objects by (arena, address).
    live: BTreeMap<(usize, u64), Live>,
    freed: Vec<(usize, u64)>,
    va_live: BTreeMap<u64, u64>,
}

impl World<'_> {
    fn walks(&self) -> Vec<Vec<Segment>> {
        let mut w: Vec<_> = self.arenas.iter().map(|a| walk(a)).collect();
        w.push(walk(self.root));
        w
    }

    fn pick_live(&self, pick: u16, reserve: bool) -> Option<(usize, u64, Live)> {
        let objs: Vec<_> = self
            .live
            .iter()
            .filter(|(_, l)| l.from_reserve == reserve)
            .collect();
        if objs.is_empty() {
            return None;
        }
        let (&(arena, addr), &l) = objs[usize::from(pick) % objs.len()];
        Some((arena, addr, l))
    }

    fn insert_live(&mut self, c: usize, obj: u64, from_reserve: bool) {
        let (cache, arena, align) = &self.caches[c];
        let size = cache.object_size();
        assert_eq!(obj % align, 0, "object {obj:#x} of cache {c} misaligned");
        let end = obj + size;
        let overlaps = self
            .live
            .range((*arena, 0)..(*arena, end))
            .next_back()
            .is_some_and(|(&(_, a), l)| a + l.size > obj);
        assert!(
            !overlaps,
            "object {obj:#x} of cache {c} overlaps a live one"
        );
        let in_slab = walk(self.arenas[*arena])
            .iter()
            .any(|s| s.kind == SegmentKind::Alloc && s.start <= obj && end <= s.start + s.size);
        assert!(
            in_slab,
            "object {obj:#x} lies outside every slab of its arena"
        );
        if cache.memory_mode() {
            // Use the object as its owner would; the red zone after it must
            // stay intact.
            // SAFETY: a memory-mode object is `size` writable bytes of the
            // heap buffer that backs `mem`, owned by the caller until freed.
            unsafe { std::ptr::write_bytes(obj as usize as *mut u8, 0x5a, size as usize) };
        }
        self.live.insert(
            (*arena, obj),
            Live {
                cache: c,
                size,
                from_reserve,
            },
        );
        self.freed.retain(|&(_, o)| o != obj);
    }

    /// Runs one step; returns whether it was refused (and must have
    /// changed nothing).
    fn step(&mut self, op: Op) -> bool {
        let n = self.caches.len();
        match op {
            Op::Cpu(i) => {
                self.cpu.set(usize::from(i));
                false
            }
            Op::Alloc(c) if n > 0 => {
                let c = usize::from(c) % n;
                let (cache, arena, _) = &self.caches[c];
                let before = walk(self.arenas[*arena]);
                match cache.alloc() {
                    Ok(obj) => {
                        self.insert_live(c, obj, false);
                        false
                    }
                    Err(e) => {
                        self.refused_alloc(c, e.kind(), &before);
                        true
                    }
                }
            }
            Op::Free(pick) => match self.pick_live(pick, false) {
                Some((arena, obj, l)) => {
                    let r = self.caches[l.cache].0.free(obj);
                    assert!(
                        r.is_ok(),
                        "freeing live {obj:#x} of cache {}: {r:?}",
                        l.cache
                    );
                    self.live.remove(&(arena, obj));
                    self.freed.push((l.cache, obj));
                    false
                }
                None => false,
            },
            Op::DoubleFree(pick) if !self.freed.is_empty() => {
                let (c, obj) = self.freed[usize::from(pick) % self.freed.len()];
                let (cache, arena, _) = &self.caches[c];
                // Only a debug cache can tell, and only while nobody holds
                // the object again (or the reserve keeps it).
                if !cache.debug() || self.live.contains_key(&(*arena, obj)) || self.held(obj) {
                    return false;
                }
                let r = cache.free(obj);
                assert_eq!(
                    r.map_err(|e| e.kind()),
                    Err(ErrorKind::BadFree),
                    "double free of {obj:#x}"
                );
                true
            }
            Op::ForeignFree { pick, to } if n > 0 => {
                let Some((_, obj, l)) = self.pick_live(pick, false) else {
                    return false;
                };
                let to = usize::from(to) % n;
                let (cache, _, _) = &self.caches[to];
                if to == l.cache || !cache.debug() {
                    return false;
                }
                let r = cache.free(obj);
                assert_eq!(
                    r.map_err(|e| e.kind()),
                    Err(ErrorKind::BadFree),
                    "freeing {obj:#x} of cache {} to cache {to}",
                    l.cache
                );
                true
            }
            Op::BogusFree { cache: c, addr } if n > 0 => {
                let c = usize::from(c) % n;
                let (cache, arena, _) = &self.caches[c];
                if !cache.debug() || self.live.contains_key(&(*arena, addr)) || self.held(addr) {
                    return false;
                }
                // The reserve's first objects are live in the cache at
                // addresses the model has not seen yet.
                if self
                    .rm
                    .as_ref()
                    .is_some_and(|rm| rm.cache == c && rm.held.contains(&None))
                {
                    return false;
                }
                let r = cache.free(addr);
                assert_eq!(
                    r.map_err(|e| e.kind()),
                    Err(ErrorKind::BadFree),
                    "freeing bogus {addr:#x} to cache {c}"
                );
                true
            }
            Op::Reap => {
                for (cache, _, _) in self.caches {
                    assert!(cache.reap().is_ok(), "reap");
                }
                assert!(
                    self.arenas[VA].reap().is_ok(),
                    "reaping va's quantum caches"
                );
                false
            }
            Op::Purge(c) if n > 0 => {
                assert!(self.caches[usize::from(c) % n].0.reap().is_ok(), "purge");
                false
            }
            Op::ReapIdle(c) if n > 0 => {
                assert!(
                    self.caches[usize::from(c) % n].0.reap_idle().is_ok(),
                    "reap idle"
                );
                false
            }
            Op::ArenaAlloc { quanta, best } => {
                let va = self.arenas[VA];
                let size = u64::from(quanta % 24 + 1) * va.quantum();
                let policy = if best {
                    Policy::BestFit
                } else {
                    Policy::InstantFit
                };
                match va.alloc(size, policy) {
                    Ok(a) => {
                        let overlaps = self
                            .va_live
                            .range(..a + size)
                            .next_back()
                            .is_some_and(|(&b, &s)| b + s > a);
                        assert!(!overlaps, "va allocation {a:#x} overlaps");
                        assert_eq!(a % va.quantum(), 0);
                        self.va_live.insert(a, size);
                        false
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::NoSpace, "va alloc {size:#x}: {e}");
                        true
                    }
                }
            }
            Op::ArenaFree(pick) if !self.va_live.is_empty() => {
                let (&a, &s) = self
                    .va_live
                    .iter()
                    .nth(usize::from(pick) % self.va_live.len())
                    .unwrap_or((&0, &0));
                let r = self.arenas[VA].free(a, s);
                assert!(r.is_ok(), "freeing va {a:#x}: {r:?}");
                self.va_live.remove(&a);
                false
            }
            Op::ArenaBadFree(pick) if !self.va_live.is_empty() => {
                let va = self.arenas[VA];
                let (&a, &s) = self
                    .va_live
                    .iter()
                    .nth(usize::from(pick) % self.va_live.len())
                    .unwrap_or((&0, &0));
                let wrong_size = va.free(a, s + va.quantum()).map_err(|e| e.kind());
                assert_eq!(
                    wrong_size,
                    Err(ErrorKind::BadFree),
                    "va free {a:#x} with a wrong size"
                );
                let wrong_call = va.xfree(a, s).map_err(|e| e.kind());
                assert_eq!(wrong_call, Err(ErrorKind::BadFree), "va xfree of an alloc");
                true
            }
            Op::FailImports(k) => {
                self.arenas[IMP].fail_imports(u64::from(k % 3));
                false
            }
            Op::MakeReserve { cache: c, count } if n > 0 && self.reserve.is_none() => {
                let c = usize::from(c) % n;
                let count = usize::from(count % 12);
                let cache = &self.caches[c].0;
                match Reserve::new(cache, count, &HeapMeta) {
                    Ok(r) => {
                        assert!(count > 0, "a reserve of zero objects was made");
                        self.reserve = Some(r);
                        // The reserve may have taken freed objects back.
                        self.freed.retain(|&(fc, _)| fc != c);
                        self.rm = Some(ReserveModel {
                            cache: c,
                            cap: count,
                            held: vec![None; count],
                        });
                        false
                    }
                    Err(e) if count == 0 => {
                        assert_eq!(e.kind(), ErrorKind::ZeroSize);
                        true
                    }
                    Err(e) => {
                        // It may need several slabs, so there may be room
                        // for one: only the kind is checked.
                        let arena = self.caches[c].1;
                        let expected = if arena == IMP {
                            ErrorKind::ImportFailed
                        } else {
                            ErrorKind::NoSpace
                        };
                        assert!(
                            matches!(e.kind(), ErrorKind::NoSpace) || e.kind() == expected,
                            "reserve of {count}: {e}"
                        );
                        true
                    }
                }
            }
            Op::ReserveAlloc => {
                let (Some(reserve), Some(rm)) = (&self.reserve, &mut self.rm) else {
                    return false;
                };
                let c = rm.cache;
                let before = walk(self.arenas[self.caches[c].1]);
                match reserve.alloc() {
                    Ok(obj) => {
                        if let Some(Some(expected)) = rm.held.pop() {
                            assert_eq!(obj, expected, "the reserve is not a stack");
                        }
                        self.insert_live(c, obj, true);
                        false
                    }
                    Err(e) => {
                        assert!(rm.held.is_empty(), "a reserve holding objects failed: {e}");
                        self.refused_alloc(c, e.kind(), &before);
                        true
                    }
                }
            }
            Op::ReserveFree(pick) => {
                let Some((arena, obj, _)) = self.pick_live(pick, true) else {
                    return false;
                };
                let (Some(reserve), Some(rm)) = (&self.reserve, &mut self.rm) else {
                    return false;
                };
                let r = reserve.free(obj);
                assert!(r.is_ok(), "reserve free of {obj:#x}: {r:?}");
                if rm.held.len() < rm.cap {
                    rm.held.push(Some(obj));
                }
                let c = rm.cache;
                self.live.remove(&(arena, obj));
                self.freed.push((c, obj));
                false
            }
            Op::ReserveDoubleFree(pick) => {
                let (Some(reserve), Some(rm)) = (&self.reserve, &self.rm) else {
                    return false;
                };
                let known: Vec<u64> = rm.held.iter().flatten().copied().collect();
                if known.is_empty() {
                    return false;
                }
                let obj = known[usize::from(pick) % known.len()];
                let r = reserve.free(obj).map_err(|e| e.kind());
                assert_eq!(
                    r,
                    Err(ErrorKind::BadFree),
                    "freeing {obj:#x}, which the reserve holds"
                );
                assert_eq!(reserve.available(), rm.held.len());
                true
            }
            Op::DropReserve => {
                // Objects handed out through the reserve stay live; they
                // are freed to the cache at the end.
                self.reserve = None;
                if let Some(rm) = self.rm.take() {
                    for obj in rm.held.into_iter().flatten() {
                        self.freed.push((rm.cache, obj));
                    }
                }
                for l in self.live.values_mut() {
                    l.from_reserve = false;
                }
                false
            }
            _ => false,
        }
    }

    /// Whether the reserve holds `obj`.
    fn held(&self, obj: u64) -> bool {
        self.rm
            .as_ref()
            .is_some_and(|rm| rm.held.contains(&Some(obj)))
    }

    /// A cache allocation was refused: the kind must be one for lack of
    /// space, and for an arena without a source nothing free could hold a
    /// slab.
    fn refused_alloc(&self, c: usize, kind: ErrorKind, before: &[Segment]) {
        let (cache, arena, align) = &self.caches[c];
        if *arena == IMP {
            assert!(
                matches!(kind, ErrorKind::NoSpace | ErrorKind::ImportFailed),
                "cache {c} on imp: {kind:?}"
            );
            return;
        }
        assert_eq!(kind, ErrorKind::NoSpace, "cache {c}");
        let q = self.arenas[*arena].quantum();
        let slab = cache.stats().slab_size;
        let slab_align = (*align).max(q);
        let fits = before.iter().any(|s| {
            s.kind == SegmentKind::Free && {
                let first = s.start.div_ceil(slab_align).checked_mul(slab_align);
                first.is_some_and(|f| {
                    u128::from(f) + u128::from(slab) <= u128::from(s.start) + u128::from(s.size)
                })
            }
        });
        assert!(
            !fits,
            "cache {c} refused, but its arena has room for a slab of {slab:#x}"
        );
    }

    fn verify(&self) {
        for (i, (cache, _, _)) in self.caches.iter().enumerate() {
            if let Err(e) = cache.check() {
                panic!("cache {i} check: {e}");
            }
            let mut in_use = self.live.values().filter(|l| l.cache == i).count();
            if let Some(rm) = self.rm.as_ref().filter(|rm| rm.cache == i) {
                in_use += rm.held.len();
            }
            assert_eq!(cache.stats().in_use, in_use as u64, "cache {i} in_use");
        }
        for arena in self.arenas.iter().chain([&self.root]) {
            if let Err(e) = arena.check() {
                panic!("arena {} check: {e}", arena.name());
            }
            let s = arena.size();
            assert_eq!(s.alloc + s.free, s.total);
        }
        if let (Some(r), Some(rm)) = (&self.reserve, &self.rm) {
            assert_eq!(r.available(), rm.held.len(), "reserve available");
        }
    }
}

fuzz_target!(|input: Input| {
    let cpu = FixedCpu::new(0);
    let ids_q = 1u64 << (input.ids_shift % 5);
    let ids_size = u64::from(input.ids_quanta.max(1)) * ids_q;
    let Ok(ids) = Arena::create(
        ArenaConfig::new("ids", ids_q)
            .span(0x1_0000, ids_size)
            .meta(&HeapMeta),
    ) else {
        panic!("creating ids");
    };
    let Ok(root) = Arena::create(
        ArenaConfig::new("root", 16)
            .span(0x100_0000, 0x10_0000)
            .meta(&HeapMeta),
    ) else {
        panic!("creating root");
    };
    let Ok(imp) = Arena::create(
        ArenaConfig::new("imp", 16)
            .source(&root, u64::from(input.import_min))
            .meta(&HeapMeta),
    ) else {
        panic!("creating imp");
    };
    let qmax = u64::from(input.qcache_quanta % 16 + 1) * 16;
    let Ok(qc) = QuantumCaches::new(16, qmax, &HeapMeta, &cpu) else {
        panic!("creating quantum caches");
    };
    let Ok(va) = Arena::create(
        ArenaConfig::new("va", 16)
            .span(0x4000_0000, 0x4_0000)
            .meta(&HeapMeta)
            .qcache(&qc),
    ) else {
        panic!("creating va");
    };
    // Memory for `mem`, in words so that it is 8-aligned.
    let buffer = vec![0u64; MEM_BYTES / 8];
    let base = buffer.as_ptr() as u64;
    let Ok(mem) = Arena::create(
        ArenaConfig::new("mem", MEM_QUANTUM)
            .span(base, MEM_BYTES as u64)
            .meta(&HeapMeta),
    ) else {
        panic!("creating mem");
    };
    let arenas: [&Arena; 4] = [&ids, &imp, &va, &mem];
    let start: Vec<Vec<Segment>> = arenas.iter().chain([&&root]).map(|a| walk(a)).collect();

    let mut caches: Vec<(ObjectCache, usize, u64)> = Vec::new();
    for spec in input.caches.iter().take(6) {
        let arena = usize::from(spec.arena) % 4;
        let align = if spec.align_shift == 255 {
            3
        } else {
            1u64 << (spec.align_shift % 14)
        };
        let size = u64::from(spec.size);
        let mut config = CacheConfig::new("c", size, &HeapMeta, &cpu)
            .align(align)
            .magazine(u32::from(spec.magazine % 70))
            .debug(spec.debug);
        if arena == MEM {
            // SAFETY: every integer `mem` hands out is an address inside
            // `buffer`, which outlives the caches and is used by nothing else.
            config = unsafe { config.memory() };
        }
        match ObjectCache::new(config, arenas[arena]) {
            Ok(cache) => {
                assert!(size > 0 && align.is_power_of_two(), "a bad cache was made");
                let align = if arena == MEM { align.max(8) } else { align };
                caches.push((cache, arena, align));
            }
            Err(e) => {
                let expected = if size == 0 {
                    ErrorKind::ZeroSize
                } else {
                    ErrorKind::BadConstraint
                };
                assert_eq!(e.kind(), expected, "cache size {size} align {align}: {e}");
            }
        }
    }

    {
        let mut world = World {
            arenas,
            root: &root,
            caches: &caches,
            cpu: &cpu,
            reserve: None,
            rm: None,
            live: BTreeMap::new(),
            freed: Vec::new(),
            va_live: BTreeMap::new(),
        };
        for op in input.ops.iter().take(1024) {
            let before = world.walks();
            let in_use: Vec<u64> = caches.iter().map(|c| c.0.stats().in_use).collect();
            if world.step(*op) {
                assert!(world.walks() == before, "refused {op:?} changed an arena");
                let after: Vec<u64> = caches.iter().map(|c| c.0.stats().in_use).collect();
                assert_eq!(after, in_use, "refused {op:?} changed a cache's in_use");
            }
            world.verify();
        }
        // Give everything back.
        let live = std::mem::take(&mut world.live);
        for (&(_, obj), l) in &live {
            let r = match (&world.reserve, l.from_reserve) {
                (Some(reserve), true) => reserve.free(obj),
                _ => caches[l.cache].0.free(obj),
            };
            assert!(r.is_ok(), "freeing {obj:#x} at the end: {r:?}");
        }
        world.reserve = None;
        world.rm = None;
        for (a, s) in std::mem::take(&mut world.va_live) {
            assert!(va.free(a, s).is_ok(), "freeing va {a:#x} at the end");
        }
        for (cache, _, _) in &caches {
            assert!(cache.reap().is_ok(), "final reap");
            assert_eq!(cache.stats().in_use, 0, "objects still in use at the end");
        }
        assert!(va.reap().is_ok(), "final reap of va");
        world.verify();
    }
    let end: Vec<Vec<Segment>> = arenas.iter().chain([&&root]).map(|a| walk(a)).collect();
    assert!(
        end == start,
        "freeing and reaping everything did not restore the arenas"
    );
    // The caches go before the arenas and the buffer (declared earlier).
    drop(caches);
});
