//! A [`MetaSource`] over the global allocator, for hosts that have one.

use alloc::alloc::{Layout, alloc, dealloc};
use core::ptr::NonNull;

use crate::tag::{META_PAGE, MetaSource};

/// Meta pages from the process's global allocator (the host, the Wasm
/// module): the meta source for arenas that live where a heap exists.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapMeta;

fn layout(pages: usize) -> Option<Layout> {
    let bytes = pages.checked_mul(META_PAGE)?;
    Layout::from_size_align(bytes, META_PAGE).ok()
}

impl MetaSource for HeapMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let layout = layout(pages).filter(|l| l.size() > 0)?;
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { alloc(layout) })
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        if let Some(layout) = layout(pages) {
            // SAFETY: the caller passes back what `alloc_pages(pages)` returned,
            // which was allocated with this same layout.
            unsafe { dealloc(base.as_ptr(), layout) };
        }
    }
}
