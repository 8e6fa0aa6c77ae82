//! The allocated-segment hash: finds the tag of an allocated segment from
//! its address in expected O(1), so `free` needs no search.
//!
//! Each bucket keeps the start address of its first segment beside the
//! pointer, so a lookup that hits the first segment reads no other tag;
//! further segments of the bucket chain through their tags.
//!
//! It starts with a small table inside the arena and grows, one larger
//! table at a time from the arena's [`crate::MetaSource`], whenever the
//! number of allocated segments passes twice the number of buckets. The
//! table is taken and given back outside the arena's lock (see `Arena`), so
//! growth never blocks a free; when no memory can be had the hash keeps its
//! table and chains grow longer.

use core::mem::size_of;
use core::ptr::NonNull;

use crate::meta::META_PAGE;
use crate::tag::{Link, TagPtr};

/// Buckets in the table that lives inside the arena.
const INLINE_BUCKETS: usize = 16;

/// Fibonacci hashing: the high bits of `addr * 2^64/phi` spread any stride.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A bucket table handed over by the meta source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    pub(crate) base: NonNull<u8>,
    pub(crate) pages: usize,
}

/// One bucket: its first segment and that segment's start.
#[derive(Clone, Copy)]
pub(crate) struct Bucket {
    key: u64,
    head: Link,
}

const EMPTY: Bucket = Bucket { key: 0, head: None };

/// The hash of allocated segments, chained through `list_prev`/`list_next`.
pub(crate) struct AllocHash {
    inline: [Bucket; INLINE_BUCKETS],
    table: Option<Table>,
    /// log2 of the number of buckets.
    bits: u32,
    /// Allocated segments in the hash.
    pub(crate) count: usize,
    /// How many times the table has grown.
    pub(crate) resizes: u64,
}

impl AllocHash {
    pub(crate) const fn new() -> Self {
        AllocHash {
            inline: [EMPTY; INLINE_BUCKETS],
            table: None,
            bits: INLINE_BUCKETS.trailing_zeros(),
            count: 0,
            resizes: 0,
        }
    }

    /// Number of buckets.
    pub(crate) fn buckets(&self) -> usize {
        1 << self.bits
    }

    #[inline(always)]
    fn index(&self, addr: u64) -> usize {
        (addr.wrapping_mul(GOLDEN) >> (64 - self.bits)) as usize
    }

    #[inline(always)]
    fn slot(&mut self, index: usize) -> &mut Bucket {
        match self.table {
            // SAFETY: the table holds `1 << bits` buckets (checked when it was
            // installed) and `index` is below that; `&mut self` makes this the
            // only access.
            Some(table) => unsafe { &mut *table.base.cast::<Bucket>().as_ptr().add(index) },
            None => &mut self.inline[index],
        }
    }

    /// The first segment of bucket `index`, and whether the bucket's cached
    /// start agrees with it (for the checker).
    pub(crate) fn bucket(&mut self, index: usize) -> (Link, bool) {
        let bucket = *self.slot(index);
        (
            bucket.head,
            bucket.head.is_none_or(|head| head.start() == bucket.key),
        )
    }

    /// Whether `addr` hashes to bucket `index` (for the checker).
    pub(crate) fn hashes_to(&self, addr: u64, index: usize) -> bool {
        self.index(addr) == index
    }

    /// Adds an allocated segment.
    #[inline]
    pub(crate) fn insert(&mut self, seg: TagPtr) {
        let key = seg.start();
        let slot = self.slot(self.index(key));
        match slot.head {
            // Second in the chain, so the bucket keeps its cached key.
            Some(head) => {
                let next = head.list_next();
                seg.set_list_prev(Some(head));
                seg.set_list_next(next);
                head.set_list_next(Some(seg));
                if let Some(next) = next {
                    next.set_list_prev(Some(seg));
                }
            }
            None => {
                *slot = Bucket {
                    key,
                    head: Some(seg),
                };
                seg.set_list_prev(None);
                seg.set_list_next(None);
            }
        }
        self.count += 1;
    }

    /// The allocated segment starting at `addr`, if any.
    #[inline]
    pub(crate) fn find(&mut self, addr: u64) -> Link {
        let bucket = *self.slot(self.index(addr));
        let head = bucket.head?;
        if bucket.key == addr {
            return Some(head);
        }
        let mut cursor = head.list_next();
        while let Some(seg) = cursor {
            if seg.start() == addr {
                return Some(seg);
            }
            cursor = seg.list_next();
        }
        None
    }

    /// Takes an allocated segment out.
    #[inline]
    pub(crate) fn remove(&mut self, seg: TagPtr) {
        let prev = seg.list_prev();
        let next = seg.list_next();
        match prev {
            Some(prev) => prev.set_list_next(next),
            None => {
                let key = next.map_or(0, |n| n.start());
                *self.slot(self.index(seg.start())) = Bucket { key, head: next };
            }
        }
        if let Some(next) = next {
            next.set_list_prev(prev);
        }
        seg.set_list_prev(None);
        seg.set_list_next(None);
        self.count -= 1;
    }

    /// Pages for the table the hash wants now, if it is overloaded.
    pub(crate) fn wanted_pages(&self) -> Option<usize> {
        if self.count <= 2 * self.buckets() {
            return None;
        }
        let buckets = self.count.checked_next_power_of_two()?;
        let bytes = buckets.checked_mul(size_of::<Bucket>())?;
        Some(bytes.div_ceil(META_PAGE))
    }

    /// Moves every segment into `table` if it is still wanted and larger,
    /// and returns the table no longer used (the old one, or `table` itself
    /// if it came too late), for the caller to give back.
    ///
    /// # Safety
    /// `table` is writable memory of `table.pages` meta pages that the arena
    /// owns and no one else uses.
    pub(crate) unsafe fn grow(&mut self, table: Table) -> Option<Table> {
        let capacity = table.pages * META_PAGE / size_of::<Bucket>();
        let bits = capacity.ilog2();
        if self.wanted_pages().is_none() || bits <= self.bits {
            return Some(table);
        }
        let buckets = table.base.cast::<Bucket>();
        for i in 0..(1usize << bits) {
            // SAFETY: `1 << bits <= capacity` buckets fit in the table.
            unsafe { buckets.as_ptr().add(i).write(EMPTY) };
        }
        let old_buckets = self.buckets();
        let mut moved: Link = None;
        for index in 0..old_buckets {
            let mut cursor = core::mem::replace(self.slot(index), EMPTY).head;
            while let Some(seg) = cursor {
                cursor = seg.list_next();
                seg.set_list_next(moved);
                moved = Some(seg);
            }
        }
        let old = self.table.replace(table);
        self.bits = bits;
        self.count = 0;
        while let Some(seg) = moved {
            moved = seg.list_next();
            self.insert(seg);
        }
        self.resizes += 1;
        old
    }

    /// Forgets every segment and hands back the table, if one was installed.
    pub(crate) fn reset(&mut self) -> Option<Table> {
        let old = self.table.take();
        let resizes = self.resizes;
        *self = AllocHash::new();
        self.resizes = resizes;
        old
    }
}
