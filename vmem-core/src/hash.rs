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
//! table is taken and given back outside the arena's lock (see `Arena`),
//! so growth never blocks a free.
//!
//! Growth is incremental, so no call pays for rehashing or even clearing
//! the whole table. Installing the larger table moves and writes nothing:
//! the old table stays, and every later successful call drains at most
//! `MIGRATE_BUCKETS` of its buckets and `MIGRATE_SEGMENTS` segments into
//! the new one, in bucket order, clearing at most a page of new buckets
//! just before they are first used, before it drops the lock. Meanwhile a
//! segment lives in the new table if its old bucket lies before the drain
//! cursor, in the old table (where inserts put it) if at or past it, and
//! for the bucket at the cursor possibly already in the new one; lookups
//! look there. Once the old table is drained the call gives it back. A
//! growth past a `2 * buckets` load takes `buckets / MIGRATE_BUCKETS`
//! calls or so to drain, while the next growth waits for the load to
//! double again, so a resize is done before another is wanted.
//!
//! When the meta source has no table, the hash keeps its table (chains grow
//! longer) and asks again only once the number of allocated segments has
//! doubled. When the last allocated segment leaves, the hash goes back to
//! its table inside the arena and gives its pages back, so an arena that
//! empties holds no hash pages.
//!
//! The slab layer's hash (in `slab.rs`) picks buckets the same way
//! ([`bucket_index`]) and differs in the rest because its keys and its
//! numbers differ. A free here names a segment's exact start, so a bucket
//! caches its first start and a hit reads no tag; a slab must be found
//! from any address inside it, so the slab hash keys slab-size blocks,
//! registers each slab under the blocks of its first and last integers,
//! and compares ranges on the records it reads anyway. An arena's
//! allocated segments are as many as its users make, every call of the
//! arena waits on its one lock, and the lock is dropped to fetch tables,
//! so this hash grows a few buckets per call; a cache holds one slab per
//! many objects, and grows its hash whole under its slab lock, where it
//! takes slab records from the same meta source.

use core::mem::size_of;
use core::ptr::NonNull;

use crate::meta::{META_PAGE, MetaSource};
use crate::tag::{Link, TagPtr};

/// Buckets in the table that lives inside the arena.
const INLINE_BUCKETS: usize = 16;

/// Most buckets of the old table one call drains.
pub(crate) const MIGRATE_BUCKETS: usize = 16;

/// Most segments one call moves to the new table (a bucket whose chain is
/// longer, after the meta source refused tables for a while, takes several
/// calls).
pub(crate) const MIGRATE_SEGMENTS: usize = 32;

/// Most buckets of the new table one call empties before use (one page).
const CLEAR_BUCKETS: usize = META_PAGE / size_of::<Bucket>();

/// Fibonacci hashing: the high bits of `key * 2^64/phi` index the table, so
/// keys that differ only in high bits, or that come a power of two apart,
/// still land in different buckets. Not evenly: as many addresses as there
/// are buckets, 2^0 to 2^20 apart, use at least a quarter of the buckets
/// (the unit test `buckets_spread_power_of_two_strides_and_stay_in_the_table`
/// holds that); a hash of the low bits would put them all in one.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The bucket of `key` in a table of `1 << bits` buckets (`bits` from 1 to
/// 63), by Fibonacci hashing: the allocated-segment hash's and the slab
/// hash's one way of picking a bucket.
#[inline(always)]
pub(crate) fn bucket_index(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(GOLDEN) >> (64 - bits)) as usize
}

/// A bucket table handed over by the meta source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    pub(crate) base: NonNull<u8>,
    pub(crate) pages: usize,
}

impl Table {
    /// log2 of the buckets the table holds.
    fn bits(self) -> u32 {
        (self.pages * META_PAGE / size_of::<Bucket>()).ilog2()
    }
}

/// Tables the hash no longer uses, for the arena to give back to its meta
/// source once it has dropped its lock.
#[must_use]
#[derive(Default)]
pub(crate) struct Retired([Option<Table>; 2]);

impl Retired {
    /// Gives the tables back.
    ///
    /// # Safety
    /// The tables came from `meta` (the hash only installs tables from its
    /// arena's meta source).
    #[inline]
    pub(crate) unsafe fn give_back(self, meta: Option<&dyn MetaSource>) {
        // Nearly every call has nothing to give back: keep that path inline.
        if self.0.iter().all(Option::is_none) {
            return;
        }
        // SAFETY: the caller's promise, passed on.
        unsafe { self.give_back_tables(meta) }
    }

    /// The out-of-line part of [`Retired::give_back`].
    ///
    /// # Safety
    /// As for [`Retired::give_back`].
    #[inline(never)]
    unsafe fn give_back_tables(self, meta: Option<&dyn MetaSource>) {
        for table in self.0.into_iter().flatten() {
            if let Some(meta) = meta {
                // SAFETY: the hash no longer uses the table, which came from
                // `meta` whole.
                unsafe { meta.free_pages(table.base, table.pages) };
            }
        }
    }
}

/// Where a segment may be: the bucket an insert uses, and for the bucket a
/// resize is draining, the new bucket its segments move to.
struct Homes {
    first: NonNull<Bucket>,
    moved: Option<NonNull<Bucket>>,
}

impl Homes {
    #[inline(always)]
    fn all(self) -> impl Iterator<Item = NonNull<Bucket>> {
        core::iter::once(self.first).chain(self.moved)
    }
}

/// One bucket: its first segment and that segment's start.
#[derive(Clone, Copy)]
pub(crate) struct Bucket {
    key: u64,
    head: Link,
}

const EMPTY: Bucket = Bucket { key: 0, head: None };

/// Where a table's buckets are.
#[derive(Clone, Copy)]
enum Store {
    Inline,
    Pages(Table),
}

/// A table of `1 << bits` buckets.
#[derive(Clone, Copy)]
struct Level {
    store: Store,
    bits: u32,
}

impl Level {
    const INLINE: Level = Level {
        store: Store::Inline,
        bits: INLINE_BUCKETS.trailing_zeros(),
    };

    #[inline(always)]
    fn index(self, addr: u64) -> usize {
        bucket_index(addr, self.bits)
    }

    fn buckets(self) -> usize {
        1 << self.bits
    }
}

/// The hash of allocated segments, chained through `list_prev`/`list_next`.
pub(crate) struct AllocHash {
    inline: [Bucket; INLINE_BUCKETS],
    /// The table segments go to.
    table: Level,
    /// The table being drained into `table`, while a resize is under way.
    draining: Option<Level>,
    /// Buckets of `draining` below this one are empty.
    cursor: usize,
    /// Buckets of `table` below this one are emptied for use, while a
    /// resize is under way (the rest are not yet written).
    cleared: usize,
    /// Allocated segments in the hash.
    pub(crate) count: usize,
    /// How many times the table has grown.
    pub(crate) resizes: u64,
    /// After the meta source refused a table: the count at which to ask
    /// again.
    retry_at: usize,
    /// A call is fetching a larger table (outside the lock): no other call
    /// asks for one meanwhile, so a meta source that allocates from this
    /// arena cannot make the growth recurse.
    fetching: bool,
    /// Most segments one call has rehashed.
    #[cfg(test)]
    pub(crate) most_moved: usize,
}

impl AllocHash {
    pub(crate) const fn new() -> Self {
        AllocHash {
            inline: [EMPTY; INLINE_BUCKETS],
            table: Level::INLINE,
            draining: None,
            cursor: 0,
            cleared: 0,
            count: 0,
            resizes: 0,
            retry_at: 0,
            fetching: false,
            #[cfg(test)]
            most_moved: 0,
        }
    }

    /// Number of buckets of the table segments go to.
    pub(crate) fn buckets(&self) -> usize {
        self.table.buckets()
    }

    /// The inline buckets, as the one pointer an operation derives every
    /// bucket pointer from.
    #[inline(always)]
    fn inline_base(&mut self) -> NonNull<Bucket> {
        NonNull::from(&mut self.inline).cast()
    }

    /// Bucket `index` of `level`, whose inline buckets start at `inline`.
    #[inline(always)]
    fn slot(inline: NonNull<Bucket>, level: Level, index: usize) -> NonNull<Bucket> {
        let base = match level.store {
            Store::Pages(table) => table.base.cast(),
            Store::Inline => inline,
        };
        // SAFETY: a table holds `1 << bits` buckets (`bits` came from its
        // size, or is the inline table's) and `index` is below that.
        unsafe { base.add(index) }
    }

    /// The buckets that may hold a segment starting at `addr`. While a
    /// resize is under way, a segment whose old bucket the cursor passed is
    /// in the new table, else in the old one (where inserts put it) or, for
    /// the bucket being drained, already moved to its new bucket.
    #[inline(always)]
    fn homes(&mut self, addr: u64) -> Homes {
        let inline = self.inline_base();
        let table = self.table;
        let new = table.index(addr);
        let Some(old) = self.draining else {
            return Homes {
                first: Self::slot(inline, table, new),
                moved: None,
            };
        };
        let index = old.index(addr);
        if index < self.cursor {
            // Drained, so its new buckets were cleared first.
            return Homes {
                first: Self::slot(inline, table, new),
                moved: None,
            };
        }
        Homes {
            first: Self::slot(inline, old, index),
            moved: (index == self.cursor && new < self.cleared)
                .then(|| Self::slot(inline, table, new)),
        }
    }

    /// Whether the checker may find `addr` in bucket `index` of the new
    /// table (`draining == false`) or of the table being drained.
    pub(crate) fn belongs(&self, addr: u64, draining: bool, index: usize) -> bool {
        match (draining, self.draining) {
            (false, None) => self.table.index(addr) == index,
            (false, Some(old)) => self.table.index(addr) == index && old.index(addr) <= self.cursor,
            (true, Some(old)) => old.index(addr) == index && index >= self.cursor,
            (true, None) => false,
        }
    }

    /// Buckets in use of the new table (`draining == false`: all, or those
    /// cleared while a resize is under way) or of the table being drained
    /// (none when no resize is under way), for the checker.
    pub(crate) fn buckets_in(&self, draining: bool) -> usize {
        match (draining, self.draining) {
            (true, old) => old.map_or(0, Level::buckets),
            (false, Some(_)) => self.cleared,
            (false, None) => self.table.buckets(),
        }
    }

    /// The first segment of bucket `index` of the new table or the table
    /// being drained, and whether the bucket's cached start agrees with it
    /// (for the checker; an `index` not below [`AllocHash::buckets_in`]
    /// reads as an empty bucket).
    pub(crate) fn bucket(&mut self, draining: bool, index: usize) -> (Link, bool) {
        if index >= self.buckets_in(draining) {
            return (None, true);
        }
        let level = if draining {
            self.draining.unwrap_or(self.table)
        } else {
            self.table
        };
        let inline = self.inline_base();
        // SAFETY: a bucket of this hash, reached through `&mut self`.
        let bucket = unsafe { Self::slot(inline, level, index).read() };
        (
            bucket.head,
            bucket.head.is_none_or(|head| head.start() == bucket.key),
        )
    }

    /// Puts `seg` at the front of `slot`'s chain (second, if the chain has a
    /// head, so the bucket keeps its cached key).
    ///
    /// # Safety
    /// `slot` is a bucket of this hash, and nothing else refers to it.
    #[inline(always)]
    unsafe fn push(mut slot: NonNull<Bucket>, seg: TagPtr) {
        // SAFETY: the caller's promise.
        let slot = unsafe { slot.as_mut() };
        match slot.head {
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
                    key: seg.start(),
                    head: Some(seg),
                };
                seg.set_list_prev(None);
                seg.set_list_next(None);
            }
        }
    }

    /// Adds an allocated segment.
    #[inline]
    pub(crate) fn insert(&mut self, seg: TagPtr) {
        let slot = self.homes(seg.start()).first;
        // SAFETY: a bucket of this hash, reached through `&mut self`.
        unsafe { Self::push(slot, seg) };
        self.count += 1;
    }

    /// The allocated segment starting at `addr`, if any.
    #[inline]
    pub(crate) fn find(&mut self, addr: u64) -> Link {
        for slot in self.homes(addr).all() {
            // SAFETY: a bucket of this hash, reached through `&mut self`.
            let bucket = unsafe { slot.read() };
            let Some(head) = bucket.head else { continue };
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
                for mut slot in self.homes(seg.start()).all() {
                    // SAFETY: a bucket of this hash, reached through `&mut self`.
                    let bucket = unsafe { slot.as_mut() };
                    if bucket.head == Some(seg) {
                        *bucket = Bucket { key, head: next };
                    }
                }
            }
        }
        if let Some(next) = next {
            next.set_list_prev(prev);
        }
        seg.set_list_prev(None);
        seg.set_list_next(None);
        self.count -= 1;
    }

    /// Pages for the table the hash wants now: it is overloaded, no resize
    /// is under way, and the meta source did not refuse a table since the
    /// count last doubled.
    fn wanted_pages(&self) -> Option<usize> {
        if self.count <= 2 * self.buckets() || self.draining.is_some() || self.count < self.retry_at
        {
            return None;
        }
        let buckets = self.count.checked_next_power_of_two()?;
        let bytes = buckets.checked_mul(size_of::<Bucket>())?;
        Some(bytes.div_ceil(META_PAGE))
    }

    /// Pages for the table the hash wants now, if no other call is
    /// fetching one; the caller then fetches it and hands it to
    /// [`AllocHash::install`] or reports [`AllocHash::refused`].
    pub(crate) fn claim_growth(&mut self) -> Option<usize> {
        if self.fetching {
            return None;
        }
        let pages = self.wanted_pages()?;
        self.fetching = true;
        Some(pages)
    }

    /// Notes that the meta source had no table: ask again once the count
    /// has doubled.
    pub(crate) fn refused(&mut self) {
        self.fetching = false;
        self.retry_at = self.count.saturating_mul(2);
    }

    /// Starts draining into `table` if it is still wanted and larger, and
    /// returns `table` if it came too late, for the caller to give back.
    ///
    /// # Safety
    /// `table` is writable memory of `table.pages` meta pages from the
    /// arena's meta source that the arena owns and no one else uses.
    pub(crate) unsafe fn install(&mut self, table: Table) -> Option<Table> {
        self.fetching = false;
        let bits = table.bits();
        if self.wanted_pages().is_none() || bits <= self.table.bits {
            return Some(table);
        }
        self.draining = Some(self.table);
        self.cursor = 0;
        self.cleared = 0;
        self.table = Level {
            store: Store::Pages(table),
            bits,
        };
        self.resizes += 1;
        None
    }

    /// The hash's share of a successful call, before the arena unlocks:
    /// drains the next buckets of a resize under way, and once no segment
    /// is left goes back to the table inside the arena. Returns the tables
    /// no longer used, for the caller to give back after unlocking.
    #[inline]
    pub(crate) fn settle(&mut self) -> Retired {
        let on_pages = matches!(self.table.store, Store::Pages(_)) || self.draining.is_some();
        if self.count == 0 && on_pages {
            return self.reset();
        }
        // The steady state: no resize under way.
        if self.draining.is_none() {
            return Retired::default();
        }
        Retired([self.drain(), None])
    }

    /// Moves up to `MIGRATE_BUCKETS` buckets and `MIGRATE_SEGMENTS`
    /// segments of the draining table into the new one, clearing up to
    /// `CLEAR_BUCKETS` buckets of the new table just before they are first
    /// used; returns the draining table once it is empty.
    ///
    /// Bucket `i` of a table of `2^b` buckets holds the addresses whose hash
    /// has `i` in its top `b` bits, so old bucket `i` spreads over new
    /// buckets `i << shift .. (i + 1) << shift`, and the new buckets are
    /// cleared in the order the cursor reaches them.
    fn drain(&mut self) -> Option<Table> {
        let old = self.draining?;
        let table = self.table;
        let shift = table.bits - old.bits;
        let inline = self.inline_base();
        let (mut moved, mut cleared, mut drained) = (0, 0, 0);
        while self.cursor < old.buckets() && drained < MIGRATE_BUCKETS {
            let needed = (self.cursor + 1) << shift;
            while self.cleared < needed && cleared < CLEAR_BUCKETS {
                // SAFETY: a bucket of the new table not in use yet.
                unsafe { Self::slot(inline, table, self.cleared).write(EMPTY) };
                self.cleared += 1;
                cleared += 1;
            }
            if self.cleared < needed {
                break;
            }
            let from = Self::slot(inline, old, self.cursor);
            // SAFETY: a bucket of this hash, reached through `&mut self`.
            while let Some(seg) = unsafe { from.as_ref() }.head {
                if moved == MIGRATE_SEGMENTS {
                    break;
                }
                let next = seg.list_next();
                if let Some(next) = next {
                    next.set_list_prev(None);
                }
                // SAFETY: as above.
                unsafe {
                    from.write(Bucket {
                        key: next.map_or(0, |n| n.start()),
                        head: next,
                    })
                };
                let to = Self::slot(inline, table, table.index(seg.start()));
                // SAFETY: a cleared bucket of the new table, not `from`.
                unsafe { Self::push(to, seg) };
                moved += 1;
            }
            // SAFETY: as above.
            if unsafe { from.as_ref() }.head.is_some() {
                break;
            }
            self.cursor += 1;
            drained += 1;
        }
        #[cfg(test)]
        {
            self.most_moved = self.most_moved.max(moved);
        }
        if self.cursor < old.buckets() {
            return None;
        }
        self.draining = None;
        self.cursor = 0;
        self.cleared = 0;
        match old.store {
            Store::Pages(table) => Some(table),
            Store::Inline => None,
        }
    }

    /// Forgets every segment and goes back to the table inside the arena,
    /// handing back the tables that were installed.
    pub(crate) fn reset(&mut self) -> Retired {
        let pages = |level: Option<Level>| match level?.store {
            Store::Pages(table) => Some(table),
            Store::Inline => None,
        };
        let retired = Retired([pages(Some(self.table)), pages(self.draining)]);
        *self = AllocHash {
            resizes: self.resizes,
            #[cfg(test)]
            most_moved: self.most_moved,
            ..AllocHash::new()
        };
        retired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::TagStock;
    use crate::testing::{Budget, segment, tag_stock};

    const PAGE: u64 = 0x1000;

    /// `n` allocated segments a page apart from `first`, each in the hash.
    fn fill(hash: &mut AllocHash, stock: &mut TagStock, first: u64, n: u64) -> Vec<TagPtr> {
        (0..n)
            .map(|i| {
                let seg = segment(stock, first + i * PAGE, PAGE);
                hash.insert(seg);
                seg
            })
            .collect()
    }

    /// Checks every bucket of both tables as the arena's checker does, and
    /// that each of `live` is found; returns the segments the buckets hold.
    fn consistent(hash: &mut AllocHash, live: &[TagPtr]) -> usize {
        let mut held = 0;
        for draining in [false, true] {
            for index in 0..hash.buckets_in(draining) {
                let (head, key_agrees) = hash.bucket(draining, index);
                assert!(key_agrees, "bucket {index} caches its head's start");
                let mut cursor = head;
                while let Some(seg) = cursor {
                    assert!(hash.belongs(seg.start(), draining, index));
                    held += 1;
                    cursor = seg.list_next();
                }
            }
        }
        for &seg in live {
            assert_eq!(hash.find(seg.start()), Some(seg), "{:#x}", seg.start());
        }
        assert_eq!(held, hash.count);
        held
    }

    /// Fetches the table `claim_growth` asked for from `meta` and installs it.
    fn grow(hash: &mut AllocHash, meta: &Budget) {
        let pages = hash.claim_growth().expect("the hash wants a table");
        let base = meta.alloc_pages(pages).expect("the budget has the table");
        // SAFETY: fresh pages from the meta source, the hash's now.
        let late = unsafe { hash.install(Table { base, pages }) };
        assert!(late.is_none(), "the table came in time");
    }

    #[test]
    fn buckets_spread_power_of_two_strides_and_stay_in_the_table() {
        // Addresses a power of two apart (what arenas of any quantum hand
        // out), as many as there are buckets, use at least a quarter of the
        // buckets; a hash of the low bits would put them all in one.
        for bits in 4..=12 {
            let level = Level {
                store: Store::Inline,
                bits,
            };
            for shift in 0..=20 {
                let mut hit = vec![false; level.buckets()];
                for k in 0..level.buckets() as u64 {
                    hit[level.index(k << shift)] = true;
                }
                let used = hit.iter().filter(|&&h| h).count();
                assert!(
                    4 * used >= level.buckets(),
                    "stride 2^{shift} uses {used} of {} buckets",
                    level.buckets()
                );
            }
            assert!(level.index(u64::MAX) < level.buckets());
        }
    }

    #[test]
    fn a_bucket_chain_finds_and_removes_every_member() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut hash = AllocHash::new();
        // Three starts that share the inline bucket of 0.
        let bucket = Level::INLINE.index(0);
        let starts: Vec<u64> = (0..)
            .map(|k| k * 8)
            .filter(|&a| Level::INLINE.index(a) == bucket)
            .take(3)
            .collect();
        let segs: Vec<TagPtr> = starts
            .iter()
            .map(|&start| {
                let seg = segment(&mut stock, start, 8);
                hash.insert(seg);
                seg
            })
            .collect();
        assert_eq!(consistent(&mut hash, &segs), 3);
        assert_eq!(hash.find(starts[2] + 8), None);
        // Removing the head moves the cached key on to the next member.
        hash.remove(segs[0]);
        assert_eq!(hash.find(starts[0]), None);
        assert_eq!(hash.bucket(false, bucket), (Some(segs[2]), true));
        consistent(&mut hash, &segs[1..]);
        hash.remove(segs[1]);
        hash.remove(segs[2]);
        assert_eq!(hash.bucket(false, bucket), (None, true));
        assert_eq!(hash.count, 0);
        assert!(
            hash.settle().0.iter().all(Option::is_none),
            "the inline table stays"
        );
        stock.dispose(Some(&meta));
    }

    #[test]
    fn growth_drains_the_old_table_a_few_buckets_and_segments_per_call() {
        let tags = Budget::new(16);
        let tables = Budget::new(8);
        let mut stock = tag_stock(&tags, 16);
        let mut hash = AllocHash::new();
        let mut live = fill(&mut hash, &mut stock, 0, 2 * INLINE_BUCKETS as u64);
        assert_eq!(hash.claim_growth(), None, "2 * buckets is no overload");
        live.extend(fill(&mut hash, &mut stock, 0x100_0000, 1));
        grow(&mut hash, &tables);
        assert_eq!(
            (hash.buckets(), hash.resizes),
            (META_PAGE / size_of::<Bucket>(), 1)
        );
        // Installing moved nothing: every segment is still found.
        consistent(&mut hash, &live);
        // 33 segments take two calls at 32 a call.
        assert!(
            hash.settle().0.iter().all(Option::is_none),
            "the inline table is no page"
        );
        assert!(hash.draining.is_some());
        consistent(&mut hash, &live);
        assert!(hash.settle().0.iter().all(Option::is_none));
        assert!(hash.draining.is_none());
        assert_eq!(hash.most_moved, MIGRATE_SEGMENTS);
        consistent(&mut hash, &live);

        // A second growth drains a paged table of 256 buckets, 16 a call,
        // while segments come and go.
        let more = 2 * hash.buckets() as u64 + 1 - live.len() as u64;
        live.extend(fill(&mut hash, &mut stock, 0x200_0000, more));
        grow(&mut hash, &tables);
        assert_eq!(tables.out(), 1 + 4, "the old table and 1024 buckets");
        let old_buckets = hash.draining.unwrap().buckets();
        let mut calls = 0;
        loop {
            let cursor = hash.cursor;
            if let Some(gone) = live.pop() {
                hash.remove(gone);
                stock.give_back(gone);
            }
            live.extend(fill(&mut hash, &mut stock, 0x300_0000 + calls * PAGE, 1));
            let retired = hash.settle();
            calls += 1;
            consistent(&mut hash, &live);
            if hash.draining.is_none() {
                // SAFETY: the old table came from `tables`.
                unsafe { retired.give_back(Some(&tables)) };
                break;
            }
            assert!(
                retired.0.iter().all(Option::is_none),
                "nothing back mid-drain"
            );
            assert!(hash.cursor - cursor <= MIGRATE_BUCKETS);
        }
        assert!(calls as usize >= old_buckets / MIGRATE_BUCKETS);
        assert!(hash.most_moved <= MIGRATE_SEGMENTS);
        assert_eq!(
            (tables.out(), hash.resizes),
            (4, 2),
            "the old table went back"
        );
        for seg in live {
            hash.remove(seg);
        }
        // SAFETY: the tables came from `tables`.
        unsafe { hash.settle().give_back(Some(&tables)) };
        assert_eq!(tables.out(), 0);
        stock.dispose(Some(&tags));
    }

    #[test]
    fn a_refused_table_is_asked_for_again_once_the_count_doubles() {
        let meta = Budget::new(16);
        let mut stock = tag_stock(&meta, 2);
        let mut hash = AllocHash::new();
        let mut live = fill(&mut hash, &mut stock, 0, 33);
        assert_eq!(hash.claim_growth(), Some(1));
        assert_eq!(hash.claim_growth(), None, "one fetch at a time");
        hash.refused();
        live.extend(fill(&mut hash, &mut stock, 0x10_0000, 32));
        assert_eq!(hash.count, 65);
        assert_eq!(hash.claim_growth(), None, "not before 66");
        consistent(&mut hash, &live);
        live.extend(fill(&mut hash, &mut stock, 0x20_0000, 1));
        assert_eq!(hash.claim_growth(), Some(1));
        hash.refused();
        assert_eq!(hash.buckets(), INLINE_BUCKETS, "the chains grew instead");
        for seg in live {
            hash.remove(seg);
        }
        stock.dispose(Some(&meta));
    }

    #[test]
    fn a_table_that_comes_too_late_or_too_small_goes_back() {
        let meta = Budget::new(16);
        let mut stock = tag_stock(&meta, 8);
        let mut hash = AllocHash::new();
        let mut live = fill(&mut hash, &mut stock, 0, 33);
        let pages = hash.claim_growth().unwrap();
        hash.remove(live.pop().unwrap());
        let base = meta.alloc_pages(pages).unwrap();
        // SAFETY: fresh pages from the meta source.
        let back = unsafe { hash.install(Table { base, pages }) };
        assert_eq!(
            back.map(|t| (t.base, t.pages)),
            Some((base, pages)),
            "no longer wanted"
        );
        assert_eq!((hash.buckets(), hash.resizes), (INLINE_BUCKETS, 0));
        // SAFETY: handed back unused.
        unsafe { meta.free_pages(base, pages) };
        // No longer fetching: the next overload asks again, and a page of
        // 256 buckets is growth over the 16 inline ones.
        live.extend(fill(&mut hash, &mut stock, 0x10_0000, 1));
        let pages = hash.claim_growth().unwrap();
        let base = meta.alloc_pages(pages).unwrap();
        // SAFETY: fresh pages from the meta source.
        assert!(unsafe { hash.install(Table { base, pages }) }.is_none());
        while hash.draining.is_some() {
            let _ = hash.settle();
        }
        // Overloaded again, a table no larger than the one in use is refused.
        live.extend(fill(&mut hash, &mut stock, 0x20_0000, 2 * 256 + 1 - 33));
        hash.claim_growth().unwrap();
        let same = meta.alloc_pages(1).unwrap();
        // SAFETY: fresh pages from the meta source.
        let back = unsafe {
            hash.install(Table {
                base: same,
                pages: 1,
            })
        };
        assert!(back.is_some(), "a table no larger is no growth");
        assert_eq!(hash.resizes, 1);
        assert!(hash.claim_growth().is_some(), "and the hash asks again");
        hash.refused();
        // SAFETY: handed back unused.
        unsafe { meta.free_pages(same, 1) };
        consistent(&mut hash, &live);
        for seg in live {
            hash.remove(seg);
        }
        // SAFETY: the table came from `meta`.
        unsafe { hash.settle().give_back(Some(&meta)) };
        stock.dispose(Some(&meta));
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn the_last_segment_leaving_gives_every_table_back_even_mid_drain() {
        let tags = Budget::new(8);
        let tables = Budget::new(8);
        let mut stock = tag_stock(&tags, 8);
        let mut hash = AllocHash::new();
        let live = fill(&mut hash, &mut stock, 0, 33);
        grow(&mut hash, &tables);
        while hash.draining.is_some() {
            let _ = hash.settle();
        }
        let mut live2 = fill(&mut hash, &mut stock, 0x10_0000, 2 * 256 + 1 - 33);
        live2.extend(live);
        grow(&mut hash, &tables);
        let _ = hash.settle();
        assert!(hash.draining.is_some(), "mid-drain, on two paged tables");
        assert_eq!(tables.out(), 5);
        for seg in live2 {
            hash.remove(seg);
        }
        let retired = hash.settle();
        assert_eq!(retired.0.iter().flatten().count(), 2);
        // SAFETY: both tables came from `tables`.
        unsafe { retired.give_back(Some(&tables)) };
        assert_eq!(tables.out(), 0);
        assert_eq!(
            (hash.buckets(), hash.resizes, hash.count),
            (INLINE_BUCKETS, 2, 0)
        );
        assert!(hash.draining.is_none());
        assert_eq!(hash.buckets_in(true), 0);
        stock.dispose(Some(&tags));
    }
}
