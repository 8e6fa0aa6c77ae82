//! The slab layer: objects of one size carved from slabs the cache takes
//! from its arena, with all bookkeeping outside the slab (so it works the
//! same whether the integers are memory or not).
//!
//! Each slab has a record with a bitmap of its free objects and, when the
//! cache verifies frees, a bitmap of the objects its users hold. Slabs sit
//! on one of three lists (partial, full, empty); allocation prefers partial
//! slabs so that empty ones can be returned. A hash finds the slab of an
//! object: slabs are registered under the slab-size blocks their first and
//! last integer fall in, so any object's block leads to its slab without the
//! slabs having to be aligned.

use core::mem::size_of;
use core::ptr::NonNull;

use lock_api::RawMutex;

use crate::arena::{Arena, Backing};
use crate::error::{Error, ErrorKind, Result};
use crate::hash::bucket_index;
use crate::meta::{META_PAGE, MetaPages, MetaSource, RecordPool};

/// Most objects one slab holds.
pub(crate) const MAX_OBJS: usize = 512;
const WORDS: usize = MAX_OBJS / 64;
const INLINE_BUCKETS: usize = 16;

type SlabLink = Option<NonNull<SlabRec>>;

/// Every arena backs the caches built on it: their slabs are its
/// segments, marked as a cache's.
impl<R: RawMutex> Backing for Arena<'_, R> {
    fn slab_alloc(&self, size: u64, align: u64) -> Result<u64> {
        self.alloc_slab(size, align)
    }

    fn slab_free(&self, base: u64, size: u64, _align: u64) {
        self.free_slab(base, size);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListId {
    Partial,
    Full,
    Empty,
}

/// One slab's record.
pub(crate) struct SlabRec {
    base: u64,
    /// Which slab the layer created this one as (1 for the first).
    seq: u64,
    /// Bit set: the object is free in the slab.
    free: [u64; WORDS],
    /// Bit set: a user holds the object (kept when the cache verifies).
    user: [u64; WORDS],
    nfree: u32,
    list: ListId,
    prev: SlabLink,
    next: SlabLink,
    /// Hash chain links, one per block the slab is registered under.
    chain: [SlabLink; 2],
}

/// Access to a slab record.
///
/// # Safety
/// `p` is a record of the layer whose `&mut` the caller holds, and no other
/// reference to the record is alive.
unsafe fn rec<'x>(p: NonNull<SlabRec>) -> &'x mut SlabRec {
    // SAFETY: per the function's contract.
    unsafe { &mut *p.as_ptr() }
}

#[derive(Clone, Copy)]
struct SlabList {
    head: SlabLink,
    count: usize,
}

impl SlabList {
    const EMPTY: SlabList = SlabList {
        head: None,
        count: 0,
    };
}

/// What the slab layer did, for the cache's statistics.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlabCounts {
    pub(crate) created: u64,
    pub(crate) destroyed: u64,
}

/// The slab layer of one cache.
pub(crate) struct SlabLayer {
    pub(crate) chunk: u64,
    pub(crate) slab_size: u64,
    pub(crate) objs: u32,
    align: u64,
    shift: u32,
    lists: [SlabList; 3],
    inline: [SlabLink; INLINE_BUCKETS],
    table: Option<(NonNull<SlabLink>, usize)>,
    bits: u32,
    records: RecordPool<SlabRec>,
    pub(crate) counts: SlabCounts,
    /// Objects out of the slabs (with users or in magazines).
    pub(crate) out: u64,
}

// SAFETY: the layer owns its records and table; it is only used behind the
// cache's slab lock.
unsafe impl Send for SlabLayer {}

fn list_index(id: ListId) -> usize {
    match id {
        ListId::Partial => 0,
        ListId::Full => 1,
        ListId::Empty => 2,
    }
}

impl SlabLayer {
    /// A layer of `objs` objects of `chunk` integers per slab of
    /// `slab_size` (a power of two), slabs aligned to `align`.
    pub(crate) const fn new(chunk: u64, slab_size: u64, objs: u32, align: u64) -> Self {
        SlabLayer {
            chunk,
            slab_size,
            objs,
            align,
            shift: slab_size.trailing_zeros(),
            lists: [SlabList::EMPTY; 3],
            inline: [None; INLINE_BUCKETS],
            table: None,
            bits: INLINE_BUCKETS.trailing_zeros(),
            records: RecordPool::new(),
            counts: SlabCounts {
                created: 0,
                destroyed: 0,
            },
            out: 0,
        }
    }

    /// Slabs the layer holds now.
    pub(crate) fn slabs(&self) -> usize {
        self.lists.iter().map(|l| l.count).sum()
    }

    /// Meta pages the layer holds: record pages and the hash table.
    pub(crate) fn meta_pages(&self) -> usize {
        self.records.page_count + self.table.map_or(0, |(_, pages)| pages)
    }

    /// Empty slabs the layer holds now.
    pub(crate) fn empty_slabs(&self) -> usize {
        self.lists[2].count
    }

    fn push(&mut self, p: NonNull<SlabRec>, id: ListId) {
        let list = &mut self.lists[list_index(id)];
        // SAFETY: `p` and the old head are records of this layer; each
        // reference lives for one statement.
        unsafe {
            rec(p).list = id;
            rec(p).prev = None;
            rec(p).next = list.head;
            if let Some(head) = list.head {
                rec(head).prev = Some(p);
            }
        }
        list.head = Some(p);
        list.count += 1;
    }

    fn unlink(&mut self, p: NonNull<SlabRec>) {
        // SAFETY: records of this layer, one reference at a time.
        let (id, prev, next) = unsafe { (rec(p).list, rec(p).prev, rec(p).next) };
        let list = &mut self.lists[list_index(id)];
        match prev {
            // SAFETY: as above.
            Some(prev) => unsafe { rec(prev).next = next },
            None => list.head = next,
        }
        if let Some(next) = next {
            // SAFETY: as above.
            unsafe { rec(next).prev = prev };
        }
        list.count -= 1;
    }

    /// The bucket of a slab-size block. The buckets are picked as the
    /// allocated-segment hash picks its own; the rest differs because a
    /// slab is found from any address inside it and slabs are few (see
    /// `hash.rs`): blocks rather than exact starts, and a table rehashed
    /// whole rather than a few buckets per call.
    fn index(&self, block: u64) -> usize {
        bucket_index(block, self.bits)
    }

    fn bucket(&mut self, index: usize) -> &mut SlabLink {
        match self.table {
            // SAFETY: the table holds `1 << bits` links and `index` is below.
            Some((table, _)) => unsafe { &mut *table.as_ptr().add(index) },
            None => &mut self.inline[index],
        }
    }

    /// The buckets a slab at `base` is registered in (the second only when
    /// it differs from the first).
    fn buckets_of(&self, base: u64) -> (usize, Option<usize>) {
        let first = self.index(base >> self.shift);
        let last = self.index((base + (self.slab_size - 1)) >> self.shift);
        (first, (last != first).then_some(last))
    }

    /// Which chain link of the record at `p` continues bucket `bucket`.
    fn link_of(&self, p: NonNull<SlabRec>, bucket: usize) -> usize {
        // SAFETY: a record of this layer.
        let base = unsafe { rec(p).base };
        usize::from(self.buckets_of(base).0 != bucket)
    }

    fn hash_insert(&mut self, p: NonNull<SlabRec>) {
        // SAFETY: a record of this layer.
        let base = unsafe { rec(p).base };
        let (first, second) = self.buckets_of(base);
        for (slot, bucket) in [(0, Some(first)), (1, second)] {
            if let Some(bucket) = bucket {
                let head = *self.bucket(bucket);
                // SAFETY: a record of this layer.
                unsafe { rec(p).chain[slot] = head };
                *self.bucket(bucket) = Some(p);
            }
        }
    }

    fn hash_remove(&mut self, p: NonNull<SlabRec>) {
        // SAFETY: a record of this layer.
        let base = unsafe { rec(p).base };
        let (first, second) = self.buckets_of(base);
        for (slot, bucket) in [(0, Some(first)), (1, second)] {
            let Some(bucket) = bucket else { continue };
            // SAFETY: a record of this layer.
            let after = unsafe { rec(p).chain[slot] };
            let mut prev: SlabLink = None;
            let mut cursor = *self.bucket(bucket);
            while let Some(node) = cursor {
                let link = self.link_of(node, bucket);
                if node == p {
                    match prev {
                        Some(prev) => {
                            let prev_link = self.link_of(prev, bucket);
                            // SAFETY: a record of this layer.
                            unsafe { rec(prev).chain[prev_link] = after };
                        }
                        None => *self.bucket(bucket) = after,
                    }
                    break;
                }
                prev = Some(node);
                // SAFETY: a record of this layer.
                cursor = unsafe { rec(node).chain[link] };
            }
        }
    }

    /// The slab holding `addr`, if any.
    fn lookup(&mut self, addr: u64) -> SlabLink {
        let bucket = self.index(addr >> self.shift);
        let mut cursor = *self.bucket(bucket);
        while let Some(node) = cursor {
            // SAFETY: a record of this layer.
            let base = unsafe { rec(node).base };
            if base <= addr && addr - base < self.slab_size {
                return Some(node);
            }
            let link = self.link_of(node, bucket);
            // SAFETY: a record of this layer.
            cursor = unsafe { rec(node).chain[link] };
        }
        None
    }

    /// Rehashes into a larger table from `meta` when slabs outnumber twice
    /// the buckets; keeps the old table when no memory comes.
    fn maybe_grow(&mut self, meta: &dyn MetaSource) {
        let slabs = self.slabs();
        if slabs <= 2 * (1 << self.bits) {
            return;
        }
        let pages = (slabs.next_power_of_two() * size_of::<SlabLink>()).div_ceil(META_PAGE);
        let Some(base) = meta.alloc_pages(pages) else {
            return;
        };
        let capacity = pages * META_PAGE / size_of::<SlabLink>();
        let bits = capacity.ilog2();
        let table = base.cast::<SlabLink>();
        for i in 0..(1usize << bits) {
            // SAFETY: `1 << bits` links fit in the pages.
            unsafe { table.as_ptr().add(i).write(None) };
        }
        let old = self.table.replace((table, pages));
        self.inline = [None; INLINE_BUCKETS];
        self.bits = bits;
        for list in 0..3 {
            let mut cursor = self.lists[list].head;
            while let Some(p) = cursor {
                self.hash_insert(p);
                // SAFETY: a record of this layer.
                cursor = unsafe { rec(p).next };
            }
        }
        if let Some((old, old_pages)) = old {
            // SAFETY: the old table came from `meta` and is no longer used.
            unsafe { meta.free_pages(old.cast(), old_pages) };
        }
    }

    /// Creates a slab: its integers from `backing`, its record from `meta`.
    fn create(&mut self, backing: &dyn Backing, meta: &dyn MetaSource) -> Result<NonNull<SlabRec>> {
        let p = self.records.take(meta).ok_or(Error::new(
            ErrorKind::NoSpace,
            "no memory for a slab record",
        ))?;
        let base = match backing.slab_alloc(self.slab_size, self.align) {
            Ok(base) => base,
            Err(e) => {
                self.records.give(p);
                return Err(e);
            }
        };
        let mut free = [0u64; WORDS];
        for (i, word) in free.iter_mut().enumerate() {
            let lo = i as u32 * 64;
            *word = match self.objs.saturating_sub(lo) {
                0 => 0,
                n if n >= 64 => u64::MAX,
                n => (1u64 << n) - 1,
            };
        }
        // SAFETY: `p` is an unused record of this layer; write it whole.
        unsafe {
            p.as_ptr().write(SlabRec {
                base,
                seq: self.counts.created + 1,
                free,
                user: [0; WORDS],
                nfree: self.objs,
                list: ListId::Empty,
                prev: None,
                next: None,
                chain: [None, None],
            })
        };
        self.push(p, ListId::Empty);
        self.hash_insert(p);
        self.counts.created += 1;
        self.maybe_grow(meta);
        Ok(p)
    }

    fn relist(&mut self, p: NonNull<SlabRec>) {
        // SAFETY: a record of this layer.
        let (nfree, list) = unsafe { (rec(p).nfree, rec(p).list) };
        let want = if nfree == 0 {
            ListId::Full
        } else if nfree == self.objs {
            ListId::Empty
        } else {
            ListId::Partial
        };
        if want != list {
            self.unlink(p);
            self.push(p, want);
        }
    }

    /// Takes a free object, creating a slab when none has one. Returns the
    /// object and whether its slab was just created (its memory is fresh).
    pub(crate) fn alloc(
        &mut self,
        backing: &dyn Backing,
        meta: &dyn MetaSource,
    ) -> Result<(u64, bool)> {
        let (p, fresh) = match self.lists[0].head.or(self.lists[2].head) {
            Some(p) => (p, false),
            None => (self.create(backing, meta)?, true),
        };
        // SAFETY: a record of this layer, the only reference.
        let slab = unsafe { rec(p) };
        let Some(word) = slab.free.iter().position(|w| *w != 0) else {
            return Err(
                Error::new(ErrorKind::Corrupt, "listed slab has no free object").at(slab.base),
            );
        };
        let bit = slab.free[word].trailing_zeros() as usize;
        slab.free[word] &= !(1 << bit);
        slab.nfree -= 1;
        let addr = slab.base + (word * 64 + bit) as u64 * self.chunk;
        self.relist(p);
        self.out += 1;
        Ok((addr, fresh))
    }

    /// The slab and object index of `addr`, or `BadFree`.
    fn locate(&mut self, addr: u64) -> Result<(NonNull<SlabRec>, usize)> {
        let p = self
            .lookup(addr)
            .ok_or(Error::new(ErrorKind::BadFree, "not an object of this cache").at(addr))?;
        // SAFETY: a record of this layer.
        let base = unsafe { rec(p).base };
        let offset = addr - base;
        let index = offset / self.chunk;
        if !offset.is_multiple_of(self.chunk) || index >= u64::from(self.objs) {
            return Err(Error::new(
                ErrorKind::BadFree,
                "not the start of an object of this cache",
            )
            .at(addr));
        }
        Ok((p, index as usize))
    }

    /// Puts an object back in its slab.
    pub(crate) fn free(&mut self, addr: u64) -> Result<()> {
        let (p, index) = self.locate(addr)?;
        // SAFETY: a record of this layer, the only reference.
        let slab = unsafe { rec(p) };
        let (word, bit) = (index / 64, index % 64);
        if slab.free[word] & (1 << bit) != 0 {
            return Err(Error::new(ErrorKind::BadFree, "object is already free").at(addr));
        }
        if slab.user[word] & (1 << bit) != 0 {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "object a user holds went back to its slab",
            )
            .at(addr));
        }
        slab.free[word] |= 1 << bit;
        slab.nfree += 1;
        self.relist(p);
        self.out -= 1;
        Ok(())
    }

    /// Marks an object handed to a user (verifying caches only).
    pub(crate) fn mark_user(&mut self, addr: u64) -> Result<()> {
        let (p, index) = self.locate(addr)?;
        // SAFETY: a record of this layer, the only reference.
        let slab = unsafe { rec(p) };
        let (word, bit) = (index / 64, index % 64);
        if (slab.free[word] | slab.user[word]) & (1 << bit) != 0 {
            return Err(Error::new(ErrorKind::Corrupt, "object handed out twice").at(addr));
        }
        slab.user[word] |= 1 << bit;
        Ok(())
    }

    /// Checks that a user holds `addr` (verifying caches only): a double
    /// free or a foreign address is `BadFree`.
    pub(crate) fn check_user(&mut self, addr: u64) -> Result<(NonNull<SlabRec>, usize)> {
        let (p, index) = self.locate(addr)?;
        // SAFETY: a record of this layer.
        let user = unsafe { rec(p).user[index / 64] };
        if user & (1 << (index % 64)) == 0 {
            return Err(
                Error::new(ErrorKind::BadFree, "object is not allocated (double free?)").at(addr),
            );
        }
        Ok((p, index))
    }

    /// Whether one of this layer's slabs holds `addr`.
    pub(crate) fn holds(&mut self, addr: u64) -> bool {
        self.lookup(addr).is_some()
    }

    /// Checks that a user holds `addr` and takes the mark off (verifying
    /// caches only): a double free or a foreign address is `BadFree`.
    pub(crate) fn unmark_user(&mut self, addr: u64) -> Result<()> {
        let (p, index) = self.check_user(addr)?;
        // SAFETY: a record of this layer, the only reference.
        unsafe { rec(p).user[index / 64] &= !(1 << (index % 64)) };
        Ok(())
    }

    /// Returns the empty slabs created after the `mark`-th one to `backing`.
    pub(crate) fn reap_since(&mut self, mark: u64, backing: &dyn Backing) {
        let mut cursor = self.lists[2].head;
        while let Some(p) = cursor {
            // SAFETY: a record of this layer.
            let (next, seq, base) = unsafe { (rec(p).next, rec(p).seq, rec(p).base) };
            if seq > mark {
                self.unlink(p);
                self.hash_remove(p);
                backing.slab_free(base, self.slab_size, self.align);
                self.records.give(p);
                self.counts.destroyed += 1;
            }
            cursor = next;
        }
    }

    /// Returns every empty slab to `backing`; how many went.
    pub(crate) fn reap(&mut self, backing: &dyn Backing) -> usize {
        let mut reaped = 0;
        while let Some(p) = self.lists[2].head {
            self.unlink(p);
            self.hash_remove(p);
            // SAFETY: a record of this layer.
            let base = unsafe { rec(p).base };
            backing.slab_free(base, self.slab_size, self.align);
            self.records.give(p);
            self.counts.destroyed += 1;
            reaped += 1;
        }
        reaped
    }

    /// Moves into `out` every record page none of whose records is in use
    /// and, when the layer has no slab left, the hash table, for the caller
    /// to give back once the slab lock is dropped.
    pub(crate) fn take_empty_pages(&mut self, out: &mut MetaPages) {
        self.records.take_empty_pages(out);
        if self.slabs() == 0
            && let Some((table, pages)) = self.table.take()
        {
            // SAFETY: the table came from the meta source in one call of
            // `pages` pages, and with no slab every bucket is empty.
            unsafe { out.push(table.cast(), pages) };
            self.inline = [None; INLINE_BUCKETS];
            self.bits = INLINE_BUCKETS.trailing_zeros();
        }
    }

    /// Returns every slab to `backing`, whatever its objects' state (the
    /// cache is going away).
    pub(crate) fn release_all(&mut self, backing: &dyn Backing) {
        for list in [ListId::Partial, ListId::Full] {
            while let Some(p) = self.lists[list_index(list)].head {
                // SAFETY: a record of this layer.
                let nfree = unsafe { rec(p).nfree };
                self.out -= u64::from(self.objs - nfree);
                self.unlink(p);
                self.push(p, ListId::Empty);
            }
        }
        self.reap(backing);
    }

    /// Checks that an object in a magazine is out of its slab and, when
    /// users are tracked, not held by one.
    pub(crate) fn check_out(&mut self, addr: u64, users_tracked: bool) -> Result<()> {
        let corrupt = |what| Err(Error::new(ErrorKind::Corrupt, what).at(addr));
        let Ok((p, index)) = self.locate(addr) else {
            return corrupt("magazine holds an object that is not this cache's");
        };
        // SAFETY: a record of this layer.
        let (free, user) = unsafe { (rec(p).free, rec(p).user) };
        let (word, bit) = (index / 64, index % 64);
        if free[word] & (1 << bit) != 0 {
            return corrupt("magazine holds an object that is free in its slab");
        }
        if users_tracked && user[word] & (1 << bit) != 0 {
            return corrupt("magazine holds an object a user holds");
        }
        Ok(())
    }

    /// Gives the records and table back to `meta`; the caller reaped every
    /// slab first.
    pub(crate) fn dispose(&mut self, meta: &dyn MetaSource) {
        if let Some((table, pages)) = self.table.take() {
            // SAFETY: the table came from `meta` and is no longer used.
            unsafe { meta.free_pages(table.cast(), pages) };
        }
        self.records.dispose(meta);
        self.inline = [None; INLINE_BUCKETS];
        self.bits = INLINE_BUCKETS.trailing_zeros();
    }

    /// Checks every slab against its list, its bitmaps and the hash, and
    /// returns (objects out of the slabs, objects users hold).
    pub(crate) fn check(&mut self) -> Result<(u64, u64)> {
        let corrupt = |what, at| Err(Error::new(ErrorKind::Corrupt, what).at(at));
        let (mut out, mut users) = (0u64, 0u64);
        let limit = self.records.in_use + 1;
        for (i, id) in [ListId::Partial, ListId::Full, ListId::Empty]
            .into_iter()
            .enumerate()
        {
            let mut seen = 0;
            let mut prev: SlabLink = None;
            let mut cursor = self.lists[i].head;
            while let Some(p) = cursor {
                seen += 1;
                if seen > limit {
                    return corrupt("slab list has a cycle", 0);
                }
                // SAFETY: a record of this layer; copied out, no reference kept.
                let (base, free, user, nfree, list, back, next) = unsafe {
                    let r = rec(p);
                    (r.base, r.free, r.user, r.nfree, r.list, r.prev, r.next)
                };
                let counted: u32 = free.iter().map(|w| w.count_ones()).sum();
                let valid_mask = |w: usize| match self.objs.saturating_sub(w as u32 * 64) {
                    0 => 0,
                    n if n >= 64 => u64::MAX,
                    n => (1u64 << n) - 1,
                };
                if (0..WORDS)
                    .any(|w| (free[w] | user[w]) & !valid_mask(w) != 0 || free[w] & user[w] != 0)
                {
                    return corrupt(
                        "slab bitmap marks a non-object, or an object both free and held",
                        base,
                    );
                }
                if counted != nfree || list != id || back != prev {
                    return corrupt("slab record disagrees with its bitmap or list", base);
                }
                let right_list = match id {
                    ListId::Full => nfree == 0,
                    ListId::Empty => nfree == self.objs,
                    ListId::Partial => nfree > 0 && nfree < self.objs,
                };
                if !right_list {
                    return corrupt("slab is on the wrong list", base);
                }
                for probe in [base, base + self.slab_size - 1] {
                    if self.lookup(probe) != Some(p) {
                        return corrupt("slab hash does not find the slab", base);
                    }
                }
                out += u64::from(self.objs - nfree);
                users += user.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
                prev = Some(p);
                cursor = next;
            }
            if seen != self.lists[i].count {
                return corrupt("slab list count is wrong", seen as u64);
            }
        }
        if self.slabs() != self.records.in_use {
            return corrupt("slab records are lost", self.records.in_use as u64);
        }
        if out != self.out {
            return corrupt("objects out of the slabs are miscounted", out);
        }
        Ok((out, users))
    }
}

#[cfg(test)]
mod tests {
    use core::cell::{Cell, RefCell};

    use super::*;
    use crate::testing::Budget;

    /// Slabs cut one after another from the integers above `next`, `gap`
    /// apart (so they need not be aligned to their size); remembers which
    /// are out, and refuses while `refuse` is set.
    struct Integers {
        next: Cell<u64>,
        gap: u64,
        live: RefCell<Vec<(u64, u64, u64)>>,
        refuse: Cell<bool>,
    }

    impl Integers {
        fn new(first: u64, gap: u64) -> Self {
            Integers {
                next: Cell::new(first),
                gap,
                live: RefCell::new(Vec::new()),
                refuse: Cell::new(false),
            }
        }

        fn slabs(&self) -> Vec<u64> {
            self.live.borrow().iter().map(|s| s.0).collect()
        }
    }

    impl Backing for Integers {
        fn slab_alloc(&self, size: u64, align: u64) -> Result<u64> {
            if self.refuse.get() {
                return Err(Error::new(ErrorKind::NoSpace, "the backing is dry"));
            }
            let base = self.next.get().next_multiple_of(align);
            self.next.set(base + size + self.gap);
            self.live.borrow_mut().push((base, size, align));
            Ok(base)
        }

        fn slab_free(&self, base: u64, size: u64, align: u64) {
            let mut live = self.live.borrow_mut();
            let at = live.iter().position(|&s| s == (base, size, align));
            live.remove(at.expect("a slab this backing handed out, as it was asked for"));
        }
    }

    fn kind<T: core::fmt::Debug>(r: Result<T>) -> ErrorKind {
        r.unwrap_err().kind()
    }

    #[test]
    fn objects_are_cut_in_order_and_a_full_slab_makes_the_next() {
        let (meta, backing) = (Budget::new(1), Integers::new(0x1000, 0));
        // Ten objects of 24 in a slab of 256: the last 16 integers are no object.
        let mut layer = SlabLayer::new(24, 256, 10, 8);
        let objs: Vec<(u64, bool)> = (0..11)
            .map(|_| layer.alloc(&backing, &meta).unwrap())
            .collect();
        let [first, second] = backing.slabs()[..] else {
            panic!("two slabs, not {:?}", backing.slabs())
        };
        for (i, &(obj, fresh)) in objs[..10].iter().enumerate() {
            assert_eq!(obj, first + 24 * i as u64);
            assert_eq!(fresh, i == 0, "only a new slab's first object is fresh");
        }
        assert_eq!(objs[10], (second, true));
        assert_eq!((layer.slabs(), layer.counts.created, layer.out), (2, 2, 11));
        assert_eq!(layer.check().unwrap(), (11, 0));
        assert_eq!(
            kind(layer.free(first + 240)),
            ErrorKind::BadFree,
            "past the last object"
        );
        // A freed object is the next one handed out, from the partial slab.
        layer.free(first + 48).unwrap();
        assert_eq!(layer.alloc(&backing, &meta).unwrap(), (first + 48, false));
        for (obj, _) in objs {
            layer.free(obj).unwrap();
        }
        assert_eq!((layer.empty_slabs(), layer.out), (2, 0));
        assert_eq!(layer.reap(&backing), 2);
        assert!(backing.slabs().is_empty());
        layer.dispose(&meta);
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn a_slab_of_max_objs_hands_out_each_once() {
        let (meta, backing) = (Budget::new(1), Integers::new(0, 0));
        let mut layer = SlabLayer::new(1, MAX_OBJS as u64, MAX_OBJS as u32, 1);
        let mut objs: Vec<u64> = (0..MAX_OBJS)
            .map(|_| layer.alloc(&backing, &meta).unwrap().0)
            .collect();
        objs.sort_unstable();
        assert_eq!(objs, (0..MAX_OBJS as u64).collect::<Vec<_>>());
        assert_eq!(
            (layer.slabs(), layer.lists[1].count),
            (1, 1),
            "one full slab"
        );
        assert_eq!(
            layer.alloc(&backing, &meta).unwrap(),
            (MAX_OBJS as u64, true)
        );
        layer.check().unwrap();
        layer.release_all(&backing);
        assert_eq!((layer.slabs(), layer.out), (0, 0));
        assert!(backing.slabs().is_empty());
        layer.dispose(&meta);
    }

    #[test]
    fn a_foreign_or_inner_address_is_refused_and_changes_nothing() {
        let (meta, backing) = (Budget::new(1), Integers::new(0x1000, 0x100));
        let mut layer = SlabLayer::new(16, 128, 8, 16);
        let (obj, _) = layer.alloc(&backing, &meta).unwrap();
        let (base, end) = (obj, obj + 128);
        assert!(layer.holds(base) && layer.holds(end - 1));
        assert!(!layer.holds(base - 1) && !layer.holds(end));
        let before = layer.check().unwrap();
        for (addr, why) in [
            (base - 1, "below the slab"),
            (end, "past the slab"),
            (u64::MAX, "nowhere near"),
            (base + 1, "inside an object"),
            (base + 16, "an object that is free"),
        ] {
            assert_eq!(kind(layer.free(addr)), ErrorKind::BadFree, "{why}");
            assert_eq!(kind(layer.check_user(addr)), ErrorKind::BadFree, "{why}");
            assert_eq!(layer.check().unwrap(), before, "{why}");
        }
        assert_eq!(layer.out, 1);
        assert!(
            layer.check_out(obj, true).is_ok(),
            "out of its slab, held by no user"
        );
        assert_eq!(kind(layer.check_out(base + 16, false)), ErrorKind::Corrupt);
        assert_eq!(kind(layer.check_out(end, false)), ErrorKind::Corrupt);
        layer.free(obj).unwrap();
        assert_eq!(kind(layer.free(obj)), ErrorKind::BadFree, "double free");
        layer.check().unwrap();
        layer.reap(&backing);
        assert!(!layer.holds(base), "a reaped slab holds nothing");
        layer.dispose(&meta);
    }

    #[test]
    fn unaligned_slabs_are_found_from_every_object_as_the_table_grows() {
        let (meta, backing) = (Budget::new(8), Integers::new(0x7, 37));
        // Slabs of 64 integers, 37 apart from the next and aligned to 1:
        // most straddle two 64-integer blocks.
        let mut layer = SlabLayer::new(3, 64, 21, 1);
        let slabs = 4 * INLINE_BUCKETS as u64;
        let objs: Vec<u64> = (0..slabs * 21)
            .map(|_| layer.alloc(&backing, &meta).unwrap().0)
            .collect();
        assert_eq!(layer.slabs() as u64, slabs);
        assert!(layer.table.is_some(), "more than twice the inline buckets");
        assert!(layer.meta_pages() > layer.records.page_count);
        layer.check().unwrap();
        for &base in &backing.slabs() {
            for probe in [base, base + 30, base + 63] {
                assert!(layer.holds(probe), "{probe:#x} of the slab at {base:#x}");
            }
            assert!(!layer.holds(base + 64), "the gap after {base:#x}");
        }
        for &obj in &objs {
            layer.free(obj).unwrap();
        }
        layer.check().unwrap();
        layer.reap(&backing);
        let mut back = MetaPages::new();
        layer.take_empty_pages(&mut back);
        back.give_back(&meta);
        assert_eq!(
            (layer.meta_pages(), meta.out()),
            (0, 0),
            "records and table went back"
        );
        assert!(backing.slabs().is_empty());
        // Emptied, the layer works as new.
        let (obj, fresh) = layer.alloc(&backing, &meta).unwrap();
        assert!(fresh && layer.holds(obj));
        layer.free(obj).unwrap();
        layer.reap(&backing);
        layer.dispose(&meta);
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn a_refused_record_or_slab_changes_nothing() {
        let (meta, backing) = (Budget::new(0), Integers::new(0, 0));
        let mut layer = SlabLayer::new(8, 64, 8, 8);
        assert_eq!(kind(layer.alloc(&backing, &meta)), ErrorKind::NoSpace);
        assert!(backing.slabs().is_empty(), "no slab without a record");
        meta.grant(1);
        backing.refuse.set(true);
        assert_eq!(kind(layer.alloc(&backing, &meta)), ErrorKind::NoSpace);
        assert_eq!(
            (layer.slabs(), layer.records.in_use, layer.counts.created),
            (0, 0, 0)
        );
        assert_eq!(layer.check().unwrap(), (0, 0));
        backing.refuse.set(false);
        let (obj, fresh) = layer.alloc(&backing, &meta).unwrap();
        assert!(fresh);
        assert_eq!(
            meta.out(),
            1,
            "the record page taken before was kept for this"
        );
        layer.free(obj).unwrap();
        layer.reap(&backing);
        layer.dispose(&meta);
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn user_marks_tell_a_held_object_from_a_double_free() {
        let (meta, backing) = (Budget::new(1), Integers::new(0, 0));
        let mut layer = SlabLayer::new(8, 64, 8, 8);
        let (a, _) = layer.alloc(&backing, &meta).unwrap();
        let (b, _) = layer.alloc(&backing, &meta).unwrap();
        layer.mark_user(a).unwrap();
        assert_eq!(
            kind(layer.mark_user(a)),
            ErrorKind::Corrupt,
            "handed out twice"
        );
        assert_eq!(kind(layer.free(a)), ErrorKind::Corrupt, "a user holds it");
        assert_eq!(layer.check().unwrap(), (2, 1));
        assert_eq!(
            kind(layer.unmark_user(b)),
            ErrorKind::BadFree,
            "no user holds b"
        );
        layer.unmark_user(a).unwrap();
        assert_eq!(
            kind(layer.unmark_user(a)),
            ErrorKind::BadFree,
            "double free"
        );
        assert_eq!(layer.check().unwrap(), (2, 0));
        layer.free(a).unwrap();
        layer.free(b).unwrap();
        assert_eq!(
            kind(layer.mark_user(a)),
            ErrorKind::Corrupt,
            "a free object"
        );
        layer.reap(&backing);
        layer.dispose(&meta);
    }

    #[test]
    fn reap_since_returns_only_the_empty_slabs_made_after_the_mark() {
        let (meta, backing) = (Budget::new(1), Integers::new(0, 0));
        let mut layer = SlabLayer::new(8, 64, 8, 8);
        let old: Vec<u64> = (0..8)
            .map(|_| layer.alloc(&backing, &meta).unwrap().0)
            .collect();
        let mark = layer.counts.created;
        let new: Vec<u64> = (0..16)
            .map(|_| layer.alloc(&backing, &meta).unwrap().0)
            .collect();
        for obj in old.iter().chain(&new) {
            layer.free(*obj).unwrap();
        }
        let first = backing.slabs()[0];
        layer.reap_since(mark, &backing);
        assert_eq!(
            backing.slabs(),
            vec![first],
            "the slab from before the mark stays"
        );
        assert_eq!((layer.slabs(), layer.counts.destroyed), (1, 2));
        layer.check().unwrap();
        layer.reap(&backing);
        layer.dispose(&meta);
        assert_eq!(meta.out(), 0);
    }
}
