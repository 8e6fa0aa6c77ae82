//! A [`MetaSource`] over the global allocator, for hosts that have one.

use alloc::alloc::{Layout, alloc, dealloc};
use core::ptr::NonNull;

use crate::meta::{META_PAGE, MetaSource};

/// Meta pages from the process's global allocator (the host, the Wasm
/// module): the meta source for arenas that live where a heap exists.
///
/// Single pages (boundary tags) are cut from chunks of [`CHUNK_PAGES`]
/// pages so that an arena's tags lie close together, as a kernel's pages
/// from its direct map do; a page given back is kept for the next caller.
/// Runs of pages (hash tables) come straight from the global allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapMeta;

/// Pages in each chunk single pages are cut from.
pub const CHUNK_PAGES: usize = 64;

/// Single pages: those given back, chained through their first word, and
/// the rest of the current chunk.
struct PagePool {
    returned: Option<NonNull<u8>>,
    chunk_next: Option<NonNull<u8>>,
    chunk_left: usize,
}

// SAFETY: the pool only holds pointers to pages it owns, behind its lock.
unsafe impl Send for PagePool {}

static PAGES: spin::Mutex<PagePool> = spin::Mutex::new(PagePool {
    returned: None,
    chunk_next: None,
    chunk_left: 0,
});

fn layout(pages: usize) -> Option<Layout> {
    let bytes = pages.checked_mul(META_PAGE)?;
    Layout::from_size_align(bytes, META_PAGE).ok()
}

fn alloc_run(pages: usize) -> Option<NonNull<u8>> {
    let layout = layout(pages).filter(|l| l.size() > 0)?;
    // SAFETY: the layout has a non-zero size.
    NonNull::new(unsafe { alloc(layout) })
}

impl MetaSource for HeapMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        if pages != 1 {
            return alloc_run(pages);
        }
        let mut pool = PAGES.lock();
        if let Some(page) = pool.returned {
            // SAFETY: a returned page holds the next returned page in its
            // first word, written by `free_pages`.
            pool.returned = unsafe { page.cast::<Option<NonNull<u8>>>().read() };
            return Some(page);
        }
        if pool.chunk_left == 0 {
            pool.chunk_next = Some(alloc_run(CHUNK_PAGES)?);
            pool.chunk_left = CHUNK_PAGES;
        }
        let page = pool.chunk_next?;
        pool.chunk_left -= 1;
        // SAFETY: the chunk has `chunk_left` more pages after this one; when
        // none are left the pointer is one past the chunk and never read.
        pool.chunk_next = Some(unsafe { page.add(META_PAGE) });
        Some(page)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        if pages != 1 {
            if let Some(layout) = layout(pages) {
                // SAFETY: the caller passes back what `alloc_pages(pages)`
                // returned, which `alloc_run` allocated with this layout.
                unsafe { dealloc(base.as_ptr(), layout) };
            }
            return;
        }
        let mut pool = PAGES.lock();
        // SAFETY: the page is ours again and page-aligned, so its first word
        // can hold the link.
        unsafe { base.cast::<Option<NonNull<u8>>>().write(pool.returned) };
        pool.returned = Some(base);
    }
}
