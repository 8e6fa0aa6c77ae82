//! Meta pages go back to their source: after everything is freed and
//! reaped, an arena keeps no tag page it does not need and a cache keeps no
//! record or magazine page (issue 12, defect 9).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use vmem_core::{
    Arena, ArenaConfig, CacheConfig, FixedCpu, HeapMeta, META_PAGE, MetaSource, ObjectCache, Policy,
};

/// Pages from `HeapMeta`, counted while they are out: single pages (tags,
/// records, magazines, small tables) apart from runs (larger hash tables).
#[derive(Default)]
struct Counting {
    single: AtomicUsize,
    runs: AtomicUsize,
}

impl Counting {
    fn counter(&self, pages: usize) -> &AtomicUsize {
        if pages == 1 { &self.single } else { &self.runs }
    }

    fn single(&self) -> usize {
        self.single.load(Ordering::SeqCst)
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

impl MetaSource for Counting {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let page = HeapMeta.alloc_pages(pages)?;
        assert_eq!(
            page.as_ptr() as usize % META_PAGE,
            0,
            "meta pages are aligned"
        );
        self.counter(pages).fetch_add(pages, Ordering::SeqCst);
        Some(page)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        self.counter(pages).fetch_sub(pages, Ordering::SeqCst);
        // SAFETY: passed through from the caller's contract.
        unsafe { HeapMeta.free_pages(base, pages) }
    }
}

const SEGMENTS: u64 = 100_000;

/// Pages an allocated-segment hash of `buckets` buckets takes from its meta
/// source (16 bytes a bucket; the first 16 live inside the arena).
fn hash_pages(buckets: u64) -> usize {
    if buckets <= 16 {
        0
    } else {
        (buckets * 16).div_ceil(META_PAGE as u64) as usize
    }
}

#[test]
fn defect_9_spare_tag_pages_go_back_to_the_meta_source() {
    let meta = Counting::default();
    let arena: Arena =
        Arena::create(ArenaConfig::new("ids", 1).span(1, 4 * SEGMENTS).meta(&meta)).unwrap();
    let ids: Vec<u64> = (0..SEGMENTS)
        .map(|_| arena.alloc(2, Policy::InstantFit).unwrap())
        .collect();
    let peak = arena.stats().tag_pages;
    assert!(peak >= SEGMENTS / 100, "{peak} tag pages at the peak");
    // Every other one first, so no free coalesces until the second pass.
    for &id in ids.iter().step_by(2).chain(ids.iter().skip(1).step_by(2)) {
        arena.free(id, 2).unwrap();
    }
    arena.check().unwrap();
    arena.reap().unwrap();
    arena.check().unwrap();
    let s = arena.stats();
    // One span marker and one free segment stay linked: they and the spare
    // tags an operation reserves fit on one page, where the reap moves them.
    assert!(
        s.tag_pages == 1,
        "{} of {peak} tag pages kept after a reap",
        s.tag_pages
    );
    let hash = hash_pages(s.hash_buckets);
    assert_eq!(
        meta.single() + meta.runs(),
        s.tag_pages as usize + hash,
        "the meta source has out only the tag pages kept and the hash table"
    );
    // The arena still works, taking pages again as it needs them.
    let again: Vec<u64> = (0..1000)
        .map(|_| arena.alloc(1, Policy::InstantFit).unwrap())
        .collect();
    for id in again {
        arena.free(id, 1).unwrap();
    }
    arena.reap().unwrap();
    arena.check().unwrap();
    assert_eq!(arena.stats().tag_pages, 1);
    drop(arena);
    assert_eq!((meta.single(), meta.runs()), (0, 0), "all back after drop");
}

#[test]
fn defect_9_a_reap_moves_tags_in_use_onto_the_fewest_pages() {
    let meta = Counting::default();
    let arena: Arena =
        Arena::create(ArenaConfig::new("ids", 1).span(1, 4 * SEGMENTS).meta(&meta)).unwrap();
    let ids: Vec<u64> = (0..SEGMENTS)
        .map(|i| {
            let policy = if i % 2 == 0 {
                Policy::NextFit
            } else {
                Policy::InstantFit
            };
            arena.alloc(2, policy).unwrap()
        })
        .collect();
    // Keep every 97th: live segments scattered over every tag page.
    let (kept, gone): (Vec<u64>, Vec<u64>) = ids.iter().partition(|&&id| id % 97 == 1);
    for &id in &gone {
        arena.free(id, 2).unwrap();
    }
    let before = arena.stats();
    arena.reap().unwrap();
    arena.check().unwrap();
    let s = arena.stats();
    let per_page = s.tags / s.tag_pages;
    assert_eq!(
        s.tags - s.tags_spare,
        before.tags - before.tags_spare,
        "linked tags stay"
    );
    assert!(
        s.tags_spare >= 4 && s.tags_spare < per_page + 4,
        "{} pages of {per_page} tags for {} tags in use ({} pages before)",
        s.tag_pages,
        s.tags - s.tags_spare,
        before.tag_pages
    );
    assert_eq!(
        meta.single() + meta.runs(),
        s.tag_pages as usize + hash_pages(s.hash_buckets)
    );
    // Every moved segment is still found, and the arena keeps working.
    let more: Vec<u64> = (0..5000)
        .map(|_| arena.alloc(1, Policy::NextFit).unwrap())
        .collect();
    for id in kept {
        arena.free(id, 2).unwrap();
    }
    for id in more {
        arena.free(id, 1).unwrap();
    }
    arena.check().unwrap();
    arena.reap().unwrap();
    arena.check().unwrap();
    assert_eq!(arena.stats().tag_pages, 1);
    assert_eq!(arena.size().alloc, 0);
}

#[test]
fn defect_9_spare_record_pages_go_back() {
    let cpu = FixedCpu::new(0);
    let arena: Arena = Arena::create(
        ArenaConfig::new("ids", 1)
            .span(1, 64 * SEGMENTS)
            .meta(&HeapMeta),
    )
    .unwrap();
    let meta = Counting::default();
    let cache = ObjectCache::new(CacheConfig::new("ids4", 4, &meta, &cpu), &arena).unwrap();
    let objs: Vec<u64> = (0..SEGMENTS).map(|_| cache.alloc().unwrap()).collect();
    let peak = cache.stats().meta_pages;
    assert!(peak >= 100, "{peak} meta pages at the peak");
    for &o in objs.iter().rev() {
        cache.free(o).unwrap();
    }
    cache.check().unwrap();
    cache.reap().unwrap();
    cache.check().unwrap();
    let s = cache.stats();
    assert_eq!((s.in_use, s.slabs, s.magazines), (0, 0, 0));
    assert_eq!(
        s.meta_pages, 0,
        "slab record, magazine and table pages all go back after a full reap"
    );
    assert_eq!((meta.single(), meta.runs()), (0, 0));
    // The cache still works, taking pages again as it needs them.
    let again: Vec<u64> = (0..1000).map(|_| cache.alloc().unwrap()).collect();
    assert!(meta.single() > 0);
    for o in again {
        cache.free(o).unwrap();
    }
    cache.reap().unwrap();
    cache.check().unwrap();
    assert_eq!((meta.single(), meta.runs()), (0, 0));
    drop(cache);
    assert_eq!(arena.size().alloc, 0);
}
