//! The allocated-segment hash: finds the tag of an allocated segment from
//! its address in expected O(1), so `free` needs no search.
//!
//! A table is an array of chain heads, two to a 16-byte bucket. The
//! segments of a chain link through their tags' `list_next`, newest first,
//! so an insert writes the chain head and the new tag and reads no other
//! tag. A lookup reads the chain head and the tags of the chain up to its
//! segment; the table holds at most one segment per chain on average
//! before it asks for a larger one (of a quarter to a half segment per
//! chain), so that is usually the segment's own tag alone, which a free
//! reads next anyway. A free removes the segment from where the lookup
//! found it linked (the chain head or the tag before it), without walking
//! the chain again. (A cached start beside each
//! head, as this hash had before, saves no tag read: the free reads the
//! tag right after the lookup. It doubled the bytes of a head, and an
//! insert second in a chain touched two more tags.)
//!
//! It starts with a small table inside the arena and grows, one larger
//! table at a time from the arena's [`crate::MetaSource`], whenever the
//! number of allocated segments passes the number of chains. The table is
//! taken and given back outside the arena's lock (see `Arena`), so growth
//! never blocks a free.
//!
//! Growth is incremental, so no call pays for rehashing or even clearing
//! the whole table. Installing the larger table moves and writes nothing:
//! the old table stays, and every later successful call drains at most
//! `MIGRATE_CHAINS` of its chains and `MIGRATE_SEGMENTS` segments into
//! the new one, in chain order, clearing at most a page of new chain heads
//! just before they are first used, before it drops the lock. Meanwhile a
//! segment lives in the new table if its old chain lies before the drain
//! cursor, in the old table (where inserts put it) if at or past it, and
//! for the chain at the cursor possibly already in the new one; lookups
//! look there. Once the old table is drained the call gives it back. A
//! growth past a load of one segment per chain takes `chains /
//! MIGRATE_CHAINS` calls or so to drain, while the next growth waits for
//! the load to double again, so a resize is done before another is wanted.
//!
//! When the meta source has no table, the hash keeps its table (chains grow
//! longer) and asks again only once the number of allocated segments has
//! doubled. When the last allocated segment leaves, the hash goes back to
//! its table inside the arena and gives its pages back, so an arena that
//! empties holds no hash pages.
//!
//! The slab layer's hash (in `slab.rs`) picks buckets the same way
//! ([`bucket_index`]) and differs in the rest because its keys and its
//! numbers differ. A free here names a segment's exact start; a slab must
//! be found from any address inside it, so the slab hash keys slab-size
//! blocks, registers each slab under the blocks of its first and last
//! integers, and compares ranges on the records it reads anyway. An
//! arena's allocated segments are as many as its users make, every call of
//! the arena waits on its one lock, and the lock is dropped to fetch
//! tables, so this hash grows a few chains per call; a cache holds one
//! slab per many objects, and grows its hash whole under its slab lock,
//! where it takes slab records from the same meta source.

use core::mem::size_of;
use core::ptr::NonNull;

use crate::meta::{META_PAGE, MetaSource};
use crate::tag::{Link, TagPtr};

/// Chain heads in a bucket, the 16-byte unit the arena's statistics count
/// a table in.
const CHAINS_PER_BUCKET: usize = 2;

/// Buckets in the table that lives inside the arena.
const INLINE_BUCKETS: usize = 16;

/// Chain heads in the table that lives inside the arena.
const INLINE_CHAINS: usize = INLINE_BUCKETS * CHAINS_PER_BUCKET;

/// Most chains of the old table one call drains.
pub(crate) const MIGRATE_CHAINS: usize = 32;

/// Most segments one call moves to the new table (a chain that is longer,
/// after the meta source refused tables for a while, takes several calls).
pub(crate) const MIGRATE_SEGMENTS: usize = 32;

/// Most chain heads of the new table one call empties before use (one page).
const CLEAR_CHAINS: usize = META_PAGE / size_of::<Link>();

/// Fibonacci hashing: the high bits of `key * 2^64/phi` index the table, so
/// keys that differ only in high bits, or that come a power of two apart,
/// still land in different buckets. Not evenly: as many addresses as there
/// are buckets, 2^0 to 2^20 apart, use at least a quarter of the buckets
/// (the unit test `buckets_spread_power_of_two_strides_and_stay_in_the_table`
/// holds that); a hash of the low bits would put them all in one.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The bucket of `key` in a table of `1 << bits` buckets (`bits` from 1 to
/// 63), by Fibonacci hashing: the allocated-segment hash's and the slab
/// hash's one way of picking a bucket (here a bucket is one chain).
#[inline(always)]
pub(crate) fn bucket_index(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(GOLDEN) >> (64 - bits)) as usize
}

/// A table of chain heads handed over by the meta source.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    pub(crate) base: NonNull<u8>,
    pub(crate) pages: usize,
}

impl Table {
    /// log2 of the chains the table holds.
    fn bits(self) -> u32 {
        (self.pages * META_PAGE / size_of::<Link>()).ilog2()
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

/// Where a segment may be: the chain an insert uses, and for the chain a
/// resize is draining, the new chain its segments move to.
struct Homes {
    first: NonNull<Link>,
    moved: Option<NonNull<Link>>,
}

impl Homes {
    #[inline(always)]
    fn all(self) -> impl Iterator<Item = NonNull<Link>> {
        core::iter::once(self.first).chain(self.moved)
    }
}

/// Where a table's chain heads are.
#[derive(Clone, Copy)]
enum Store {
    Inline,
    Pages(Table),
}

/// A table of `1 << bits` chains.
#[derive(Clone, Copy)]
struct Level {
    store: Store,
    bits: u32,
}

impl Level {
    const INLINE: Level = Level {
        store: Store::Inline,
        bits: INLINE_CHAINS.trailing_zeros(),
    };

    #[inline(always)]
    fn index(self, addr: u64) -> usize {
        bucket_index(addr, self.bits)
    }

    fn chains(self) -> usize {
        1 << self.bits
    }
}

/// An allocated segment [`AllocHash::lookup`] found.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    /// The segment's tag.
    pub(crate) seg: TagPtr,
    from: LinkedFrom,
}

/// What links a found segment into its chain.
#[derive(Clone, Copy, Debug)]
enum LinkedFrom {
    /// The chain head itself.
    Head(NonNull<Link>),
    /// The tag before it in the chain.
    Tag(TagPtr),
}

/// The hash of allocated segments, chained through `list_next`.
pub(crate) struct AllocHash {
    inline: [Link; INLINE_CHAINS],
    /// The table segments go to.
    table: Level,
    /// The table being drained into `table`, while a resize is under way.
    draining: Option<Level>,
    /// Chains of `draining` below this one are empty.
    cursor: usize,
    /// Chains of `table` below this one are emptied for use, while a
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
            inline: [None; INLINE_CHAINS],
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

    /// Number of buckets (16 bytes, two chains each) of the table segments
    /// go to.
    pub(crate) fn buckets(&self) -> usize {
        self.table.chains() / CHAINS_PER_BUCKET
    }

    /// The inline chain heads, as the one pointer an operation derives
    /// every chain pointer from.
    #[inline(always)]
    fn inline_base(&mut self) -> NonNull<Link> {
        NonNull::from(&mut self.inline).cast()
    }

    /// Chain head `index` of `level`, whose inline heads start at `inline`.
    #[inline(always)]
    fn slot(inline: NonNull<Link>, level: Level, index: usize) -> NonNull<Link> {
        let base = match level.store {
            Store::Pages(table) => table.base.cast(),
            Store::Inline => inline,
        };
        // SAFETY: a table holds `1 << bits` chain heads (`bits` came from
        // its size, or is the inline table's) and `index` is below that.
        unsafe { base.add(index) }
    }

    /// The chains that may hold a segment starting at `addr`. While a
    /// resize is under way, a segment whose old chain the cursor passed is
    /// in the new table, else in the old one (where inserts put it) or, for
    /// the chain being drained, already moved to its new chain.
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
            // Drained, so its new chains were cleared first.
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

    /// Whether the checker may find `addr` in chain `index` of the new
    /// table (`draining == false`) or of the table being drained.
    pub(crate) fn belongs(&self, addr: u64, draining: bool, index: usize) -> bool {
        match (draining, self.draining) {
            (false, None) => self.table.index(addr) == index,
            (false, Some(old)) => self.table.index(addr) == index && old.index(addr) <= self.cursor,
            (true, Some(old)) => old.index(addr) == index && index >= self.cursor,
            (true, None) => false,
        }
    }

    /// Chains in use of the new table (`draining == false`: all, or those
    /// cleared while a resize is under way) or of the table being drained
    /// (none when no resize is under way), for the checker.
    pub(crate) fn chains_in(&self, draining: bool) -> usize {
        match (draining, self.draining) {
            (true, old) => old.map_or(0, Level::chains),
            (false, Some(_)) => self.cleared,
            (false, None) => self.table.chains(),
        }
    }

    /// Buckets of the table being drained (`draining == true`), or in use
    /// of the new table, for tests that watch a resize.
    #[cfg(test)]
    pub(crate) fn buckets_in(&self, draining: bool) -> usize {
        self.chains_in(draining) / CHAINS_PER_BUCKET
    }

    /// The first segment of chain `index` of the new table or the table
    /// being drained (for the checker; an `index` not below
    /// [`AllocHash::chains_in`] reads as an empty chain).
    pub(crate) fn chain(&mut self, draining: bool, index: usize) -> Link {
        if index >= self.chains_in(draining) {
            return None;
        }
        let level = if draining {
            self.draining.unwrap_or(self.table)
        } else {
            self.table
        };
        let inline = self.inline_base();
        // SAFETY: a chain head of this hash, reached through `&mut self`.
        unsafe { Self::slot(inline, level, index).read() }
    }

    /// Puts `seg` at the front of `slot`'s chain. Only the chain head and
    /// `seg` are written: no other tag is touched.
    ///
    /// # Safety
    /// `slot` is a chain head of this hash, and nothing else refers to it.
    #[inline(always)]
    unsafe fn push(slot: NonNull<Link>, seg: TagPtr) {
        // SAFETY: the caller's promise.
        unsafe {
            seg.set_list_next(slot.read());
            slot.write(Some(seg));
        }
    }

    /// Adds an allocated segment.
    #[inline]
    pub(crate) fn insert(&mut self, seg: TagPtr) {
        let slot = self.homes(seg.start()).first;
        // SAFETY: a chain head of this hash, reached through `&mut self`.
        unsafe { Self::push(slot, seg) };
        self.count += 1;
    }

    /// The allocated segment starting at `addr`, if any.
    #[inline]
    pub(crate) fn find(&mut self, addr: u64) -> Link {
        self.lookup(addr).map(|found| found.seg)
    }

    /// The allocated segment starting at `addr` and where its chain links
    /// it from, so that [`AllocHash::take`] unlinks it without walking the
    /// chain again.
    #[inline]
    pub(crate) fn lookup(&mut self, addr: u64) -> Option<Found> {
        for slot in self.homes(addr).all() {
            // SAFETY: a chain head of this hash, reached through `&mut self`.
            let mut cursor = unsafe { slot.read() };
            let mut from = LinkedFrom::Head(slot);
            while let Some(seg) = cursor {
                if seg.start() == addr {
                    return Some(Found { seg, from });
                }
                from = LinkedFrom::Tag(seg);
                cursor = seg.list_next();
            }
        }
        None
    }

    /// Takes out the segment [`AllocHash::lookup`] found, from where it
    /// found it linked. Nothing may have changed the hash in between (the
    /// arena holds its lock from the lookup to the take).
    #[inline]
    pub(crate) fn take(&mut self, found: Found) {
        let next = found.seg.list_next();
        match found.from {
            // SAFETY: a chain head of this hash that `lookup` read the
            // segment from, reached through `&mut self`.
            LinkedFrom::Head(slot) => unsafe { slot.write(next) },
            LinkedFrom::Tag(prev) => prev.set_list_next(next),
        }
        found.seg.set_list_next(None);
        self.count -= 1;
    }

    /// Takes an allocated segment out (a lookup by its start, then
    /// [`AllocHash::take`]: starts of allocated segments are unique).
    #[inline]
    pub(crate) fn remove(&mut self, seg: TagPtr) {
        if let Some(found) = self.lookup(seg.start()) {
            debug_assert!(found.seg == seg, "another segment with the same start");
            self.take(found);
        }
    }

    /// Pages for the table the hash wants now: it holds more segments than
    /// chains, no resize is under way, and the meta source did not refuse
    /// a table since the count last doubled.
    fn wanted_pages(&self) -> Option<usize> {
        if self.count <= self.table.chains()
            || self.draining.is_some()
            || self.count < self.retry_at
        {
            return None;
        }
        let buckets = self.count.checked_next_power_of_two()?;
        let bytes = buckets.checked_mul(CHAINS_PER_BUCKET * size_of::<Link>())?;
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
    /// drains the next chains of a resize under way, and once no segment
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

    /// Moves up to `MIGRATE_CHAINS` chains and `MIGRATE_SEGMENTS`
    /// segments of the draining table into the new one, clearing up to
    /// `CLEAR_CHAINS` chain heads of the new table just before they are
    /// first used; returns the draining table once it is empty.
    ///
    /// Chain `i` of a table of `2^b` chains holds the addresses whose hash
    /// has `i` in its top `b` bits, so old chain `i` spreads over new
    /// chains `i << shift .. (i + 1) << shift`, and the new chains are
    /// cleared in the order the cursor reaches them.
    fn drain(&mut self) -> Option<Table> {
        let old = self.draining?;
        let table = self.table;
        let shift = table.bits - old.bits;
        let inline = self.inline_base();
        let (mut moved, mut cleared, mut drained) = (0, 0, 0);
        while self.cursor < old.chains() && drained < MIGRATE_CHAINS {
            let needed = (self.cursor + 1) << shift;
            while self.cleared < needed && cleared < CLEAR_CHAINS {
                // SAFETY: a chain head of the new table not in use yet.
                unsafe { Self::slot(inline, table, self.cleared).write(None) };
                self.cleared += 1;
                cleared += 1;
            }
            if self.cleared < needed {
                break;
            }
            let from = Self::slot(inline, old, self.cursor);
            // SAFETY: a chain head of this hash, reached through `&mut self`.
            while let Some(seg) = unsafe { from.read() } {
                if moved == MIGRATE_SEGMENTS {
                    break;
                }
                // SAFETY: as above.
                unsafe { from.write(seg.list_next()) };
                let to = Self::slot(inline, table, table.index(seg.start()));
                // SAFETY: a cleared chain head of the new table, not `from`.
                unsafe { Self::push(to, seg) };
                moved += 1;
            }
            // SAFETY: as above.
            if unsafe { from.read() }.is_some() {
                break;
            }
            self.cursor += 1;
            drained += 1;
        }
        #[cfg(test)]
        {
            self.most_moved = self.most_moved.max(moved);
        }
        if self.cursor < old.chains() {
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

    /// Checks every chain of both tables as the arena's checker does, and
    /// that each of `live` is found; returns the segments the chains hold.
    fn consistent(hash: &mut AllocHash, live: &[TagPtr]) -> usize {
        let mut held = 0;
        for draining in [false, true] {
            for index in 0..hash.chains_in(draining) {
                let mut cursor = hash.chain(draining, index);
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
                let mut hit = vec![false; level.chains()];
                for k in 0..level.chains() as u64 {
                    hit[level.index(k << shift)] = true;
                }
                let used = hit.iter().filter(|&&h| h).count();
                assert!(
                    4 * used >= level.chains(),
                    "stride 2^{shift} uses {used} of {} chains",
                    level.chains()
                );
            }
            assert!(level.index(u64::MAX) < level.chains());
        }
    }

    #[test]
    fn a_bucket_chain_finds_and_removes_every_member() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut hash = AllocHash::new();
        // Three starts that share the inline chain of 0.
        let chain = Level::INLINE.index(0);
        let starts: Vec<u64> = (0..)
            .map(|k| k * 8)
            .filter(|&a| Level::INLINE.index(a) == chain)
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
        // The newest heads the chain; an insert touched no other tag.
        assert_eq!(hash.chain(false, chain), Some(segs[2]));
        assert_eq!(segs[0].list_next(), None);
        // Out of the middle, then the head, then the last.
        hash.remove(segs[1]);
        assert_eq!(hash.find(starts[1]), None);
        assert_eq!(segs[2].list_next(), Some(segs[0]));
        consistent(&mut hash, &[segs[0], segs[2]]);
        hash.remove(segs[2]);
        assert_eq!(hash.chain(false, chain), Some(segs[0]));
        consistent(&mut hash, &segs[..1]);
        hash.remove(segs[0]);
        assert_eq!(hash.chain(false, chain), None);
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
        let mut live = fill(&mut hash, &mut stock, 0, INLINE_CHAINS as u64);
        assert_eq!(
            hash.claim_growth(),
            None,
            "a segment per chain is no overload"
        );
        live.extend(fill(&mut hash, &mut stock, 0x100_0000, 1));
        grow(&mut hash, &tables);
        assert_eq!(
            (hash.buckets(), hash.resizes),
            (META_PAGE / (CHAINS_PER_BUCKET * size_of::<Link>()), 1)
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

        // A second growth drains a paged table of 512 chains, 32 a call,
        // while segments come and go.
        let more = 2 * hash.buckets() as u64 + 1 - live.len() as u64;
        live.extend(fill(&mut hash, &mut stock, 0x200_0000, more));
        grow(&mut hash, &tables);
        assert_eq!(tables.out(), 1 + 4, "the old table and 1024 buckets");
        let old_chains = hash.draining.unwrap().chains();
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
            assert!(hash.cursor - cursor <= MIGRATE_CHAINS);
        }
        assert!(calls as usize >= old_chains / MIGRATE_CHAINS);
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
