//! A [`MetaSource`] over the global allocator, for hosts that have one.

use alloc::alloc::{Layout, alloc, dealloc};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::meta::{META_PAGE, MetaSource};

/// Meta pages from the process's global allocator (the host, the Wasm
/// module): the meta source for arenas that live where a heap exists.
///
/// Single pages (boundary tags) are cut from chunks of [`CHUNK_PAGES`]
/// pages so that an arena's tags lie close together, as a kernel's pages
/// from its direct map do; a page given back is kept for the next caller.
/// Runs of pages (hash tables) come straight from the global allocator.
///
/// # Large pages
///
/// Once the pool has fetched [`HUGE_AFTER_PAGES`] pages in chunks (16 MiB:
/// arenas of a hundred thousand segments and more), its chunks become
/// [`HUGE_CHUNK_PAGES`] pages (2 MiB) aligned to 2 MiB, and so do runs of
/// at least that size: on Linux with the `std` feature each is advised
/// `MADV_HUGEPAGE`, so that where transparent huge pages are enabled
/// (`always` or `madvise`) the kernel backs it with one 2 MiB page, and a
/// walk over a million tags misses the TLB far less (about 250 ns per
/// random load in 64 MiB became 170 ns on the machines this was measured
/// on). Smaller arenas keep their small chunks, so a chunk's unused rest
/// stays within a few percent of what the pool holds.
///
/// # When the global allocator itself uses `HeapMeta`
///
/// A process whose `#[global_allocator]` is a [`crate::GlobalHeap`] over
/// arenas and caches that take their metadata from `HeapMeta` calls back
/// into `HeapMeta` from inside the global allocator. A chunk is a request
/// of 256 KiB (2 MiB later), beyond the largest size class, so [`crate::SizeClasses`]
/// takes it from its arena, which may first need a page of tags from
/// `HeapMeta`, and then a run for its growing hash table, which again
/// comes from the arena, which may want to grow its hash again. So that
/// this ends, and never deadlocks:
/// - `HeapMeta` holds no lock while it calls the global allocator;
/// - it fetches the next chunk while 8 pages are still at hand, one such
///   fetch at a time, and it starts with a static reserve of 8 pages: calls
///   made meanwhile (those the fetch itself causes, and other threads')
///   take those pages. A call that finds no page at all fetches a chunk of
///   its own; when a chunk comes before the current one is used up, the
///   rest of the current one joins the pages given back;
/// - at most 16 of its calls are inside the global allocator at once; one
///   more gets `None`, as when there is no memory (an arena then falls
///   back to its static tag pool, or keeps its hash table). A recursion
///   through the global allocator ends after 16 levels at most; under any
///   other global allocator the limit only matters when more threads than
///   that ask at the same instant.
///
/// While the `GlobalHeap` is being made it answers null, so the pages its
/// arenas and caches take then come from the static reserve.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapMeta;

/// Pages in each chunk single pages are cut from, until the pool has
/// fetched [`HUGE_AFTER_PAGES`].
pub const CHUNK_PAGES: usize = 64;

/// Pages in a chunk once the pool has fetched [`HUGE_AFTER_PAGES`]: 2 MiB,
/// one large page. Runs of at least this many pages are aligned to it too.
pub const HUGE_CHUNK_PAGES: usize = 512;

/// Bytes of a large chunk, and the alignment of large runs: one 2 MiB page.
const HUGE_BYTES: usize = HUGE_CHUNK_PAGES * META_PAGE;

/// Pages fetched in chunks after which chunks are [`HUGE_CHUNK_PAGES`].
pub const HUGE_AFTER_PAGES: usize = 4096;

/// Single pages kept at hand while the next chunk is fetched: fewer left
/// starts the fetch. Also the size of the static reserve the pool starts
/// with.
const RESERVE_PAGES: usize = 8;

/// Calls of `HeapMeta` that may be inside the global allocator at once.
const MAX_NESTED: usize = 16;

/// Single pages: those given back, chained through their first word, and
/// the rest of the current chunk.
struct PagePool {
    returned: Option<NonNull<u8>>,
    returned_count: usize,
    chunk_next: Option<NonNull<u8>>,
    chunk_left: usize,
    /// Whether a caller is fetching the next chunk while pages are left.
    fetching: bool,
    /// Pages fetched in chunks so far.
    fetched: usize,
}

// SAFETY: the pool only holds pointers to pages it owns, behind its lock.
unsafe impl Send for PagePool {}

impl PagePool {
    /// Pages at hand.
    fn available(&self) -> usize {
        self.returned_count + self.chunk_left
    }

    fn take(&mut self) -> Option<NonNull<u8>> {
        if let Some(page) = self.returned {
            // SAFETY: a returned page holds the next returned page in its
            // first word, written by `give`.
            self.returned = unsafe { page.cast::<Option<NonNull<u8>>>().read() };
            self.returned_count -= 1;
            return Some(page);
        }
        self.cut()
    }

    /// The next page of the current chunk.
    fn cut(&mut self) -> Option<NonNull<u8>> {
        if self.chunk_left == 0 {
            return None;
        }
        let page = self.chunk_next?;
        self.chunk_left -= 1;
        // SAFETY: the chunk has `chunk_left` more pages after this one; when
        // none are left the pointer is one past the chunk and never read.
        self.chunk_next = Some(unsafe { page.add(META_PAGE) });
        Some(page)
    }

    /// Pages in the next chunk to fetch.
    fn chunk_pages(&self) -> usize {
        if self.fetched >= HUGE_AFTER_PAGES {
            HUGE_CHUNK_PAGES
        } else {
            CHUNK_PAGES
        }
    }

    /// Keeps a page that is the pool's again.
    ///
    /// # Safety
    /// `page` is a writable, page-aligned meta page that nothing else uses.
    unsafe fn give(&mut self, page: NonNull<u8>) {
        // SAFETY: the caller's promise: its first word can hold the link.
        unsafe { page.cast::<Option<NonNull<u8>>>().write(self.returned) };
        self.returned = Some(page);
        self.returned_count += 1;
    }

    /// Cuts pages from `chunk` of `pages` pages from now on; the rest of
    /// the current chunk joins the returned pages.
    fn add_chunk(&mut self, chunk: NonNull<u8>, pages: usize) {
        while let Some(page) = self.cut() {
            // SAFETY: a page of the current chunk is the pool's.
            unsafe { self.give(page) };
        }
        self.chunk_next = Some(chunk);
        self.chunk_left = pages;
        self.fetched = self.fetched.saturating_add(pages);
    }
}

/// The static reserve: the pages the first chunk is fetched over.
#[repr(C, align(4096))]
struct Reserve(UnsafeCell<[u8; RESERVE_PAGES * META_PAGE]>);

// SAFETY: its pages are only reached through the pool, one owner at a time.
unsafe impl Sync for Reserve {}

static RESERVE: Reserve = Reserve(UnsafeCell::new([0; RESERVE_PAGES * META_PAGE]));

static PAGES: spin::Mutex<PagePool> = spin::Mutex::new(PagePool {
    returned: None,
    returned_count: 0,
    // The pool starts with the static reserve as its chunk.
    chunk_next: NonNull::new(RESERVE.0.get().cast::<u8>()),
    chunk_left: RESERVE_PAGES,
    fetching: false,
    fetched: 0,
});

/// Calls of `HeapMeta` inside the global allocator now.
static NESTED: AtomicUsize = AtomicUsize::new(0);

/// How `pages` pages are asked of the global allocator: aligned to a large
/// page from [`HUGE_CHUNK_PAGES`] pages on, to a meta page below.
fn layout(pages: usize) -> Option<Layout> {
    let bytes = pages.checked_mul(META_PAGE)?;
    let align = if pages >= HUGE_CHUNK_PAGES {
        HUGE_BYTES
    } else {
        META_PAGE
    };
    Layout::from_size_align(bytes, align).ok()
}

/// Asks the kernel to back a large-page-aligned run with large pages.
#[cfg(all(feature = "std", target_os = "linux"))]
fn advise_huge(run: NonNull<u8>, layout: Layout) {
    if layout.align() >= HUGE_BYTES {
        // SAFETY: the run is memory this process owns (just allocated with
        // this layout); MADV_HUGEPAGE changes how it is backed, never its
        // contents. A refusal (no THP in this kernel) changes nothing.
        unsafe { libc::madvise(run.as_ptr().cast(), layout.size(), libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(all(feature = "std", target_os = "linux")))]
fn advise_huge(_run: NonNull<u8>, _layout: Layout) {}

/// `pages` pages from the global allocator, unless [`MAX_NESTED`] calls
/// are in it already. Called with no lock held.
fn alloc_run(pages: usize) -> Option<NonNull<u8>> {
    let layout = layout(pages).filter(|l| l.size() > 0)?;
    if NESTED.fetch_add(1, Ordering::Relaxed) >= MAX_NESTED {
        NESTED.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    // SAFETY: the layout has a non-zero size.
    let run = NonNull::new(unsafe { alloc(layout) });
    NESTED.fetch_sub(1, Ordering::Relaxed);
    if let Some(run) = run {
        advise_huge(run, layout);
    }
    run
}

impl MetaSource for HeapMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        if pages != 1 {
            return alloc_run(pages);
        }
        let (page, early, chunk_pages) = {
            let mut pool = PAGES.lock();
            let page = pool.take();
            let early = !pool.fetching && pool.available() < RESERVE_PAGES;
            pool.fetching |= early;
            (page, early, pool.chunk_pages())
        };
        // Fetch a chunk when the pool runs low and no one else fetches, or
        // when it has no page at all; never with the lock held.
        if page.is_some() && !early {
            return page;
        }
        let chunk = alloc_run(chunk_pages);
        let mut pool = PAGES.lock();
        if early {
            pool.fetching = false;
        }
        if let Some(chunk) = chunk {
            pool.add_chunk(chunk, chunk_pages);
        }
        page.or_else(|| pool.take())
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
        // SAFETY: the caller gives back a page `alloc_pages(1)` handed out
        // (page-aligned and writable) and uses it no more.
        unsafe { PAGES.lock().give(base) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_to_a_large_page_after_sixteen_mib() {
        let mut pool = PagePool {
            returned: None,
            returned_count: 0,
            chunk_next: None,
            chunk_left: 0,
            fetching: false,
            fetched: 0,
        };
        let mut chunks = 0;
        // Dangling but aligned chunk pointers: `add_chunk` of an empty pool
        // cuts nothing from them and `chunk_pages` reads only the count.
        let chunk = NonNull::<u8>::dangling();
        while pool.chunk_pages() == CHUNK_PAGES {
            pool.chunk_left = 0;
            pool.add_chunk(chunk, CHUNK_PAGES);
            chunks += 1;
        }
        assert_eq!(chunks * CHUNK_PAGES, HUGE_AFTER_PAGES);
        assert_eq!(pool.chunk_pages(), HUGE_CHUNK_PAGES);
        assert_eq!(layout(HUGE_CHUNK_PAGES).map(|l| l.align()), Some(2 << 20));
        assert_eq!(
            layout(HUGE_CHUNK_PAGES - 1).map(|l| l.align()),
            Some(META_PAGE)
        );
    }
}
