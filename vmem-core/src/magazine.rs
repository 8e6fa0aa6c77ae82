//! The magazine layer: per-CPU loaded and previous magazines, and the
//! depot of full and empty magazines behind its own lock.
//!
//! A magazine is a stack of constructed objects. Each CPU allocates from
//! its loaded magazine and frees into it; when it runs empty (or full) the
//! CPU swaps in its previous magazine, and only when both are exhausted
//! does it trade with the depot: a full magazine for an empty one, or the
//! reverse. So a CPU goes to the depot at most once per magazine's worth of
//! operations, and its previous magazine is always either full or empty.
//! When the depot lock is contended the magazine size grows, as the paper
//! describes, so CPUs come to the depot less often.
//!
//! A free never allocates. It only moves an object into a magazine that
//! is already there: the CPU's two, or an empty one the depot holds. When
//! there is none, the object goes back to its slab (as illumos's
//! `kmem_cache_free` does when it can get no empty magazine), which needs
//! no memory either. So a free never asks a meta source for pages and
//! never fails for want of memory. New magazines come from the allocation side: after
//! an allocation the slab layer served, with no CPU lock held, the cache
//! stocks the depot with an empty magazine when the depot has none, or
//! when frees have recently gone to the slab layer for want of one (one
//! magazine per magazine's worth of such frees). A workload that frees
//! what it allocated thus reaches its steady state after one round trip,
//! and a burst of frees that no allocation announced goes partly to the
//! slab layer.

use core::ptr::NonNull;

use crate::cpu::{HELD_CPUS, MAX_CPUS};
use crate::meta::{MetaSource, RecordPool};
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Mutex, OwnedCell};

/// Most rounds a magazine holds.
pub(crate) const MAG_ROUNDS: usize = 62;

/// The magazine sizes a cache grows through under contention.
pub(crate) const MAG_SIZES: [u32; 7] = [1, 3, 7, 15, 31, 47, 62];

/// Depot operations per contention window.
const WINDOW_OPS: u64 = 256;

/// Contended depot acquisitions in one window that make magazines grow.
const WINDOW_CONTENTION: u64 = 3;

pub(crate) type MagLink = Option<NonNull<Magazine>>;

/// A magazine: a stack of up to `cap` objects, 512 bytes on eight cache
/// lines of its own (seven a meta page, after the page header), so a CPU
/// popping a magazine's last rounds never shares a line with the counter
/// of the next magazine, which another CPU may hold.
#[repr(C, align(64))]
pub(crate) struct Magazine {
    rounds: u32,
    cap: u32,
    next: MagLink,
    objs: [u64; MAG_ROUNDS],
}

/// Access to a magazine.
///
/// # Safety
/// The caller holds the lock of the place that owns the magazine (a CPU
/// slot or the depot), and no other reference to it is alive.
pub(crate) unsafe fn mag<'x>(m: NonNull<Magazine>) -> &'x mut Magazine {
    // SAFETY: per the function's contract.
    unsafe { &mut *m.as_ptr() }
}

impl Magazine {
    /// Asks the CPU to bring all eight of `m`'s lines into its cache ahead
    /// of use, for writing when `write` (an empty magazine about to be
    /// filled) or for reading (a full one about to be emptied). A magazine
    /// taken from the depot was last written on another CPU; fetched
    /// together, its lines arrive in the time one of them takes, where
    /// popping or pushing would wait for each in turn. A hint only: it
    /// changes no memory, and does nothing off x86_64.
    #[inline]
    pub(crate) fn prefetch(m: NonNull<Magazine>, write: bool) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_MM_HINT_ET0, _MM_HINT_T0, _mm_prefetch};
            let base = m.as_ptr().cast::<i8>();
            for line in 0..size_of::<Magazine>() / 64 {
                let p = base.wrapping_add(line * 64);
                // SAFETY: prefetching is a hint that neither reads nor
                // writes memory, and the address lies in the magazine.
                unsafe {
                    if write {
                        _mm_prefetch::<_MM_HINT_ET0>(p);
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(p);
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (m, write);
    }

    pub(crate) fn rounds(&self) -> u32 {
        self.rounds
    }

    pub(crate) fn cap(&self) -> u32 {
        self.cap
    }

    pub(crate) fn is_full(&self) -> bool {
        self.rounds >= self.cap
    }

    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<u64> {
        self.rounds = self.rounds.checked_sub(1)?;
        self.objs.get(self.rounds as usize).copied()
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, obj: u64) -> bool {
        if self.is_full() {
            return false;
        }
        match self.objs.get_mut(self.rounds as usize) {
            Some(slot) => {
                *slot = obj;
                self.rounds += 1;
                true
            }
            None => false,
        }
    }

    /// The objects it holds.
    pub(crate) fn objects(&self) -> &[u64] {
        &self.objs[..(self.rounds as usize).min(MAG_ROUNDS)]
    }
}

/// A CPU's loaded and previous magazines. The previous one is always
/// full or empty.
#[derive(Clone, Copy, Default)]
pub(crate) struct MagPair {
    pub(crate) loaded: MagLink,
    pub(crate) prev: MagLink,
}

/// One CPU's magazines and counters for the locked path ([`crate::CpuId`]
/// callers), under that CPU's lock.
#[derive(Default)]
pub(crate) struct CpuMags {
    pub(crate) pair: MagPair,
    /// Allocations served from this CPU's magazines.
    pub(crate) alloc_hits: u64,
    /// Allocations that found no object in the magazines or depot.
    pub(crate) alloc_misses: u64,
    /// Frees that went into this CPU's magazines.
    pub(crate) free_hits: u64,
    /// Frees that found no room in the magazines or depot.
    pub(crate) free_misses: u64,
    /// Magazines this CPU took from the depot (a full one for an
    /// allocation, an empty one for a free), on either path: the held
    /// path counts its misses and exchanges here too, on its slow path.
    pub(crate) exchanges: u64,
}

// SAFETY: the magazines belong to this slot and are reached only under its lock.
unsafe impl Send for CpuMags {}

/// The part of a CPU slot that only the context holding that CPU
/// ([`crate::CpuLocal`]) touches: illumos's `cc_loaded` and `cc_rounds`.
/// The loaded magazine's round count lives here, on the slot's first
/// line, while the magazine is loaded (its own count is stale then and is
/// written back before anyone else may see it), so a hit reads and writes
/// this line and the line of the round it takes or puts.
#[derive(Default)]
pub(crate) struct Owned {
    pub(crate) pair: MagPair,
    /// Rounds in the loaded magazine (0 with none loaded).
    rounds: u32,
    /// Capacity of the loaded magazine (0 with none loaded).
    cap: u32,
    /// The last request ([`CpuSlot::asked`]) this CPU answered.
    pub(crate) answered: u64,
}

impl Owned {
    /// Takes the loaded magazine's top round.
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<u64> {
        let rounds = self.rounds.checked_sub(1)?;
        let m = self.pair.loaded?;
        // SAFETY: the holder of this CPU owns its loaded magazine.
        let obj = unsafe { mag(m) }.objs.get(rounds as usize).copied()?;
        self.rounds = rounds;
        Some(obj)
    }

    /// Puts `obj` on the loaded magazine; false when it is full or absent.
    #[inline(always)]
    pub(crate) fn push(&mut self, obj: u64) -> bool {
        if self.rounds >= self.cap {
            return false;
        }
        let Some(m) = self.pair.loaded else {
            return false;
        };
        // SAFETY: as in `pop`.
        match unsafe { mag(m) }.objs.get_mut(self.rounds as usize) {
            Some(slot) => {
                *slot = obj;
                self.rounds += 1;
                true
            }
            None => false,
        }
    }

    /// Writes the round count back into the loaded magazine, so its own
    /// count is exact before the pair is traded, drained or checked.
    pub(crate) fn write_back(&mut self) {
        if let Some(m) = self.pair.loaded {
            // SAFETY: as in `pop`.
            unsafe { mag(m) }.rounds = self.rounds;
        }
    }

    /// Reads the loaded magazine's count and capacity after the pair changed.
    pub(crate) fn reload(&mut self) {
        // SAFETY: as in `pop`.
        (self.rounds, self.cap) = self
            .pair
            .loaded
            .map_or((0, 0), |m| unsafe { (mag(m).rounds, mag(m).cap) });
    }

    /// Takes both magazines out (their counts exact), leaving none.
    pub(crate) fn take_pair(&mut self) -> [MagLink; 2] {
        self.write_back();
        let pair = core::mem::take(&mut self.pair);
        self.reload();
        [pair.loaded, pair.prev]
    }
}

/// Adds one to a counter only one context writes.
#[inline(always)]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// The fast path's part of a CPU slot, on one cache line: the held
/// magazines, the hit counters (written only by the holder: a relaxed
/// load and store, no read-modify-write; misses are counted on the slow
/// path, under the cache's counter lock), and the request word.
#[repr(C, align(64))]
pub(crate) struct HeldSlot {
    pub(crate) owned: OwnedCell<Owned>,
    pub(crate) alloc_hits: AtomicU64,
    pub(crate) free_hits: AtomicU64,
    /// Requests other contexts posted to this CPU's holder (each adds
    /// one): drain the held magazines. The holder answers every request up
    /// to the count it reads, on its next slow path or at
    /// [`crate::ObjectCache::honour`]. Written rarely, so it may share the
    /// holder's line.
    pub(crate) asked: AtomicU64,
}

// SAFETY: the held part is reached only by the context holding the slot's
// CPU, which the `CpuLocal` contract makes one at a time with each hold
// happening before the next; the counters and the request word are
// atomics.
unsafe impl Sync for HeldSlot {}
// SAFETY: as above; moving the slot moves magazines no other slot points to.
unsafe impl Send for HeldSlot {}

/// The locked path's part of a CPU slot, on one cache line.
#[repr(C, align(64))]
pub(crate) struct LockedSlot(pub(crate) Mutex<CpuMags>);

/// The slot of a CPU that may be held: its held line and its locked line
/// together on 128 bytes (the line a CPU writes and the one its
/// adjacent-line prefetcher pulls in), so no other CPU's line is pulled in
/// with it.
#[repr(C, align(128))]
struct SlotPair {
    held: HeldSlot,
    locked: LockedSlot,
}

/// A cache's CPU slots: the first [`HELD_CPUS`] with a held part, on 128
/// bytes each; the rest (none while `HELD_CPUS` is `MAX_CPUS`) locked
/// only, on 64 bytes each.
pub(crate) struct CpuSlots {
    paired: [SlotPair; HELD_CPUS],
    rest: [LockedSlot; MAX_CPUS - HELD_CPUS],
}

impl CpuSlots {
    pub(crate) fn new() -> Self {
        let locked = || LockedSlot(Mutex::new(CpuMags::default()));
        CpuSlots {
            paired: core::array::from_fn(|_| SlotPair {
                held: HeldSlot {
                    owned: OwnedCell::new(Owned::default()),
                    alloc_hits: AtomicU64::new(0),
                    free_hits: AtomicU64::new(0),
                    asked: AtomicU64::new(0),
                },
                locked: locked(),
            }),
            rest: core::array::from_fn(|_| locked()),
        }
    }

    /// The locked magazines of CPU `index % MAX_CPUS`.
    pub(crate) fn locked(&self, index: usize) -> &Mutex<CpuMags> {
        let i = index % MAX_CPUS;
        match self.paired.get(i) {
            Some(pair) => &pair.locked.0,
            None => &self.rest[i - HELD_CPUS].0,
        }
    }

    /// The held part of CPU `index`, which has one below [`HELD_CPUS`].
    #[inline(always)]
    pub(crate) fn held(&self, index: usize) -> Option<&HeldSlot> {
        self.paired.get(index).map(|pair| &pair.held)
    }
}

/// A stack of magazines chained through `next`.
#[derive(Clone, Copy)]
pub(crate) struct MagStack {
    head: MagLink,
    pub(crate) count: usize,
    /// The lowest count since the last working-set update.
    low: usize,
}

impl MagStack {
    const EMPTY: MagStack = MagStack {
        head: None,
        count: 0,
        low: 0,
    };

    fn push(&mut self, m: NonNull<Magazine>) {
        // SAFETY: the depot owns `m` now, under its lock.
        unsafe { mag(m).next = self.head };
        self.head = Some(m);
        self.count += 1;
    }

    fn pop(&mut self) -> MagLink {
        let m = self.head?;
        // SAFETY: the depot owns `m`, under its lock.
        self.head = unsafe { mag(m).next };
        self.count -= 1;
        self.low = self.low.min(self.count);
        Some(m)
    }

    /// Walks the stack (for the checker and purges).
    pub(crate) fn iter(&self) -> impl Iterator<Item = NonNull<Magazine>> {
        let mut cursor = self.head;
        core::iter::from_fn(move || {
            let m = cursor?;
            // SAFETY: the depot owns `m`, under its lock, held by the caller.
            cursor = unsafe { mag(m).next };
            Some(m)
        })
    }
}

/// The depot: full and empty magazines, the magazine size, contention
/// statistics, and the pool magazines come from.
pub(crate) struct Depot {
    pub(crate) full: MagStack,
    pub(crate) empty: MagStack,
    /// Rounds in a new magazine; zero turns magazines off.
    pub(crate) magsize: u32,
    window_ops: u64,
    window_contention: u64,
    /// Depot acquisitions that found the lock taken.
    pub(crate) contention: u64,
    /// Times the magazine size grew.
    pub(crate) resizes: u64,
    /// Frees that went to the slab layer for want of an empty magazine
    /// and that no magazine stocked since makes room for.
    unmet_frees: u64,
    pub(crate) pool: RecordPool<Magazine>,
}

// SAFETY: the depot owns its magazines and pool, reached only under its lock.
unsafe impl Send for Depot {}

impl Depot {
    pub(crate) const fn new(magsize: u32) -> Self {
        Depot {
            full: MagStack::EMPTY,
            empty: MagStack::EMPTY,
            magsize,
            window_ops: 0,
            window_contention: 0,
            contention: 0,
            resizes: 0,
            unmet_frees: 0,
            pool: RecordPool::new(),
        }
    }

    /// Records one acquisition of the depot lock, and grows the magazine
    /// size when the lock was contended often in the current window.
    pub(crate) fn note_access(&mut self, contended: bool) {
        self.window_ops += 1;
        if contended {
            self.contention += 1;
            self.window_contention += 1;
        }
        if self.window_contention >= WINDOW_CONTENTION {
            if let Some(&next) = MAG_SIZES.iter().find(|&&s| s > self.magsize)
                && self.magsize > 0
            {
                self.magsize = next;
                self.resizes += 1;
            }
            self.window_ops = 0;
            self.window_contention = 0;
        } else if self.window_ops >= WINDOW_OPS {
            self.window_ops = 0;
            self.window_contention = 0;
        }
    }

    pub(crate) fn take_full(&mut self) -> MagLink {
        self.full.pop()
    }

    pub(crate) fn put_full(&mut self, m: NonNull<Magazine>) {
        self.full.push(m);
    }

    pub(crate) fn put_empty(&mut self, m: NonNull<Magazine>) {
        self.empty.push(m);
    }

    /// An empty magazine of the current size from the depot, for a free;
    /// none when magazines are off or the depot has none. It never
    /// allocates: a free that gets none goes to the slab layer and says so
    /// with [`Depot::note_unmet_free`].
    pub(crate) fn take_empty(&mut self) -> MagLink {
        if self.magsize == 0 {
            return None;
        }
        let m = self.empty.pop()?;
        // SAFETY: the depot owns `m`; an empty magazine may grow to any
        // size up to its storage.
        unsafe { mag(m).cap = self.magsize.min(MAG_ROUNDS as u32) };
        Some(m)
    }

    /// Records a free that found no empty magazine, so a later allocation
    /// stocks one.
    pub(crate) fn note_unmet_free(&mut self) {
        self.unmet_frees = self.unmet_frees.saturating_add(1);
    }

    /// Stocks the depot with one new empty magazine from `meta` when it has
    /// none, or when frees went unmet since the last one was stocked; each
    /// magazine stocked covers a magazine's worth of unmet frees. Called
    /// by allocations the slab layer served, never by a free; without
    /// memory it stocks nothing (later frees go to the slab layer).
    pub(crate) fn stock_empty(&mut self, meta: &dyn MetaSource) {
        if self.magsize == 0 || (self.unmet_frees == 0 && self.empty.count > 0) {
            return;
        }
        let magsize = self.magsize.min(MAG_ROUNDS as u32);
        let Some(m) = self.pool.take(meta) else {
            return;
        };
        // SAFETY: a fresh record from the pool, written whole.
        unsafe {
            m.as_ptr().write(Magazine {
                rounds: 0,
                cap: magsize,
                next: None,
                objs: [0; MAG_ROUNDS],
            })
        };
        self.empty.push(m);
        self.unmet_frees = self.unmet_frees.saturating_sub(u64::from(magsize));
    }

    /// An empty magazine from the depot, if it has one.
    pub(crate) fn take_empty_existing(&mut self) -> MagLink {
        self.empty.pop()
    }

    /// Starts a new working-set interval: the counts now are the lows, and
    /// unmet frees are forgotten (a reap is not undone by old demand).
    pub(crate) fn reset_working_set(&mut self) {
        self.full.low = self.full.count;
        self.empty.low = self.empty.count;
        self.unmet_frees = 0;
    }

    /// Magazines untouched since the last working-set update: `(full, empty)`.
    pub(crate) fn idle(&self) -> (usize, usize) {
        (self.full.low, self.empty.low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeapMeta;

    /// Magazines and CPU slots own their cache lines: before this test a
    /// magazine was 8-aligned and started 16 bytes into a line, so its
    /// last rounds shared a line with the next magazine's counter.
    #[test]
    fn magazines_and_cpu_slots_own_their_cache_lines() {
        assert_eq!((size_of::<Magazine>(), align_of::<Magazine>()), (512, 64));
        assert_eq!(core::mem::offset_of!(Magazine, objs) % 64, 16);
        assert_eq!(RecordPool::<Magazine>::PER_PAGE, 7);
        assert_eq!((size_of::<HeldSlot>(), align_of::<HeldSlot>()), (64, 64));
        assert_eq!(
            (size_of::<LockedSlot>(), align_of::<LockedSlot>()),
            (64, 64)
        );
        assert_eq!((size_of::<SlotPair>(), align_of::<SlotPair>()), (128, 128));
        assert_eq!(
            size_of::<CpuSlots>(),
            HELD_CPUS * 128 + (MAX_CPUS - HELD_CPUS) * 64
        );
        assert_eq!(core::mem::offset_of!(CpuSlots, rest), HELD_CPUS * 128);
        let mut depot = Depot::new(3);
        let mut two = [None, None];
        for m in &mut two {
            depot.stock_empty(&HeapMeta);
            *m = depot.take_empty();
        }
        for m in two.map(Option::unwrap) {
            assert_eq!(m.as_ptr() as usize % 64, 0, "a magazine starts a line");
            depot.pool.give(m);
        }
        depot.pool.dispose(&HeapMeta);
    }

    #[test]
    fn contention_grows_the_magazine_size() {
        let mut depot = Depot::new(3);
        for _ in 0..1000 {
            depot.note_access(false);
        }
        assert_eq!(
            (depot.magsize, depot.resizes),
            (3, 0),
            "no contention, no growth"
        );
        for _ in 0..3 {
            depot.note_access(true);
        }
        assert_eq!((depot.magsize, depot.resizes, depot.contention), (7, 1, 3));
        for _ in 0..100 {
            depot.note_access(true);
        }
        assert_eq!(
            depot.magsize, MAG_ROUNDS as u32,
            "grows up to the largest size"
        );
        let mut off = Depot::new(0);
        for _ in 0..10 {
            off.note_access(true);
        }
        assert_eq!(off.magsize, 0, "magazines turned off stay off");
    }

    #[test]
    fn empty_magazines_take_the_current_size_and_stacks_track_their_low() {
        let mut depot = Depot::new(3);
        depot.stock_empty(&HeapMeta);
        let m = depot.take_empty().unwrap();
        // SAFETY: the magazine is ours alone here.
        let mg = unsafe { mag(m) };
        assert!(mg.push(1) && mg.push(2) && mg.push(3) && !mg.push(4));
        assert_eq!(mg.pop(), Some(3));
        mg.push(3);
        depot.put_full(m);
        depot.reset_working_set();
        assert_eq!(depot.idle(), (1, 0));
        let m = depot.take_full().unwrap();
        assert_eq!(
            depot.idle(),
            (0, 0),
            "taking one lowers the working-set low"
        );
        // SAFETY: as above.
        while unsafe { mag(m) }.pop().is_some() {}
        depot.magsize = 15;
        depot.put_empty(m);
        let again = depot.take_empty().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { mag(again) }.cap(), 15);
        depot.pool.give(again);
        depot.pool.dispose(&HeapMeta);
    }

    #[test]
    fn frees_take_only_stocked_magazines_and_unmet_frees_ask_for_more() {
        let mut depot = Depot::new(3);
        assert!(depot.take_empty().is_none(), "a free gets no new magazine");
        depot.stock_empty(&HeapMeta);
        depot.stock_empty(&HeapMeta);
        assert_eq!(depot.empty.count, 1, "one spare empty magazine is enough");
        let m = depot.take_empty().unwrap();
        for _ in 0..7 {
            depot.note_unmet_free();
        }
        for _ in 0..5 {
            depot.stock_empty(&HeapMeta);
        }
        assert_eq!(
            depot.empty.count, 3,
            "a magazine per three unmet frees, rounded up, and none beyond"
        );
        depot.put_empty(m);
        depot.note_unmet_free();
        depot.reset_working_set();
        depot.stock_empty(&HeapMeta);
        assert_eq!(depot.empty.count, 4, "a reap forgets unmet frees");
        let mut off = Depot::new(0);
        off.stock_empty(&HeapMeta);
        assert_eq!(off.pool.in_use, 0, "magazines off: nothing stocked");
        depot.pool.dispose(&HeapMeta);
    }
}
