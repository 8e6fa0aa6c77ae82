//! Helpers for the unit tests beside the modules: a meta source with a
//! page budget, tags carved from its pages, and page-aligned host memory.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::{Layout, alloc_zeroed, dealloc};

use crate::HeapMeta;
use crate::meta::{META_PAGE, MetaSource};
use crate::tag::{Kind, TagPtr, TagStock};

/// Meta pages from [`HeapMeta`], at most `budget` of them out at once: a
/// request beyond it is refused, as a dry meta source refuses. Counts the
/// pages out, so a test sees whether everything came back.
pub(crate) struct Budget {
    left: AtomicUsize,
    out: AtomicUsize,
}

impl Budget {
    /// A source that hands out at most `pages` pages at once.
    pub(crate) const fn new(pages: usize) -> Self {
        Budget {
            left: AtomicUsize::new(pages),
            out: AtomicUsize::new(0),
        }
    }

    /// Pages handed out and not given back.
    pub(crate) fn out(&self) -> usize {
        self.out.load(Ordering::Acquire)
    }

    /// Allows `pages` more pages from now on.
    pub(crate) fn grant(&self, pages: usize) {
        self.left.fetch_add(pages, Ordering::AcqRel);
    }
}

impl MetaSource for Budget {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_sub(pages)
            })
            .ok()?;
        let Some(base) = HeapMeta.alloc_pages(pages) else {
            self.left.fetch_add(pages, Ordering::AcqRel);
            return None;
        };
        self.out.fetch_add(pages, Ordering::AcqRel);
        Some(base)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        self.out.fetch_sub(pages, Ordering::AcqRel);
        self.left.fetch_add(pages, Ordering::AcqRel);
        // SAFETY: the caller's promise: the pages came from `alloc_pages`,
        // that is from `HeapMeta`, in one call of `pages` pages.
        unsafe { HeapMeta.free_pages(base, pages) }
    }
}

/// A tag stock owning `pages` meta pages from `meta`, and nothing else.
pub(crate) fn tag_stock(meta: &dyn MetaSource, pages: usize) -> TagStock {
    let mut stock = TagStock::new();
    for _ in 0..pages {
        let page = meta
            .alloc_pages(1)
            .expect("the test's meta source has a page");
        // SAFETY: a fresh META_PAGE-aligned page from a meta source, now the
        // stock's.
        unsafe { stock.add_page(page) };
    }
    stock
}

/// A tag for `[start, start + size)` taken from `stock`, as an allocated
/// segment.
pub(crate) fn segment(stock: &mut TagStock, start: u64, size: u64) -> TagPtr {
    stock
        .take(start, size, Kind::Alloc(crate::tag::AllocBy::Alloc))
        .expect("the test's stock has a spare tag")
}

/// Zeroed host memory aligned to a meta page, freed when dropped: arenas in
/// memory mode hand out its addresses.
pub(crate) struct Memory {
    base: NonNull<u8>,
    layout: Layout,
}

impl Memory {
    /// `bytes` (a multiple of [`META_PAGE`], not 0) of zeroed memory.
    pub(crate) fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes, META_PAGE).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("host memory");
        Memory { base, layout }
    }

    /// The first address.
    pub(crate) fn base(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.layout.size() as u64
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base.as_ptr(), self.layout) }
    }
}
