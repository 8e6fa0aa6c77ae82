//! Memory for the allocator's own metadata: boundary tag pages, hash
//! tables, slab records and magazines. It comes in pages from a
//! [`MetaSource`] the owner supplies, never from a global heap.

use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::ptr::NonNull;

/// Bytes in the pages a [`MetaSource`] hands over.
pub const META_PAGE: usize = 4096;

/// Where arenas and caches get memory for their own metadata: pages for
/// boundary tags, slab records and magazines, and runs of pages for hash
/// tables as they grow.
///
/// Arenas never call a `MetaSource` with an arena lock of theirs held, and
/// call their [`Source`](crate::Source)s unlocked too, so the source may
/// allocate from other arenas (a kernel backs it with physical pages from
/// its `phys` arena, see [`ArenaMeta`](crate::ArenaMeta)), even from one that imports from
/// the arena it serves, directly or further down the tree. Caches call it
/// with their slab or depot lock held, so it must not allocate from the
/// cache that uses it; they ask it for pages only when allocating (slab
/// records and tables, and empty magazines stocked for later frees), never
/// when freeing.
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

/// Meta pages on their way back to a [`MetaSource`]: taken out of an
/// arena's or a cache's bookkeeping under its lock, and given back by
/// [`MetaPages::give_back`] once that lock is dropped (the source may
/// allocate from or free into other arenas). Each run is chained through
/// its first word, its length in its second, so collecting them allocates
/// nothing.
#[must_use = "the pages leak unless given back"]
pub(crate) struct MetaPages {
    head: Option<NonNull<u8>>,
}

impl MetaPages {
    pub(crate) const fn new() -> Self {
        MetaPages { head: None }
    }

    /// Whether no run was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Adds a run of `pages` pages.
    ///
    /// # Safety
    /// `base` and `pages` are what one `alloc_pages` call of the meta source
    /// this will be given back to returned, and nothing uses the run now.
    pub(crate) unsafe fn push(&mut self, base: NonNull<u8>, pages: usize) {
        // SAFETY: the run is ours, META_PAGE-aligned and at least a page,
        // so its first two words can hold the link and the length.
        unsafe {
            base.cast::<Option<NonNull<u8>>>().write(self.head);
            base.cast::<usize>().add(1).write(pages);
        }
        self.head = Some(base);
    }

    /// Gives every run back to `meta`. Call it with no arena, cache or
    /// depot lock held.
    pub(crate) fn give_back(self, meta: &dyn MetaSource) {
        let mut run = self.head;
        while let Some(base) = run {
            // SAFETY: `push` wrote the link and the length.
            let pages = unsafe {
                run = base.cast::<Option<NonNull<u8>>>().read();
                base.cast::<usize>().add(1).read()
            };
            // SAFETY: per `push`'s contract, `meta` handed over this run.
            unsafe { meta.free_pages(base, pages) };
        }
    }
}

/// Fixed-size records carved from meta pages, with a free chain through
/// the records' first word and a chain of pages through the pages' first
/// word. Records are handed out uninitialised. A page's second word is
/// scratch for [`RecordPool::take_empty_pages`].
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

/// A page header word: 0 the next page, 1 the scratch count.
///
/// # Safety
/// `page` is a page of a record pool.
unsafe fn header(page: NonNull<u8>, word: usize) -> *mut usize {
    // SAFETY: the header's two words lie before the first record.
    unsafe { page.cast::<usize>().as_ptr().add(word) }
}

/// The page a record lies in (pages are META_PAGE-aligned).
fn page_of(record: NonNull<u8>) -> *mut u8 {
    (record.as_ptr() as usize & !(META_PAGE - 1)) as *mut u8
}

impl<T> RecordPool<T> {
    /// Where the first record of a page starts: after the page header.
    const FIRST: usize = (2 * size_of::<usize>()).next_multiple_of(align_of::<T>());
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

    /// Moves every page none of whose records is in use into `out`, for the
    /// caller to give back once its lock is dropped. Counts each page's
    /// spare records in its header, finding a record's page by masking
    /// (pages are [`META_PAGE`]-aligned; should one not be, nothing moves).
    /// Allocates nothing; O(spare records + pages).
    pub(crate) fn take_empty_pages(&mut self, out: &mut MetaPages) {
        const LEAVING: usize = usize::MAX;
        if self.in_use == 0 {
            // Every page is empty: no need to count.
            let mut page = self.pages.take();
            while let Some(p) = page {
                // SAFETY: each page's first word links the next page.
                page = unsafe { p.cast::<Option<NonNull<u8>>>().read() };
                // SAFETY: the page came from the meta source in one call of
                // one page, and no record of it is in use.
                unsafe { out.push(p, 1) };
            }
            *self = RecordPool::new();
            return;
        }
        let mut page = self.pages;
        while let Some(p) = page {
            if !(p.as_ptr() as usize).is_multiple_of(META_PAGE) {
                return;
            }
            // SAFETY: a page of this pool; its first word links the next.
            unsafe {
                header(p, 1).write(0);
                page = p.cast::<Option<NonNull<u8>>>().read();
            }
        }
        let mut spare = self.spare;
        while let Some(r) = spare {
            // SAFETY: every page is aligned (checked above), so the masked
            // address is the record's page; a spare record links the next.
            unsafe {
                *header(NonNull::new_unchecked(page_of(r)), 1) += 1;
                spare = r.cast::<Option<NonNull<u8>>>().read();
            }
        }
        let mut taken = 0usize;
        let mut leaving: Option<NonNull<u8>> = None;
        let (mut prev, mut page): (Option<NonNull<u8>>, _) = (None, self.pages);
        while let Some(p) = page {
            // SAFETY: a page of this pool.
            let (next, spare) = unsafe { (p.cast::<Option<NonNull<u8>>>().read(), *header(p, 1)) };
            if spare == Self::PER_PAGE {
                match prev {
                    // SAFETY: a page of this pool, staying.
                    Some(prev) => unsafe { prev.cast::<Option<NonNull<u8>>>().write(next) },
                    None => self.pages = next,
                }
                // SAFETY: as above; the page now links the leaving pages
                // and is marked for the pass below.
                unsafe {
                    p.cast::<Option<NonNull<u8>>>().write(leaving);
                    header(p, 1).write(LEAVING);
                }
                leaving = Some(p);
                taken += 1;
            } else {
                prev = Some(p);
            }
            page = next;
        }
        if taken == 0 {
            return;
        }
        // Unlink the leaving pages' records, keeping the others in order,
        // then hand the leaving pages over.
        let (mut head, mut tail): (Option<NonNull<u8>>, Option<NonNull<u8>>) = (None, None);
        let mut cursor = self.spare;
        while let Some(r) = cursor {
            // SAFETY: as in the counting pass.
            let (next, page) = unsafe {
                (
                    r.cast::<Option<NonNull<u8>>>().read(),
                    NonNull::new_unchecked(page_of(r)),
                )
            };
            cursor = next;
            // SAFETY: a page of this pool, leaving or staying.
            if unsafe { *header(page, 1) } == LEAVING {
                continue;
            }
            // SAFETY: a spare record of a staying page.
            unsafe { r.cast::<Option<NonNull<u8>>>().write(None) };
            match tail {
                // SAFETY: as above.
                Some(t) => unsafe { t.cast::<Option<NonNull<u8>>>().write(Some(r)) },
                None => head = Some(r),
            }
            tail = Some(r);
        }
        self.spare = head;
        self.page_count -= taken;
        while let Some(p) = leaving {
            // SAFETY: the leaving chain links through the first word; the
            // page came from the meta source in one call of one page, and
            // none of its records is in use or on the spare chain now.
            unsafe {
                leaving = p.cast::<Option<NonNull<u8>>>().read();
                out.push(p, 1);
            }
        }
    }

    /// An uninitialised record, taking a page from `meta` when none is spare.
    pub(crate) fn take(&mut self, meta: &dyn MetaSource) -> Option<NonNull<T>> {
        let () = Self::FITS;
        if self.spare.is_none() {
            let page = meta.alloc_pages(1)?;
            // SAFETY: the page is ours: its first word links the page chain,
            // and each record slot after the header links the spare chain.
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
