//! Observing arenas and caches from outside, and host memory for them.

use std::alloc::{Layout, alloc_zeroed};
use std::fmt::Write;

use lock_api::RawMutex;
use vmem_core::{Arena, ArenaConfig, HeapMeta, ObjectCache, Segment};

/// Every segment of `arena`, spans included, in address order (as
/// [`Arena::walk`] visits them).
pub fn walk<R: RawMutex>(arena: &Arena<'_, R>) -> Vec<Segment> {
    let mut out = Vec::new();
    arena.walk(|s| out.push(s));
    out
}

/// Everything a refused call must leave as it was in `arena`: its
/// segments, sizes and gauges, and its quantum caches' gauges. Counters
/// are left out: the crate lets a refused call move them (refusals, and
/// operations it undid), and take spare tags.
pub fn arena_state<R: RawMutex>(arena: &Arena<'_, R>) -> String {
    let mut out = String::new();
    arena.walk(|s| {
        let _ = write!(out, "{:?}@{:#x}+{:#x} ", s.kind, s.start, s.size);
    });
    let z = arena.size();
    let s = arena.stats();
    let _ = write!(
        out,
        "| alloc {:#x} free {:#x} total {:#x} | spans {} alloc_segments {} \
         free_segments {} hash_buckets {} children {}",
        z.alloc,
        z.free,
        z.total,
        s.spans,
        s.alloc_segments,
        s.free_segments,
        s.hash_buckets,
        s.children
    );
    if let Some(qc) = arena.qcaches() {
        for (size, s) in qc.stats() {
            let _ = write!(
                out,
                " | qcache {size:#x}: in_use {} slabs {} empty {} magazines {}",
                s.in_use, s.slabs, s.slabs_empty, s.magazines
            );
        }
    }
    out
}

/// A cache's gauges, as [`arena_state`] gives an arena's.
pub fn cache_state(cache: &ObjectCache<'_>) -> String {
    let s = cache.stats();
    format!(
        "in_use {} slabs {} empty {} magazines {} depot_full {} depot_empty {} magazine_size {}",
        s.in_use, s.slabs, s.slabs_empty, s.magazines, s.depot_full, s.depot_empty, s.magazine_size
    )
}

/// A new arena named `name` of `quantum`-integer quanta with the one span
/// `[base, base + size)` and its metadata from the heap, leaked, so that
/// caches, threads and `'static` platforms may borrow it for the rest of the
/// test.
///
/// # Panics
/// When the arena cannot be created (the configuration is the caller's).
pub fn leaked_arena(name: &str, quantum: u64, base: u64, size: u64) -> &'static Arena<'static> {
    let arena = Arena::create(
        ArenaConfig::new(name, quantum)
            .span(base, size)
            .meta(&HeapMeta),
    )
    .unwrap_or_else(|e| panic!("Arena::create({name}) failed: {e:?}"));
    Box::leak(Box::new(arena))
}

/// The address of `bytes` of zeroed, page-aligned host memory that is
/// never freed: memory-mode arenas hand out its addresses, and caches may
/// write there for as long as the test runs.
///
/// # Panics
/// When `bytes` is zero or the host has no such memory.
pub fn buffer(bytes: usize) -> u64 {
    let layout = Layout::from_size_align(bytes, 4096).expect("a page-aligned layout");
    assert!(bytes > 0, "an empty buffer");
    // SAFETY: the layout has a non-zero size (asserted above); the buffer
    // is leaked, so it outlives every use.
    let p = unsafe { alloc_zeroed(layout) };
    assert!(!p.is_null(), "no {bytes} bytes of host memory");
    p as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmem_core::{ArenaConfig, HeapMeta, Policy, SegmentKind};

    #[test]
    fn walk_and_state_follow_the_arena() {
        let config = ArenaConfig::new("t", 16).span(0x1000, 0x1000);
        let arena: Arena = Arena::create(config.meta(&HeapMeta)).unwrap();
        let before = arena_state(&arena);
        let kinds = |a: &Arena| -> Vec<SegmentKind> { walk(a).iter().map(|s| s.kind).collect() };
        assert_eq!(
            kinds(&arena),
            [SegmentKind::Span { imported: false }, SegmentKind::Free]
        );
        let a = arena.alloc(0x100, Policy::InstantFit).unwrap();
        assert_ne!(arena_state(&arena), before);
        assert!(walk(&arena).iter().any(|s| s.start == a && s.size == 0x100));
        arena.free(a, 0x100).unwrap();
        assert_eq!(arena_state(&arena), before);
    }

    #[test]
    fn buffer_is_page_aligned_and_zeroed() {
        let addr = buffer(8192);
        assert_eq!(addr % 4096, 0);
        // SAFETY: `buffer` leaked 8192 readable bytes at `addr`.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, 8192) };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
