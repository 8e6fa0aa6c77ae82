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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeapMeta;
    use crate::testing::Budget;

    /// A three-word record, as small records go.
    type Rec = [u64; 3];

    /// Single pages that are not [`META_PAGE`]-aligned (a broken meta
    /// source): each is 64 bytes into two pages of [`HeapMeta`].
    struct Misaligned;

    impl MetaSource for Misaligned {
        fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
            let base = HeapMeta.alloc_pages(pages + 1)?;
            // SAFETY: 64 bytes into a run of more than a page.
            Some(unsafe { base.add(64) })
        }

        unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
            // SAFETY: `alloc_pages` handed out 64 bytes into a run of
            // `pages + 1` pages from `HeapMeta`.
            unsafe { HeapMeta.free_pages(base.sub(64), pages + 1) }
        }
    }

    fn page_start(record: NonNull<Rec>) -> usize {
        page_of(record.cast()) as usize
    }

    #[test]
    fn meta_pages_are_a_power_of_two_and_records_fit_after_the_header() {
        assert!(META_PAGE.is_power_of_two() && META_PAGE >= 4096);
        assert_eq!(RecordPool::<Rec>::FIRST, 16);
        assert_eq!(RecordPool::<Rec>::PER_PAGE, (META_PAGE - 16) / 24);
        // A record more aligned than the header starts at its alignment.
        #[repr(align(64))]
        #[allow(dead_code)]
        struct Wide([u64; 8]);
        assert_eq!(RecordPool::<Wide>::FIRST, 64);
        assert_eq!(RecordPool::<Wide>::PER_PAGE, META_PAGE / 64 - 1);
    }

    #[test]
    fn records_fill_one_page_before_the_next_and_never_overlap() {
        let meta = Budget::new(2);
        let mut pool = RecordPool::<Rec>::new();
        let per_page = RecordPool::<Rec>::PER_PAGE;
        let mut records: Vec<NonNull<Rec>> =
            (0..=per_page).map(|_| pool.take(&meta).unwrap()).collect();
        assert_eq!(
            (pool.page_count, pool.in_use, meta.out()),
            (2, per_page + 1, 2)
        );
        let first_page = page_start(records[0]);
        for (i, &r) in records[..per_page].iter().enumerate() {
            assert_eq!(page_start(r), first_page, "record {i} is on the first page");
            let offset = r.as_ptr() as usize - first_page;
            assert_eq!(offset, RecordPool::<Rec>::FIRST + i * size_of::<Rec>());
        }
        assert_ne!(page_start(records[per_page]), first_page);
        // A record given back is the next one taken.
        let back = records.pop().unwrap();
        pool.give(back);
        assert_eq!(pool.take(&meta), Some(back));
        records.push(back);
        for r in records {
            pool.give(r);
        }
        assert_eq!(pool.in_use, 0);
        pool.dispose(&meta);
        assert_eq!((pool.page_count, meta.out()), (0, 0));
    }

    #[test]
    fn a_record_pool_whose_meta_source_refuses_changes_nothing() {
        let meta = Budget::new(0);
        let mut pool = RecordPool::<Rec>::new();
        assert_eq!(pool.take(&meta), None);
        assert_eq!((pool.page_count, pool.in_use, pool.spare), (0, 0, None));
        meta.grant(1);
        let r = pool.take(&meta).unwrap();
        // The page's other records are spare: no second page is asked for.
        let more: Vec<_> = (1..RecordPool::<Rec>::PER_PAGE)
            .map(|_| pool.take(&meta).unwrap())
            .collect();
        assert_eq!(pool.take(&meta), None, "the budget is spent");
        assert_eq!(
            (pool.page_count, pool.in_use),
            (1, RecordPool::<Rec>::PER_PAGE)
        );
        pool.give(r);
        for r in more {
            pool.give(r);
        }
        pool.dispose(&meta);
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn take_empty_pages_gives_back_only_pages_with_no_record_in_use() {
        let meta = Budget::new(3);
        let mut pool = RecordPool::<Rec>::new();
        let per_page = RecordPool::<Rec>::PER_PAGE;
        let records: Vec<NonNull<Rec>> = (0..2 * per_page + 1)
            .map(|_| pool.take(&meta).unwrap())
            .collect();
        let first = page_start(records[0]);
        let (kept, last) = (records[per_page + 3], records[2 * per_page]);
        // Free the first page's records and all but one of the second's;
        // the third page's one record stays in use.
        for &r in &records[..2 * per_page] {
            if r != kept {
                pool.give(r);
            }
        }
        let mut out = MetaPages::new();
        assert!(out.is_empty());
        pool.take_empty_pages(&mut out);
        assert!(!out.is_empty());
        out.give_back(&meta);
        assert_eq!(
            (pool.page_count, meta.out()),
            (2, 2),
            "only the first page left"
        );
        // The spare records left are on the pages that stayed.
        let mut again = Vec::new();
        for _ in 0..per_page - 1 {
            let r = pool.take(&meta).unwrap();
            assert_ne!(page_start(r), first, "a record of the page given back");
            again.push(r);
        }
        assert_eq!(meta.out(), 2, "the spare records sufficed");
        // With nothing in use, every page goes.
        for r in again.into_iter().chain([kept, last]) {
            pool.give(r);
        }
        let mut out = MetaPages::new();
        pool.take_empty_pages(&mut out);
        out.give_back(&meta);
        assert_eq!((pool.page_count, pool.in_use, meta.out()), (0, 0, 0));
        // A pool emptied this way works as new.
        let r = pool.take(&meta).unwrap();
        pool.give(r);
        pool.dispose(&meta);
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn take_empty_pages_moves_nothing_when_a_page_is_not_aligned() {
        let mut pool = RecordPool::<Rec>::new();
        let a = pool.take(&Misaligned).unwrap();
        let b = pool.take(&Misaligned).unwrap();
        pool.give(a);
        let mut out = MetaPages::new();
        pool.take_empty_pages(&mut out);
        assert!(out.is_empty(), "no page can be told empty by masking");
        assert_eq!((pool.page_count, pool.in_use), (1, 1));
        assert_eq!(pool.take(&Misaligned), Some(a), "the spare chain is intact");
        pool.give(a);
        pool.give(b);
        pool.dispose(&Misaligned);
    }

    #[test]
    fn meta_pages_give_back_every_run_with_its_length() {
        let meta = Budget::new(6);
        let mut out = MetaPages::new();
        for pages in [1, 3, 2] {
            let run = meta.alloc_pages(pages).unwrap();
            // SAFETY: a fresh run from `meta`, unused.
            unsafe { out.push(run, pages) };
        }
        assert_eq!(meta.out(), 6);
        assert!(meta.alloc_pages(1).is_none(), "the budget is spent");
        out.give_back(&meta);
        // Wrong lengths would leave the count off.
        assert_eq!(meta.out(), 0);
        MetaPages::new().give_back(&meta);
        assert_eq!(meta.out(), 0);
    }
}
