//! Memory for the allocator's own metadata: boundary tag pages, hash
//! tables, slab records and magazines. It comes in pages from a
//! [`MetaSource`] the owner supplies, never from a global heap.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

use lock_api::RawMutex;

use crate::arena::{Arena, Policy};
use crate::constraint::Constraints;

/// Bytes in the pages a [`MetaSource`] hands over.
pub const META_PAGE: usize = 4096;

/// Where arenas and caches get memory for their own metadata: pages for
/// boundary tags, slab records and magazines, and runs of pages for hash
/// tables as they grow.
///
/// Arenas never call a `MetaSource` with their own lock held, so the source
/// may allocate from other arenas (a kernel backs it with physical pages
/// from its `phys` arena, see [`ArenaMeta`]). Caches call it with their slab
/// or depot lock held, so it must not allocate from the cache that uses it;
/// they ask it for pages only when allocating (slab records and tables,
/// and empty magazines stocked for later frees), never when freeing.
pub trait MetaSource: Sync {
    /// Hands over `pages` contiguous, writable pages of [`META_PAGE`] bytes,
    /// aligned to [`META_PAGE`], or `None` when there is no memory. The
    /// caller owns them until it gives them back with [`MetaSource::free_pages`].
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>>;

    /// Takes back pages handed over by [`MetaSource::alloc_pages`].
    ///
    /// # Safety
    /// `base` and `pages` are exactly what one earlier `alloc_pages` call of
    /// this source returned and was asked for, and the memory is not used
    /// after this call.
    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize);
}

/// Meta pages from an arena whose integers are addresses of memory this
/// program may use (a kernel's direct map, a host buffer): metadata from
/// arenas, as the design asks.
pub struct ArenaMeta<'a, 's, R: RawMutex> {
    arena: &'a Arena<'s, R>,
}

impl<'a, 's, R: RawMutex> ArenaMeta<'a, 's, R> {
    /// Meta pages taken from `arena` by `xalloc` with page alignment.
    ///
    /// # Safety
    /// Every integer `arena` hands out must be the address of writable
    /// memory that nothing else uses while it is allocated.
    pub const unsafe fn new(arena: &'a Arena<'s, R>) -> Self {
        ArenaMeta { arena }
    }
}

impl<'s, R: RawMutex> MetaSource for ArenaMeta<'_, 's, R>
where
    Arena<'s, R>: Sync,
{
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        let bytes = (pages as u64).checked_mul(META_PAGE as u64)?;
        let addr = self
            .arena
            .xalloc(
                bytes,
                &Constraints::aligned(META_PAGE as u64),
                Policy::InstantFit,
            )
            .ok()?;
        NonNull::new(usize::try_from(addr).ok()? as *mut u8)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        let bytes = (pages * META_PAGE) as u64;
        // The pages came from this arena, so the free cannot be refused.
        let _ = self.arena.xfree(base.as_ptr() as usize as u64, bytes);
    }
}

/// Fixed-size records carved from meta pages, with a free chain through
/// the records' first word and a chain of pages through the pages' first
/// word. Records are handed out uninitialised.
pub(crate) struct RecordPool<T> {
    spare: Option<NonNull<u8>>,
    pages: Option<NonNull<u8>>,
    /// Meta pages the pool owns.
    pub(crate) page_count: usize,
    /// Records handed out and not given back.
    pub(crate) in_use: usize,
    _records: PhantomData<T>,
}

// SAFETY: the pool only holds pointers to pages it owns; whoever holds it
// behind a lock moves it between threads with that lock.
unsafe impl<T> Send for RecordPool<T> {}

impl<T> RecordPool<T> {
    /// Where the first record of a page starts: after the page link.
    const FIRST: usize = size_of::<usize>().next_multiple_of(align_of::<T>());
    /// Records per page.
    pub(crate) const PER_PAGE: usize = (META_PAGE - Self::FIRST) / size_of::<T>();
    const FITS: () = assert!(
        Self::PER_PAGE >= 1 && size_of::<T>() >= size_of::<usize>() && align_of::<T>() <= META_PAGE
    );

    pub(crate) const fn new() -> Self {
        RecordPool {
            spare: None,
            pages: None,
            page_count: 0,
            in_use: 0,
            _records: PhantomData,
        }
    }

    /// An uninitialised record, taking a page from `meta` when none is spare.
    pub(crate) fn take(&mut self, meta: &dyn MetaSource) -> Option<NonNull<T>> {
        let () = Self::FITS;
        if self.spare.is_none() {
            let page = meta.alloc_pages(1)?;
            // SAFETY: the page is ours: its first word links the page chain,
            // and each record slot after it links the spare chain.
            unsafe {
                page.cast::<Option<NonNull<u8>>>().write(self.pages);
                for i in (0..Self::PER_PAGE).rev() {
                    let slot = page.add(Self::FIRST + i * size_of::<T>());
                    slot.cast::<Option<NonNull<u8>>>().write(self.spare);
                    self.spare = Some(slot);
                }
            }
            self.pages = Some(page);
            self.page_count += 1;
        }
        let record = self.spare?;
        // SAFETY: a spare record holds the next spare in its first word.
        self.spare = unsafe { record.cast::<Option<NonNull<u8>>>().read() };
        self.in_use += 1;
        Some(record.cast())
    }

    /// Gives back a record from [`RecordPool::take`] that nothing uses now.
    pub(crate) fn give(&mut self, record: NonNull<T>) {
        let slot = record.cast::<u8>();
        // SAFETY: the record is ours again and holds at least a word.
        unsafe { slot.cast::<Option<NonNull<u8>>>().write(self.spare) };
        self.spare = Some(slot);
        self.in_use -= 1;
    }

    /// Hands every page back to `meta`; no record may be used afterwards.
    pub(crate) fn dispose(&mut self, meta: &dyn MetaSource) {
        let mut page = self.pages.take();
        while let Some(p) = page {
            // SAFETY: each page's first word links the next page.
            page = unsafe { p.cast::<Option<NonNull<u8>>>().read() };
            // SAFETY: the page came from `meta` and none of its records is used.
            unsafe { meta.free_pages(p, 1) };
        }
        *self = RecordPool::new();
    }
}
