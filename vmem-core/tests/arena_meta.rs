//! `ArenaMeta`: meta pages from an arena whose integers are addresses.

use std::alloc::{Layout, alloc_zeroed, dealloc};

use vmem_core::{Arena, ArenaConfig, ArenaMeta, HeapMeta, META_PAGE, MetaSource};

const PAGE: u64 = META_PAGE as u64;

/// Issue 12, defect 7: an arena that handed out address 0 made
/// `ArenaMeta::alloc_pages` answer `None` and keep the page allocated in
/// the arena for good. Now the page goes back and `ArenaMeta` takes pages
/// above 0 when there are any.
#[test]
fn defect_7_arena_meta_at_address_zero_leaks_nothing() {
    let arena: Arena = Arena::create(
        ArenaConfig::new("from_zero", PAGE)
            .span(0, PAGE)
            .meta(&HeapMeta),
    )
    .unwrap();
    // SAFETY: the arena's only page is at 0, which `ArenaMeta` never hands
    // out; the span added below is a host buffer nothing else uses.
    let meta = unsafe { ArenaMeta::new(&arena) };

    assert_eq!(meta.alloc_pages(1), None, "no page but the one at 0");
    assert_eq!(arena.size().alloc, 0, "the page at 0 went back");
    arena.check().unwrap();

    let layout = Layout::from_size_align(8 * META_PAGE, META_PAGE).unwrap();
    // SAFETY: non-zero size.
    let buffer = unsafe { alloc_zeroed(layout) };
    assert!(!buffer.is_null());
    arena.add_span(buffer as u64, 8 * PAGE).unwrap();
    let page = meta
        .alloc_pages(1)
        .expect("a page from the buffer, though the one at 0 comes first");
    assert_eq!(page.as_ptr(), buffer);
    assert_eq!(arena.size().alloc, PAGE, "only the page handed over");
    // SAFETY: the page is ours until it is given back.
    unsafe { page.as_ptr().write_bytes(0xa5, META_PAGE) };
    // SAFETY: handed out by `alloc_pages(1)` just above, no longer used.
    unsafe { meta.free_pages(page, 1) };
    assert_eq!(arena.size().alloc, 0);
    arena.check().unwrap();

    drop(arena);
    // SAFETY: allocated above with this layout; the arena is gone.
    unsafe { dealloc(buffer, layout) };
}
