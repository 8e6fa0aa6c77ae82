//! Object caches: the slab layer with the magazine layer over it, debug
//! checks, statistics and the checker.
//!
//! An allocation tries the CPU's magazines, then the depot, then the slab
//! layer; a free goes the other way. Objects in magazines are constructed
//! (the constructor ran when they left the slab layer), so the common path
//! neither constructs nor takes a shared lock.

use core::ptr::NonNull;

use lock_api::RawMutex;

use crate::arena::{Arena, Backing, FreeError};
use crate::cpu::{CpuGuard, CpuId, CpuLocal, HELD_CPUS, MAX_CPUS};
use crate::error::{Error, ErrorKind, Result};
use crate::magazine::{
    CpuMags, CpuSlots, Depot, HeldSlot, MAG_ROUNDS, MagLink, MagPair, Magazine, bump, mag,
};
use crate::meta::{MetaPages, MetaSource};
use crate::name::{self, Name};
use crate::slab::{MAX_OBJS, SlabLayer};
use crate::sync::atomic::Ordering;
use crate::sync::{Mutex, MutexGuard};

/// A constructor or destructor: called with the object's address.
pub type ObjectHook<'a> = &'a (dyn Fn(u64) + Sync);

/// Pattern a freed object holds while debug checks are on.
const POISON: u64 = 0xdead_beef_dead_beef;
/// Pattern of the red zone after each object.
const REDZONE: u64 = 0xfeed_face_feed_face;
/// Byte pattern between the object's end and its red zone.
const PAD: u8 = 0xbb;
/// Buffer-tag states (mixed with the object's address and the cache's salt).
const TAG_ALLOCATED: u64 = 0xa110_ca7e_d0b1_ec75;
const TAG_FREE: u64 = 0xf4ee_d0b1_ec75_0000;

/// The magazine size caches start with when none is given.
pub const DEFAULT_MAGAZINE: u32 = 15;

/// Caches made so far: each cache's number goes into its salt, so that two
/// caches of one configuration still tag their objects apart. A plain
/// atomic even under `loom`, as the other statics (see `sync`).
static CACHES_MADE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// SplitMix64's finalizer: spreads `z`'s bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How an object cache is made.
#[derive(Clone, Copy)]
pub struct CacheConfig<'a> {
    name: Name,
    size: u64,
    align: u64,
    ctor: Option<ObjectHook<'a>>,
    dtor: Option<ObjectHook<'a>>,
    magazine: u32,
    memory: bool,
    debug: bool,
    meta: &'a dyn MetaSource,
    cpu: &'a dyn CpuId,
    local: Option<&'a dyn CpuLocal>,
}

impl<'a> CacheConfig<'a> {
    /// A no-touch cache of objects of `size` integers: the cache never reads
    /// or writes the integers it hands out. Slab records and magazines come
    /// from `meta`; `cpu` says which CPU is running.
    pub fn new(name: &str, size: u64, meta: &'a dyn MetaSource, cpu: &'a dyn CpuId) -> Self {
        CacheConfig {
            name: name::keep(name),
            size,
            align: 1,
            ctor: None,
            dtor: None,
            magazine: DEFAULT_MAGAZINE,
            memory: false,
            debug: false,
            meta,
            cpu,
            local: None,
        }
    }

    /// The platform whose held CPUs may use the fast path
    /// ([`ObjectCache::alloc_local`]), and which a reap, purge or check
    /// asks for another CPU's slot. Without it every call takes the
    /// locked path through `cpu`.
    pub const fn local(mut self, local: &'a dyn CpuLocal) -> Self {
        self.local = Some(local);
        self
    }

    /// Objects aligned to `align` (a power of two).
    pub const fn align(mut self, align: u64) -> Self {
        self.align = align;
        self
    }

    /// Runs `ctor` on an object when it leaves the slab layer, `dtor` when
    /// it goes back.
    pub const fn hooks(
        mut self,
        ctor: Option<ObjectHook<'a>>,
        dtor: Option<ObjectHook<'a>>,
    ) -> Self {
        self.ctor = ctor;
        self.dtor = dtor;
        self
    }

    /// Magazines of `rounds` objects to start with (at most 62; zero turns
    /// the magazine layer off).
    pub const fn magazine(mut self, rounds: u32) -> Self {
        self.magazine = rounds;
        self
    }

    /// Memory mode: the integers are addresses of memory the cache may
    /// write, so debug checks can poison freed objects and guard red zones.
    ///
    /// # Safety
    /// Every integer the backing arena hands out must be the address of
    /// writable memory that nothing else uses while it is allocated.
    pub const unsafe fn memory(mut self) -> Self {
        self.memory = true;
        self
    }

    /// Debug checks: every free is verified (a double free, or an object of
    /// another cache, is `BadFree`); in memory mode freed objects are
    /// poisoned and checked on reuse, and a red zone after each object is
    /// checked on free (`Corrupt` with the address). In memory mode each
    /// object then takes 16 bytes more (its red zone and buffer tag, after
    /// the object rounded up to 8).
    pub const fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
}

/// Counters of one object cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheStats {
    /// Successful allocations.
    pub allocs: u64,
    /// Successful frees.
    pub frees: u64,
    /// Allocations refused (no slab could be had).
    pub alloc_fails: u64,
    /// Objects users hold now.
    pub in_use: u64,
    /// Integers per object slot (the object rounded up, with its debug tag).
    pub chunk: u64,
    /// Integers per slab.
    pub slab_size: u64,
    /// Objects per slab.
    pub objects_per_slab: u64,
    /// Slabs now.
    pub slabs: u64,
    /// Empty slabs waiting for a reap.
    pub slabs_empty: u64,
    /// Slabs created.
    pub slabs_created: u64,
    /// Slabs given back to the arena.
    pub slabs_destroyed: u64,
    /// Allocations served by a CPU's magazines.
    pub magazine_hits: u64,
    /// Allocations that went to the slab layer.
    pub magazine_misses: u64,
    /// Frees that went into a CPU's magazines.
    pub free_magazine_hits: u64,
    /// Frees that went to the slab layer.
    pub free_magazine_misses: u64,
    /// Rounds in a new magazine now.
    pub magazine_size: u64,
    /// Magazines the cache owns.
    pub magazines: u64,
    /// Full magazines in the depot.
    pub depot_full: u64,
    /// Empty magazines in the depot.
    pub depot_empty: u64,
    /// Depot lock acquisitions that had to wait.
    pub depot_contention: u64,
    /// Times the magazine size grew.
    pub magazine_resizes: u64,
    /// Reaps.
    pub reaps: u64,
    /// Meta pages the cache holds: slab records, magazines and the slab
    /// hash table. A reap gives back every record page and magazine page
    /// none of whose records is in use, and the table once no slab is left,
    /// so after a full reap of an unused cache it is 0. Kept for reuse, it
    /// may stay higher after a failed call that took a page.
    pub meta_pages: u64,
}

/// Counters of one CPU slot of an object cache ([`ObjectCache::cpu_stats`]),
/// on both paths: the locked one ([`CpuId`] callers) and, for CPUs below
/// [`HELD_CPUS`], the fast path ([`ObjectCache::alloc_local`]). Summed over
/// every slot, the hits and misses are [`CacheStats`]' magazine figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuStats {
    /// Allocations served by this CPU's magazines.
    pub alloc_hits: u64,
    /// Allocations that found no object in this CPU's magazines nor a full
    /// magazine in the depot, and went to the slab layer.
    pub alloc_misses: u64,
    /// Frees that went into this CPU's magazines.
    pub free_hits: u64,
    /// Frees that found no room in this CPU's magazines nor an empty
    /// magazine in the depot, and went to the slab layer.
    pub free_misses: u64,
    /// Magazines this CPU took from the depot: a full one for an
    /// allocation (giving back its empty previous one) or an empty one for
    /// a free (giving back its full previous one).
    pub depot_exchanges: u64,
}

impl core::ops::AddAssign for CpuStats {
    /// Adds every counter of `other` (to sum one CPU over several caches).
    fn add_assign(&mut self, other: CpuStats) {
        self.alloc_hits += other.alloc_hits;
        self.alloc_misses += other.alloc_misses;
        self.free_hits += other.free_hits;
        self.free_misses += other.free_misses;
        self.depot_exchanges += other.depot_exchanges;
    }
}

/// Everything of a cache but its arena, which callers pass in: quantum
/// caches live inside storage their arena points to.
///
/// In declaration order (`repr(C)`): the fields read on every call and
/// written only when the cache is made, then the CPU slots (aligned to 128
/// bytes, the held ones on 128 bytes each), then the shared locks, so a
/// CPU taking the depot's lock does not evict another CPU's copy of the
/// read-mostly fields or of its slot. The locks are not padded apart from
/// each other: a kernel builds its quantum caches by value on its boot
/// stack, and every byte of a cache counts sixteen times there.
#[repr(C)]
pub(crate) struct CacheCore<'a> {
    pub(crate) name: Name,
    size: u64,
    chunk: u64,
    /// Mixed into every buffer tag: chosen when the cache is made from a
    /// count of caches and the configuration, never from an address, so a
    /// cache may move and its tags stay the same on every platform.
    salt: u64,
    memory: bool,
    verify: bool,
    poison: bool,
    ctor: Option<ObjectHook<'a>>,
    dtor: Option<ObjectHook<'a>>,
    meta: &'a dyn MetaSource,
    cpu: &'a dyn CpuId,
    local: Option<&'a dyn CpuLocal>,
    /// Whether the magazine layer is on (a cache made with magazine size
    /// zero never touches its CPU slots' magazines or the depot).
    magazines: bool,
    cpus: CpuSlots,
    depot: Mutex<Depot>,
    slabs: Mutex<SlabLayer>,
    counters: Mutex<Counters>,
}

/// Counters of the slow paths.
#[derive(Default)]
struct Counters {
    slab_allocs: u64,
    slab_frees: u64,
    alloc_fails: u64,
    reaps: u64,
}

fn highbit1(v: u64) -> u32 {
    64 - v.leading_zeros()
}

impl<'a> CacheCore<'a> {
    /// A cache over an arena of `quantum`, as `config` says; `slab_size`
    /// forces the slab size (quantum caches follow the reference rule).
    pub(crate) fn new(
        config: &CacheConfig<'a>,
        quantum: u64,
        slab_size: Option<u64>,
    ) -> Result<Self> {
        if config.size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "object size zero"));
        }
        if !config.align.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "object alignment is not a power of two",
            ));
        }
        let too_big = Error::new(ErrorKind::Overflow, "object too large for a cache");
        let debug_memory = config.debug && config.memory;
        // In debug memory mode each object is followed by its red zone and
        // buffer tag (8 bytes each).
        let body = if debug_memory {
            config
                .size
                .checked_next_multiple_of(8)
                .and_then(|b| b.checked_add(16))
                .ok_or(too_big)?
        } else {
            config.size
        };
        let align = if config.memory {
            config.align.max(8)
        } else {
            config.align
        };
        let chunk = body.checked_next_multiple_of(align).ok_or(too_big)?;
        let slab_size = match slab_size {
            Some(s) => s,
            None => chunk
                .checked_mul(8)
                .and_then(|b| b.max(quantum).checked_next_power_of_two())
                .ok_or(too_big)?,
        };
        if chunk > slab_size {
            return Err(too_big);
        }
        let objs = (slab_size / chunk).min(MAX_OBJS as u64) as u32;
        let magazine = config.magazine.min(MAG_ROUNDS as u32);
        let made = CACHES_MADE.fetch_add(1, core::sync::atomic::Ordering::Relaxed) as u64;
        Ok(CacheCore {
            name: config.name,
            size: config.size,
            chunk,
            salt: mix(mix(made) ^ config.size ^ config.align.rotate_left(32)),
            memory: config.memory,
            verify: config.debug,
            poison: debug_memory,
            ctor: config.ctor,
            dtor: config.dtor,
            meta: config.meta,
            cpu: config.cpu,
            local: config.local,
            magazines: magazine > 0,
            cpus: CpuSlots::new(),
            depot: Mutex::new(Depot::new(magazine)),
            slabs: Mutex::new(SlabLayer::new(chunk, slab_size, objs, align.max(quantum))),
            counters: Mutex::new(Counters::default()),
        })
    }

    /// The slab size quantum caches use: `max(2^highbit(3 * qcache_max), 64)`
    /// integers, at least one quantum.
    pub(crate) fn qcache_slab_size(qcache_max: u64, quantum: u64) -> Option<u64> {
        let bits = highbit1(qcache_max.checked_mul(3)?);
        let slab = 1u64.checked_shl(bits).filter(|&s| s != 0 && bits < 64)?;
        Some(slab.max(64).max(quantum))
    }

    /// Object size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    fn slot(&self) -> &Mutex<CpuMags> {
        self.cpus.locked(self.cpu.current())
    }

    fn lock_depot(&self) -> MutexGuard<'_, Depot> {
        let (mut depot, contended) = match self.depot.try_lock() {
            Some(depot) => (depot, false),
            None => (self.depot.lock(), true),
        };
        depot.note_access(contended);
        depot
    }

    /// Takes an object from `pair`, trading with the depot; `None` when
    /// both magazines and the depot's full ones are empty. A poisoned
    /// object found written after its free stays in its magazine, and the
    /// allocation is refused (`Corrupt`).
    fn pair_alloc(&self, pair: &mut MagPair, exchanges: &mut u64) -> Result<Option<u64>> {
        loop {
            if let Some(m) = pair.loaded
                // SAFETY: the caller owns the pair (its CPU's lock or hold).
                && let Some(obj) = unsafe { mag(m) }.pop()
            {
                if self.poison
                    && let Err(e) = self.check_poison(obj)
                {
                    // SAFETY: as above; the pop just made room for it.
                    unsafe { mag(m) }.push(obj);
                    return Err(e);
                }
                return Ok(Some(obj));
            }
            // SAFETY: as above.
            if pair.prev.is_some_and(|p| unsafe { mag(p) }.rounds() > 0) {
                core::mem::swap(&mut pair.loaded, &mut pair.prev);
                continue;
            }
            let mut depot = self.lock_depot();
            if depot.magsize == 0 {
                return Ok(None);
            }
            let Some(full) = depot.take_full() else {
                return Ok(None);
            };
            Magazine::prefetch(full, false);
            if let Some(empty) = pair.prev {
                depot.put_empty(empty);
            }
            pair.prev = pair.loaded;
            pair.loaded = Some(full);
            *exchanges += 1;
        }
    }

    /// Puts an object in `pair`, trading with the depot for an empty
    /// magazine it already holds; false when there is no room, and the
    /// object goes to the slab layer. It never allocates.
    fn pair_free(&self, pair: &mut MagPair, obj: u64, exchanges: &mut u64) -> bool {
        loop {
            // SAFETY: the caller owns the pair (its CPU's lock or hold).
            if pair.loaded.is_some_and(|m| unsafe { mag(m) }.push(obj)) {
                return true;
            }
            // SAFETY: as above.
            if pair.prev.is_some_and(|p| unsafe { mag(p) }.rounds() == 0) {
                core::mem::swap(&mut pair.loaded, &mut pair.prev);
                continue;
            }
            let mut depot = self.lock_depot();
            // Never a new magazine here: a free must not allocate.
            let Some(empty) = depot.take_empty() else {
                depot.note_unmet_free();
                return false;
            };
            Magazine::prefetch(empty, true);
            if let Some(full) = pair.prev {
                depot.put_full(full);
            }
            pair.prev = pair.loaded;
            pair.loaded = Some(empty);
            *exchanges += 1;
        }
    }

    /// Takes an object from the CPU's locked magazines.
    #[inline]
    fn mag_alloc(&self) -> Result<Option<u64>> {
        if !self.magazines {
            return Ok(None);
        }
        let mut c = self.slot().lock();
        let c = &mut *c;
        let got = self.pair_alloc(&mut c.pair, &mut c.exchanges)?;
        if got.is_some() {
            c.alloc_hits += 1;
        } else {
            c.alloc_misses += 1;
        }
        Ok(got)
    }

    /// Puts an object in the CPU's locked magazines; false when there is
    /// no room.
    #[inline]
    fn mag_free(&self, obj: u64) -> bool {
        if !self.magazines {
            return false;
        }
        let mut c = self.slot().lock();
        let c = &mut *c;
        let put = self.pair_free(&mut c.pair, obj, &mut c.exchanges);
        if put {
            c.free_hits += 1;
        } else {
            c.free_misses += 1;
        }
        put
    }

    /// The slot whose held part `guard`'s holder may use: when `guard` is
    /// of this cache's platform (told apart by address, so never a
    /// zero-sized one; see [`CpuLocal`]), names a CPU below [`HELD_CPUS`],
    /// and the magazine layer is on.
    #[inline(always)]
    fn held_slot<L: CpuLocal>(&self, guard: &CpuGuard<'_, L>) -> Option<&HeldSlot> {
        let ours = self.local?;
        let platform: *const L = guard.platform();
        if size_of::<L>() == 0 || !core::ptr::addr_eq(ours, platform) || !self.magazines {
            return None;
        }
        self.cpus.held(guard.index())
    }

    /// Takes an object from the held part of `slot`: the fast path.
    ///
    /// # Safety
    /// The caller holds the slot's CPU.
    #[inline(always)]
    unsafe fn held_alloc(&self, slot: &HeldSlot, cpu: usize) -> Result<Option<u64>> {
        // SAFETY: the caller holds the CPU, so no other context touches
        // the held part until it lets go.
        let hit = slot.owned.with_mut(|o| unsafe { &mut *o }.pop());
        match hit {
            Some(obj) if !self.poison => {
                bump(&slot.alloc_hits);
                Ok(Some(obj))
            }
            // SAFETY: the caller's hold, passed on.
            _ => unsafe { self.held_alloc_slow(slot, cpu, hit) },
        }
    }

    /// The fast path's miss (and its poisoned hit): answers requests,
    /// then trades with the depot as the locked path does.
    ///
    /// # Safety
    /// As [`CacheCore::held_alloc`].
    #[cold]
    unsafe fn held_alloc_slow(
        &self,
        slot: &HeldSlot,
        cpu: usize,
        hit: Option<u64>,
    ) -> Result<Option<u64>> {
        if let Some(obj) = hit {
            if let Err(e) = self.check_poison(obj) {
                // SAFETY: the caller's hold; the pop just made room for it.
                slot.owned.with_mut(|o| unsafe { &mut *o }.push(obj));
                return Err(e);
            }
            bump(&slot.alloc_hits);
            return Ok(Some(obj));
        }
        // SAFETY: the caller's hold, passed on.
        unsafe { self.honour_held(slot) };
        let mut exchanges = 0;
        // SAFETY: the caller's hold.
        let got = slot.owned.with_mut(|o| {
            // SAFETY: as above: this context holds the CPU.
            let o = unsafe { &mut *o };
            o.write_back();
            let got = self.pair_alloc(&mut o.pair, &mut exchanges);
            o.reload();
            got
        });
        // The slow path's counts go on the CPU's locked line, under its
        // lock (taken by no one else on this CPU's fast path).
        let mut c = self.cpus.locked(cpu).lock();
        c.exchanges += exchanges;
        let got = got?;
        if got.is_some() {
            drop(c);
            bump(&slot.alloc_hits);
        } else {
            c.alloc_misses += 1;
        }
        Ok(got)
    }

    /// Puts an object in the held part of `slot`: the fast path; false
    /// when there is no room.
    ///
    /// # Safety
    /// As [`CacheCore::held_alloc`].
    #[inline(always)]
    unsafe fn held_free(&self, slot: &HeldSlot, cpu: usize, obj: u64) -> bool {
        // SAFETY: the caller holds the CPU.
        if slot.owned.with_mut(|o| unsafe { &mut *o }.push(obj)) {
            bump(&slot.free_hits);
            return true;
        }
        // SAFETY: the caller's hold, passed on.
        unsafe { self.held_free_slow(slot, cpu, obj) }
    }

    /// The fast path's full magazines: answers requests, then trades with
    /// the depot as the locked path does.
    ///
    /// # Safety
    /// As [`CacheCore::held_alloc`].
    #[cold]
    unsafe fn held_free_slow(&self, slot: &HeldSlot, cpu: usize, obj: u64) -> bool {
        // SAFETY: the caller's hold, passed on.
        unsafe { self.honour_held(slot) };
        let mut exchanges = 0;
        // SAFETY: the caller's hold.
        let put = slot.owned.with_mut(|o| {
            // SAFETY: as above: this context holds the CPU.
            let o = unsafe { &mut *o };
            o.write_back();
            let put = self.pair_free(&mut o.pair, obj, &mut exchanges);
            o.reload();
            put
        });
        // As in `held_alloc_slow`.
        let mut c = self.cpus.locked(cpu).lock();
        c.exchanges += exchanges;
        if put {
            drop(c);
            bump(&slot.free_hits);
        } else {
            c.free_misses += 1;
        }
        put
    }

    /// Answers the requests posted on `slot` since the last answer: its
    /// held magazines go back to the slab layer (a purge's work, done by
    /// the one context allowed to). A refusal by the slab layer loses the
    /// object from the magazines, which [`CacheCore::check`] reports.
    ///
    /// # Safety
    /// As [`CacheCore::held_alloc`].
    unsafe fn honour_held(&self, slot: &HeldSlot) {
        // Relaxed: a request carries no data; the drain itself goes
        // through the depot's and slab layer's locks.
        let asked = slot.asked.load(Ordering::Relaxed);
        // SAFETY: the caller holds the CPU.
        let taken = slot.owned.with_mut(|o| {
            // SAFETY: as above: this context holds the CPU.
            let o = unsafe { &mut *o };
            (o.answered != asked).then(|| {
                o.answered = asked;
                o.take_pair()
            })
        });
        if let Some(mut mags) = taken {
            let _ = self.drain(&mut mags);
        }
    }

    /// One object for a user through the CPU `local` holds for this
    /// context, or the locked path when it holds none.
    #[inline]
    pub(crate) fn alloc_local<L: CpuLocal>(&self, local: &L, backing: &dyn Backing) -> Result<u64> {
        let held = match CpuGuard::enter(local) {
            Some(guard) => match self.held_slot(&guard) {
                // SAFETY: the guard holds the slot's CPU.
                Some(slot) => unsafe { self.held_alloc(slot, guard.index()) }?,
                None => return self.alloc(backing),
            },
            None => return self.alloc(backing),
        };
        if let Some(obj) = held
            && !self.verify
        {
            return Ok(obj);
        }
        let (obj, from_slab) = self.hand_out(held, backing)?;
        if from_slab {
            self.depot.lock().stock_empty(self.meta);
        }
        Ok(obj)
    }

    /// Frees an object through the CPU `local` holds for this context, or
    /// the locked path when it holds none.
    #[inline]
    pub(crate) fn free_local<L: CpuLocal>(
        &self,
        local: &L,
        obj: u64,
    ) -> core::result::Result<(), FreeError> {
        let Some(guard) = CpuGuard::enter(local) else {
            return self.free(obj);
        };
        let Some(slot) = self.held_slot(&guard) else {
            drop(guard);
            return self.free(obj);
        };
        self.take_back(obj)?;
        // SAFETY: the guard holds the slot's CPU.
        if unsafe { self.held_free(slot, guard.index(), obj) } {
            return Ok(());
        }
        drop(guard);
        self.slab_free(obj, true).map_err(FreeError::Refused)
    }

    /// Answers the requests posted on the slot of the CPU `guard` holds
    /// (nothing when it is not of this cache's platform).
    pub(crate) fn honour<L: CpuLocal>(&self, guard: &CpuGuard<'_, L>) {
        if let Some(slot) = self.held_slot(guard) {
            // SAFETY: the guard holds the slot's CPU.
            unsafe { self.honour_held(slot) };
        }
    }

    fn word(addr: u64) -> *mut u64 {
        addr as usize as *mut u64
    }

    /// Writes the poison, pad, red zone and free tag of the object at `obj`.
    fn poison_object(&self, obj: u64) {
        let body = self.size.next_multiple_of(8);
        // SAFETY: memory mode: the object's chunk (body + 16 bytes of tag) is
        // writable memory this cache owns.
        unsafe {
            for i in 0..self.size / 8 {
                Self::word(obj + 8 * i).write_unaligned(POISON);
            }
            for b in (self.size / 8 * 8)..body {
                let byte = if b < self.size { POISON as u8 } else { PAD };
                (obj as usize as *mut u8).add(b as usize).write(byte);
            }
            Self::word(obj + body).write_unaligned(REDZONE);
            Self::word(obj + body + 8).write_unaligned(self.tag(obj, TAG_FREE));
        }
    }

    fn tag(&self, obj: u64, state: u64) -> u64 {
        obj ^ state ^ self.salt
    }

    /// Checks that a free object still holds its poison and free tag,
    /// changing nothing.
    fn check_poison(&self, obj: u64) -> Result<()> {
        let body = self.size.next_multiple_of(8);
        // SAFETY: memory mode: the chunk is memory this cache owns.
        unsafe {
            if Self::word(obj + body + 8).read_unaligned() != self.tag(obj, TAG_FREE) {
                return Err(
                    Error::new(ErrorKind::Corrupt, "free object's tag was overwritten").at(obj),
                );
            }
            for i in 0..self.size / 8 {
                if Self::word(obj + 8 * i).read_unaligned() != POISON {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        "object was written after it was freed",
                    )
                    .at(obj + 8 * i));
                }
            }
            // The bytes past the last whole word (a 20-byte object's last
            // four): poisoned byte by byte, so checked byte by byte.
            for b in (self.size / 8 * 8)..self.size {
                if (obj as usize as *const u8).add(b as usize).read() != POISON as u8 {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        "object was written after it was freed",
                    )
                    .at(obj + b));
                }
            }
        }
        Ok(())
    }

    /// Checks an object's tag and red zone before it is freed.
    fn check_tag(&self, obj: u64) -> Result<()> {
        let body = self.size.next_multiple_of(8);
        // SAFETY: memory mode, and the slab layer confirmed `obj` is an
        // object of this cache a user holds.
        unsafe {
            let tag = Self::word(obj + body + 8).read_unaligned();
            if tag == self.tag(obj, TAG_FREE) {
                return Err(Error::new(ErrorKind::BadFree, "object is already free").at(obj));
            }
            if tag != self.tag(obj, TAG_ALLOCATED) {
                return Err(
                    Error::new(ErrorKind::Corrupt, "object's buffer tag was overwritten").at(obj),
                );
            }
            let pad_ok = (self.size..body)
                .all(|b| (obj as usize as *const u8).add(b as usize).read() == PAD);
            if !pad_ok || Self::word(obj + body).read_unaligned() != REDZONE {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    "red zone after the object was overwritten",
                )
                .at(obj));
            }
        }
        Ok(())
    }

    fn construct(&self, obj: u64) {
        if let Some(ctor) = self.ctor {
            ctor(obj);
        }
    }

    fn destruct(&self, obj: u64) {
        if let Some(dtor) = self.dtor {
            dtor(obj);
        }
    }

    /// An object from the slab layer, constructed (unless debug poisoning
    /// defers construction to every allocation).
    fn slab_alloc(&self, backing: &dyn Backing) -> Result<u64> {
        let mut slabs = self.slabs.lock();
        let (obj, fresh) = match slabs.alloc(backing, self.meta) {
            Ok(got) => got,
            Err(e) => {
                drop(slabs);
                self.counters.lock().alloc_fails += 1;
                return Err(e);
            }
        };
        if fresh && self.poison {
            let base = obj;
            for i in 0..u64::from(slabs.objs) {
                self.poison_object(base + i * self.chunk);
            }
        } else if self.poison
            && let Err(e) = self.check_poison(obj)
        {
            // Refused: the object goes back to its slab, as it was.
            slabs.free(obj)?;
            return Err(e);
        }
        drop(slabs);
        self.counters.lock().slab_allocs += 1;
        if !self.poison {
            self.construct(obj);
        }
        Ok(obj)
    }

    /// Returns an object to the slab layer, destructed; `by_user` when a
    /// user's free (not a magazine drain) brought it.
    fn slab_free(&self, obj: u64, by_user: bool) -> Result<()> {
        if !self.poison {
            self.destruct(obj);
        }
        self.slabs.lock().free(obj)?;
        if by_user {
            self.counters.lock().slab_frees += 1;
        }
        Ok(())
    }

    /// Allocates one object; when the slab layer served it, stocks the
    /// depot with an empty magazine for the frees to come (see the
    /// magazine module: frees never allocate one).
    pub(crate) fn alloc(&self, backing: &dyn Backing) -> Result<u64> {
        let (obj, from_slab) = self.take_object(backing)?;
        if from_slab && self.magazines {
            // With no CPU lock or hold; the depot lock alone orders this with
            // the frees that take the magazine.
            self.depot.lock().stock_empty(self.meta);
        }
        Ok(obj)
    }

    /// Allocates one object without stocking the depot: a reserve's fill,
    /// which leaves the cache as it was when it fails partway.
    pub(crate) fn alloc_unstocked(&self, backing: &dyn Backing) -> Result<u64> {
        self.take_object(backing).map(|(obj, _)| obj)
    }

    /// One object for a user, and whether the slab layer supplied it.
    fn take_object(&self, backing: &dyn Backing) -> Result<(u64, bool)> {
        let got = self.mag_alloc()?;
        self.hand_out(got, backing)
    }

    /// The object the magazines gave (`None`: one from the slab layer),
    /// marked as a user's, with its debug tag and red zone; and whether
    /// the slab layer supplied it.
    fn hand_out(&self, got: Option<u64>, backing: &dyn Backing) -> Result<(u64, bool)> {
        let (obj, from_slab) = match got {
            Some(obj) => (obj, false),
            None => (self.slab_alloc(backing)?, true),
        };
        if self.verify || self.poison {
            self.slabs.lock().mark_user(obj)?;
            if self.poison {
                let body = self.size.next_multiple_of(8);
                // SAFETY: memory mode: the tag, pad and red zone are ours, and
                // the poison was checked when the object was taken.
                unsafe {
                    Self::word(obj + body + 8).write_unaligned(self.tag(obj, TAG_ALLOCATED));
                }
                self.construct(obj);
                // SAFETY: as above.
                unsafe {
                    for b in self.size..body {
                        (obj as usize as *mut u8).add(b as usize).write(PAD);
                    }
                    Self::word(obj + body).write_unaligned(REDZONE);
                }
            }
        }
        Ok((obj, from_slab))
    }

    /// Frees one object: into a magazine at hand, else back to its slab.
    /// It never allocates, so it cannot fail for want of memory.
    pub(crate) fn free(&self, obj: u64) -> core::result::Result<(), FreeError> {
        self.take_back(obj)?;
        if !self.mag_free(obj) {
            self.slab_free(obj, true).map_err(FreeError::Refused)?;
        }
        Ok(())
    }

    /// Undoes a batch of allocations that failed partway (a reserve that
    /// could not be filled): the objects go straight back to their slabs,
    /// and the slabs created since `mark` go back to the arena, so the
    /// arena is as it was.
    pub(crate) fn unwind(&self, objs: &[u64], mark: u64, backing: &dyn Backing) {
        for &obj in objs {
            if self.take_back(obj).is_ok() {
                let _ = self.slab_free(obj, true);
            }
        }
        self.slabs.lock().reap_since(mark, backing);
    }

    /// How many slabs the cache has created so far (a mark for `unwind`).
    pub(crate) fn slab_mark(&self) -> u64 {
        self.slabs.lock().counts.created
    }

    /// Checks a freed object (when the cache verifies) and takes it back
    /// from its user: poisoned, with its destructor run, in debug mode.
    #[inline(always)]
    fn take_back(&self, obj: u64) -> core::result::Result<(), FreeError> {
        if self.verify || self.poison {
            return self.take_back_checked(obj);
        }
        Ok(())
    }

    /// [`CacheCore::take_back`] with debug checks on.
    fn take_back_checked(&self, obj: u64) -> core::result::Result<(), FreeError> {
        {
            let mut slabs = self.slabs.lock();
            match slabs.unmark_user(obj) {
                Ok(()) => {}
                Err(e) if !slabs.holds(obj) => return Err(FreeError::NotOurs(e)),
                Err(e) => return Err(FreeError::Refused(e)),
            }
            if self.poison
                && let Err(e) = self.check_tag(obj)
            {
                // The free is refused: the object stays with its user.
                let _ = slabs.mark_user(obj);
                return Err(FreeError::Refused(e));
            }
            drop(slabs);
            if self.poison {
                self.destruct(obj);
                self.poison_object(obj);
            }
        }
        Ok(())
    }

    /// Drains a chain of magazines into the slab layer and frees them.
    fn drain(&self, mags: &mut [MagLink]) -> Result<()> {
        let mut result = Ok(());
        for m in mags.iter_mut().filter_map(|m| m.take()) {
            // SAFETY: the magazine was taken out of its owner, so it is ours alone.
            while let Some(obj) = unsafe { mag(m) }.pop() {
                if let Err(e) = self.slab_free(obj, false) {
                    result = Err(e);
                }
            }
            self.depot.lock().pool.give(m);
        }
        result
    }

    /// Returns every magazine's objects and every empty slab: afterwards the
    /// cache holds only what its users hold.
    pub(crate) fn purge(&self, backing: &dyn Backing) -> Result<()> {
        let mut result = Ok(());
        let mine = self.local.and_then(CpuGuard::enter);
        for i in 0..MAX_CPUS {
            let mut mags = {
                let mut c = self.cpus.locked(i).lock();
                let pair = core::mem::take(&mut c.pair);
                [pair.loaded, pair.prev]
            };
            if let Err(e) = self.drain(&mut mags) {
                result = Err(e);
            }
            if let Some(slot) = self.cpus.held(i)
                && let Err(e) = self.purge_held(i, slot, mine.as_ref())
            {
                result = Err(e);
            }
        }
        drop(mine);
        loop {
            let mut batch: [MagLink; 8] = [None; 8];
            {
                let mut depot = self.depot.lock();
                for slot in batch.iter_mut() {
                    *slot = depot.take_full().or_else(|| depot.take_empty_existing());
                }
            }
            if batch.iter().all(Option::is_none) {
                break;
            }
            if let Err(e) = self.drain(&mut batch) {
                result = Err(e);
            }
        }
        self.reap_meta(backing);
        result
    }

    /// Purges the held part of CPU `i`'s slot: at once when this context
    /// holds that CPU (`mine`) or can hold it because no context does;
    /// otherwise by a request its holder answers on its next slow path
    /// (or when the platform's [`CpuLocal::notify`] makes it call
    /// [`ObjectCache::honour`]).
    fn purge_held(
        &self,
        i: usize,
        slot: &HeldSlot,
        mine: Option<&CpuGuard<'_, dyn CpuLocal + 'a>>,
    ) -> Result<()> {
        let Some(local) = self.local else {
            // No platform: no context ever held a part of this cache.
            return Ok(());
        };
        let idle = match mine {
            Some(g) if g.index() == i => None,
            _ => Some(CpuGuard::enter_idle(local, i)),
        };
        if let Some(None) = idle {
            slot.asked.fetch_add(1, Ordering::Relaxed);
            local.notify(i);
            return Ok(());
        }
        // SAFETY: this context holds CPU `i`, as `mine` or idle.
        let mut mags = slot.owned.with_mut(|o| unsafe { &mut *o }.take_pair());
        drop(idle);
        self.drain(&mut mags)
    }

    /// Trims the depot to its working set (magazines untouched since the
    /// last call go back) and returns empty slabs.
    pub(crate) fn reap_idle(&self, backing: &dyn Backing) -> Result<()> {
        let (full, empty) = self.depot.lock().idle();
        let mut result = Ok(());
        for _ in 0..full + empty {
            let mut one = [{
                let mut depot = self.depot.lock();
                depot.take_full().or_else(|| depot.take_empty_existing())
            }];
            if one[0].is_none() {
                break;
            }
            if let Err(e) = self.drain(&mut one) {
                result = Err(e);
            }
        }
        self.reap_meta(backing);
        result
    }

    /// Ends a reap: a new working-set interval, empty slabs back to
    /// `backing`, and meta pages none of whose records or magazines is in
    /// use back to the meta source once the locks are dropped.
    fn reap_meta(&self, backing: &dyn Backing) {
        let mut back = MetaPages::new();
        {
            let mut depot = self.depot.lock();
            depot.reset_working_set();
            depot.pool.take_empty_pages(&mut back);
        }
        {
            let mut slabs = self.slabs.lock();
            slabs.reap(backing);
            slabs.take_empty_pages(&mut back);
        }
        back.give_back(self.meta);
        self.counters.lock().reaps += 1;
    }

    /// The counters of CPU slot `cpu`; `BadConstraint` at or above
    /// [`MAX_CPUS`]. Relaxed reads: a holder counting at the same time
    /// may or may not be seen.
    pub(crate) fn cpu_stats(&self, cpu: usize) -> Result<CpuStats> {
        if cpu >= MAX_CPUS {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "CPU index at or above MAX_CPUS",
            ));
        }
        let mut s = {
            let c = self.cpus.locked(cpu).lock();
            CpuStats {
                alloc_hits: c.alloc_hits,
                alloc_misses: c.alloc_misses,
                free_hits: c.free_hits,
                free_misses: c.free_misses,
                depot_exchanges: c.exchanges,
            }
        };
        if let Some(slot) = self.cpus.held(cpu) {
            s.alloc_hits += slot.alloc_hits.load(Ordering::Relaxed);
            s.free_hits += slot.free_hits.load(Ordering::Relaxed);
        }
        Ok(s)
    }

    /// The cache's counters.
    pub(crate) fn stats(&self) -> CacheStats {
        let mut s = CacheStats::default();
        for i in 0..MAX_CPUS {
            let c = self.cpus.locked(i).lock();
            s.magazine_hits += c.alloc_hits;
            s.magazine_misses += c.alloc_misses;
            s.free_magazine_hits += c.free_hits;
            s.free_magazine_misses += c.free_misses;
        }
        for slot in (0..HELD_CPUS).filter_map(|i| self.cpus.held(i)) {
            s.magazine_hits += slot.alloc_hits.load(Ordering::Relaxed);
            s.free_magazine_hits += slot.free_hits.load(Ordering::Relaxed);
        }
        {
            let depot = self.depot.lock();
            s.magazine_size = u64::from(depot.magsize);
            s.magazines = depot.pool.in_use as u64;
            s.meta_pages = depot.pool.page_count as u64;
            s.depot_full = depot.full.count as u64;
            s.depot_empty = depot.empty.count as u64;
            s.depot_contention = depot.contention;
            s.magazine_resizes = depot.resizes;
        }
        {
            let slabs = self.slabs.lock();
            s.chunk = slabs.chunk;
            s.slab_size = slabs.slab_size;
            s.objects_per_slab = u64::from(slabs.objs);
            s.slabs = slabs.slabs() as u64;
            s.slabs_empty = slabs.empty_slabs() as u64;
            s.slabs_created = slabs.counts.created;
            s.slabs_destroyed = slabs.counts.destroyed;
            s.meta_pages += slabs.meta_pages() as u64;
        }
        let counters = self.counters.lock();
        s.allocs = s.magazine_hits + counters.slab_allocs;
        s.frees = s.free_magazine_hits + counters.slab_frees;
        // More frees than allocations only when a cache without debug
        // checks was handed a double or foreign free it could not see.
        s.in_use = s.allocs.saturating_sub(s.frees);
        s.alloc_fails = counters.alloc_fails;
        s.reaps = counters.reaps;
        s
    }

    /// Checks the slab layer, every magazine, and that the objects out of
    /// the slabs are exactly those in magazines plus those users hold.
    ///
    /// The held part of a CPU's slot is checked when this context holds
    /// that CPU or can hold it (no context does); a part another context
    /// holds is left alone, and then the objects out of the slabs need
    /// only cover those seen in magazines plus those users hold (the rest
    /// are in the unseen magazines).
    pub(crate) fn check(&self) -> Result<()> {
        let corrupt = |what, at| Err(Error::new(ErrorKind::Corrupt, what).at(at));
        let mine = self.local.and_then(CpuGuard::enter);
        let idle: [Option<CpuGuard<'_, dyn CpuLocal + 'a>>; HELD_CPUS] =
            core::array::from_fn(|i| {
                let local = self.local?;
                match &mine {
                    Some(g) if g.index() == i => None,
                    _ => CpuGuard::enter_idle(local, i),
                }
            });
        let mut unseen = 0usize;
        let held: [MagPair; HELD_CPUS] = core::array::from_fn(|i| {
            let ours = mine.as_ref().is_some_and(|g| g.index() == i) || idle[i].is_some();
            if self.local.is_some() && !ours {
                unseen += 1;
                return MagPair::default();
            }
            // SAFETY: this context holds CPU `i` (or, with no platform, no
            // context ever touches its held part).
            let Some(slot) = self.cpus.held(i) else {
                return MagPair::default();
            };
            slot.owned.with_mut(|o| {
                // SAFETY: as above: this context holds the CPU.
                let o = unsafe { &mut *o };
                o.write_back();
                o.pair
            })
        });
        let cpus: [MutexGuard<'_, CpuMags>; MAX_CPUS] =
            core::array::from_fn(|i| self.cpus.locked(i).lock());
        let depot = self.depot.lock();
        let mut slabs = self.slabs.lock();
        let (out, users) = slabs.check()?;
        let mut rounds = 0u64;
        let mut magazines = 0usize;
        let mut visit = |m: NonNull<Magazine>, want: Option<bool>| -> Result<()> {
            // SAFETY: every owner's lock is held.
            let m = unsafe { mag(m) };
            magazines += 1;
            if m.rounds() > m.cap() || m.cap() as usize > MAG_ROUNDS {
                return corrupt("magazine holds more than it can", u64::from(m.rounds()));
            }
            if let Some(full) = want
                && (full && !m.is_full() || !full && m.rounds() != 0)
            {
                return corrupt("depot magazine is on the wrong list", u64::from(m.rounds()));
            }
            for &obj in m.objects() {
                slabs.check_out(obj, self.verify)?;
            }
            rounds += u64::from(m.rounds());
            Ok(())
        };
        for pair in cpus.iter().map(|c| &c.pair).chain(&held) {
            if let Some(m) = pair.loaded {
                visit(m, None)?;
            }
            if let Some(p) = pair.prev {
                // SAFETY: the slot's lock or its CPU is held.
                let prev = unsafe { mag(p) };
                if prev.rounds() != 0 && !prev.is_full() {
                    return corrupt(
                        "previous magazine is neither full nor empty",
                        u64::from(prev.rounds()),
                    );
                }
                visit(p, None)?;
            }
        }
        for m in depot.full.iter() {
            visit(m, Some(true))?;
        }
        for m in depot.empty.iter() {
            visit(m, Some(false))?;
        }
        // Each unseen held part has at most two magazines.
        let lost = depot.pool.in_use.checked_sub(magazines);
        if lost.is_none_or(|lost| lost > 2 * unseen) {
            return corrupt("magazines are lost", magazines as u64);
        }
        drop(slabs);
        drop(depot);
        let counted = |count: fn(&HeldSlot) -> u64| -> u64 {
            (0..HELD_CPUS)
                .filter_map(|i| self.cpus.held(i))
                .map(count)
                .sum()
        };
        let hits = cpus.iter().map(|c| c.alloc_hits).sum::<u64>()
            + counted(|s| s.alloc_hits.load(Ordering::Relaxed));
        let free_hits = cpus.iter().map(|c| c.free_hits).sum::<u64>()
            + counted(|s| s.free_hits.load(Ordering::Relaxed));
        drop(cpus);
        let counters = self.counters.lock();
        let in_use = (hits + counters.slab_allocs).wrapping_sub(free_hits + counters.slab_frees);
        if (self.verify || self.poison) && users != in_use {
            return corrupt("objects held by users are miscounted", users);
        }
        // A trusted double free leaves `in_use` wrapped below zero.
        let seen = rounds.checked_add(in_use);
        if seen.is_none_or(|seen| seen > out || unseen == 0 && seen != out) {
            return corrupt(
                "objects out of the slabs are neither in magazines nor with users",
                out,
            );
        }
        Ok(())
    }

    /// Gives everything back: magazines, every slab (even ones users still
    /// hold objects of), records and tables.
    pub(crate) fn dispose(&mut self, backing: &dyn Backing) {
        for slot in (0..HELD_CPUS).filter_map(|i| self.cpus.held(i)) {
            // SAFETY: `&mut self`: no context is inside a call of this
            // cache, so none touches a held part now.
            let mut mags = slot.owned.with_mut(|o| unsafe { &mut *o }.take_pair());
            let _ = self.drain(&mut mags);
        }
        let _ = self.purge(backing);
        let meta = self.meta;
        let slabs = self.slabs.get_mut();
        slabs.release_all(backing);
        slabs.dispose(meta);
        self.depot.get_mut().pool.dispose(meta);
    }

    /// Gives the records, tables and magazines back to the meta source
    /// without touching the arena (which has already taken back every slab
    /// or is gone).
    pub(crate) fn release_meta(&mut self) {
        let meta = self.meta;
        self.slabs.get_mut().dispose(meta);
        self.depot.get_mut().pool.dispose(meta);
    }

    /// Checks, when the cache verifies frees, that a user holds `obj`
    /// (`BadFree` otherwise); changes nothing.
    pub(crate) fn check_held(&self, obj: u64) -> Result<()> {
        if self.verify || self.poison {
            self.slabs.lock().check_user(obj)?;
        }
        Ok(())
    }

    /// Whether frees are verified.
    pub(crate) fn verifies(&self) -> bool {
        self.verify
    }

    /// Whether the cache is in memory mode.
    pub(crate) fn memory_mode(&self) -> bool {
        self.memory
    }
}

/// An object cache over an arena: the kmem layer.
///
/// Allocation and free take only the current CPU's lock in the common
/// case; see the crate documentation for the magazine design.
///
/// A cache may be moved while users hold its objects: its debug checks
/// depend on a salt chosen when it is made, not on where it lives.
// `repr(C)`: the arena, read on every fast-path call, before the core, on
// the read-mostly line, not after the core's locks.
#[repr(C)]
pub struct ObjectCache<'a, R: RawMutex = crate::arena::DefaultLock> {
    arena: &'a Arena<'a, R>,
    pub(crate) core: CacheCore<'a>,
}

impl<'a, R: RawMutex> ObjectCache<'a, R> {
    /// A cache as `config` says, its slabs from `arena`. An object size of
    /// zero is `ZeroSize`, an alignment that is not a power of two
    /// `BadConstraint`, and an object whose slot (with its debug red zone
    /// and buffer tag, rounded up to the alignment) or whose slab (eight
    /// slots, rounded up to a power of two) would pass 2^64 is `Overflow`.
    /// Until the cache is dropped, [`Arena::destroy`] refuses the arena
    /// with `InUse`.
    pub fn new(config: CacheConfig<'a>, arena: &'a Arena<'a, R>) -> Result<Self> {
        let core = CacheCore::new(&config, arena.quantum(), None)?;
        arena.cache_built();
        Ok(ObjectCache { core, arena })
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The object size.
    pub fn object_size(&self) -> u64 {
        self.core.size()
    }

    /// The arena the slabs come from.
    pub fn arena(&self) -> &'a Arena<'a, R> {
        self.arena
    }

    /// Allocates one object (constructed, if the cache has a constructor).
    pub fn alloc(&self) -> Result<u64> {
        self.core.alloc(self.arena)
    }

    /// Frees an object this cache handed out. Without debug checks the
    /// magazine layer takes the caller's word, as kmem does; with them a
    /// double free or a foreign object is `BadFree`, and a damaged red zone
    /// or poison is `Corrupt`.
    ///
    /// A free never allocates: the object goes into one of the CPU's
    /// magazines or an empty magazine the depot already holds, and when
    /// there is none, back to its slab. It never asks the meta source for
    /// pages (empty magazines are stocked by allocations the slab layer
    /// serves) and never fails for want of memory. Of the cache's locks it
    /// holds two at once only as the CPU's and then the depot's (the slab
    /// layer's it takes alone), and it never takes the arena's.
    pub fn free(&self, obj: u64) -> Result<()> {
        self.core.free(obj).map_err(FreeError::error)
    }

    /// Allocates one object through the CPU that `local` lets this context
    /// hold alone: the fast path. A hit takes the top round of the CPU's
    /// loaded magazine with plain loads and stores (no lock, no atomic
    /// read-modify-write, no indirect call in a cache without debug
    /// checks); a miss trades with the depot under its lock, as
    /// [`ObjectCache::alloc`] does, after answering the requests other
    /// contexts posted on the slot. When `local` is not the platform the
    /// cache was configured with ([`CacheConfig::local`]), or holds no CPU
    /// for this context now (a host thread beyond the slots, a nested
    /// call), or names a CPU at or above [`HELD_CPUS`], the call is
    /// [`ObjectCache::alloc`].
    ///
    /// The held magazines of a CPU are its own: [`ObjectCache::alloc`] and
    /// [`ObjectCache::free`] on the same CPU index use the slot's locked
    /// magazines, apart from them.
    #[inline]
    pub fn alloc_local<L: CpuLocal>(&self, local: &L) -> Result<u64> {
        self.core.alloc_local(local, self.arena)
    }

    /// Frees an object through the CPU `local` lets this context hold
    /// alone; the counterpart of [`ObjectCache::alloc_local`], and
    /// [`ObjectCache::free`] when it holds none. Errors as for
    /// [`ObjectCache::free`]; it never allocates either.
    #[inline]
    pub fn free_local<L: CpuLocal>(&self, local: &L, obj: u64) -> Result<()> {
        self.core.free_local(local, obj).map_err(FreeError::error)
    }

    /// Answers the requests a reap, purge or check posted on the slot of
    /// the CPU `guard` holds: its held magazines go back to the slab
    /// layer. The holder calls it (a kernel from the cross-call
    /// [`CpuLocal::notify`] sends); a slow path of
    /// [`ObjectCache::alloc_local`] or [`ObjectCache::free_local`] calls
    /// it too. Nothing happens for a guard of another platform.
    pub fn honour<L: CpuLocal>(&self, guard: &CpuGuard<'_, L>) {
        self.core.honour(guard);
    }

    /// Returns every magazine's objects to the slabs and every empty slab
    /// to the arena, then gives the meta source every record or magazine
    /// page none of whose records is in use, and the slab table once no
    /// slab is left (after the cache's locks are dropped): a reaped cache
    /// with no object out holds no meta page.
    ///
    /// The held magazines of a CPU ([`ObjectCache::alloc_local`]) go back
    /// at once when this context holds that CPU or no context does;
    /// those of a CPU another context holds are asked for
    /// ([`CpuLocal::notify`]) and go back when that context answers, on
    /// its next slow path or [`ObjectCache::honour`]. A host thread that
    /// exits lets go of its CPU, and the next reap takes them.
    pub fn reap(&self) -> Result<()> {
        self.core.purge(self.arena)
    }

    /// Returns what the depot's working set shows idle since the last call,
    /// and empty slabs: the periodic reap. Meta pages left with no record
    /// in use go back as in [`ObjectCache::reap`].
    pub fn reap_idle(&self) -> Result<()> {
        self.core.reap_idle(self.arena)
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        self.core.stats()
    }

    /// The counters of one CPU slot, `cpu` as [`CpuId::current`] or
    /// [`CpuLocal::enter`] names it (the held path's and the locked path's
    /// together). A `cpu` at or above [`MAX_CPUS`] names no slot:
    /// `BadConstraint`, and nothing is read.
    pub fn cpu_stats(&self, cpu: usize) -> Result<CpuStats> {
        self.core.cpu_stats(cpu)
    }

    /// Checks the cache's invariants (`Corrupt` names the broken one).
    ///
    /// The count of objects in users' hands is only exact while no other
    /// thread allocates from or frees to the cache: an allocation updates the
    /// slab layer and the counters under different locks, so a check racing
    /// one can see them apart and report `Corrupt` falsely. Check a cache
    /// when it is quiet (as the tests do after joining their threads).
    pub fn check(&self) -> Result<()> {
        self.core.check()
    }

    /// Whether debug checks are on.
    pub fn debug(&self) -> bool {
        self.core.verifies()
    }

    /// Whether the cache is in memory mode.
    pub fn memory_mode(&self) -> bool {
        self.core.memory_mode()
    }
}

impl<R: RawMutex> Drop for ObjectCache<'_, R> {
    /// Gives every slab back to the arena and all metadata to the meta source.
    fn drop(&mut self) {
        let arena = self.arena;
        self.core.dispose(arena);
        arena.cache_gone();
    }
}

impl<R: RawMutex> core::fmt::Debug for ObjectCache<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ObjectCache")
            .field("name", &self.name())
            .field("object_size", &self.object_size())
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::testing::{Budget, Memory};
    use crate::{Arena, ArenaConfig, ErrorKind, FixedCpu, HeapMeta, Policy, Result};

    fn kind<T: core::fmt::Debug>(r: Result<T>) -> ErrorKind {
        r.unwrap_err().kind()
    }

    /// (chunk, slab size, objects per slab) of a cache as `config` says,
    /// over an arena of `quantum`.
    fn layout(config: CacheConfig<'_>, quantum: u64) -> Result<(u64, u64, u32)> {
        let core = CacheCore::new(&config, quantum, None)?;
        let slabs = core.slabs.lock();
        Ok((slabs.chunk, slabs.slab_size, slabs.objs))
    }

    /// A memory-mode arena of quantum 8 over `memory`.
    fn memory_arena(memory: &Memory) -> Arena<'static> {
        Arena::create(
            ArenaConfig::new("mem", 8)
                .span(memory.base(), memory.len())
                .meta(&HeapMeta),
        )
        .unwrap()
    }

    fn read<T>(addr: u64) -> T {
        // SAFETY: the tests read only inside the memory their arenas cover.
        unsafe { (addr as usize as *const T).read_unaligned() }
    }

    fn write<T>(addr: u64, value: T) {
        // SAFETY: as for `read`.
        unsafe { (addr as usize as *mut T).write_unaligned(value) }
    }

    #[test]
    fn slots_and_slabs_are_sized_as_the_config_says() {
        let cpu = FixedCpu::new(0);
        let no_touch = |size| CacheConfig::new("c", size, &HeapMeta, &cpu);
        // SAFETY: layouts only; no cache here allocates.
        let memory = |size| unsafe { CacheConfig::new("c", size, &HeapMeta, &cpu).memory() };
        // Eight slots rounded up to a power of two, at least a quantum.
        assert_eq!(layout(no_touch(24), 1).unwrap(), (24, 256, 10));
        assert_eq!(layout(no_touch(24).align(16), 1).unwrap(), (32, 256, 8));
        assert_eq!(layout(no_touch(24), 4096).unwrap(), (24, 4096, 170));
        // No slab holds more than MAX_OBJS objects.
        assert_eq!(
            layout(no_touch(1), 4096).unwrap(),
            (1, 4096, MAX_OBJS as u32)
        );
        // Memory mode aligns to 8; debug adds the red zone and buffer tag.
        assert_eq!(layout(memory(20), 8).unwrap(), (24, 256, 10));
        assert_eq!(layout(memory(20).debug(true), 8).unwrap(), (40, 512, 12));
        assert_eq!(
            layout(memory(20).debug(true).align(64), 8).unwrap(),
            (64, 512, 8)
        );
        assert_eq!(
            layout(no_touch(20).debug(true), 1).unwrap(),
            (20, 256, 12),
            "no-touch has no red zone"
        );
        // Refusals.
        assert_eq!(kind(layout(no_touch(0), 1)), ErrorKind::ZeroSize);
        assert_eq!(
            kind(layout(no_touch(8).align(3), 1)),
            ErrorKind::BadConstraint
        );
        assert_eq!(
            kind(layout(no_touch(8).align(0), 1)),
            ErrorKind::BadConstraint
        );
        assert_eq!(
            kind(layout(memory(u64::MAX - 3).debug(true), 8)),
            ErrorKind::Overflow
        );
        assert_eq!(
            kind(layout(no_touch(u64::MAX).align(2), 1)),
            ErrorKind::Overflow
        );
        assert_eq!(
            kind(layout(no_touch(1 << 61), 1)),
            ErrorKind::Overflow,
            "8 slots pass 2^64"
        );
        assert_eq!(
            kind(layout(no_touch((1 << 60) + 1), 1)),
            ErrorKind::Overflow
        );
        let forced = CacheCore::new(&no_touch(100), 1, Some(64));
        assert_eq!(
            kind(forced.map(|_| ())),
            ErrorKind::Overflow,
            "a slot larger than a forced slab"
        );
    }

    /// The read-mostly fields, the CPU slots and each shared lock lie on
    /// 128-byte lines of their own.
    #[test]
    fn read_mostly_fields_lie_apart_from_the_locks() {
        use core::mem::offset_of;
        let line = |offset: usize| offset / 128;
        let read_mostly = [
            offset_of!(CacheCore<'static>, size),
            offset_of!(CacheCore<'static>, chunk),
            offset_of!(CacheCore<'static>, salt),
            offset_of!(CacheCore<'static>, poison),
            offset_of!(CacheCore<'static>, meta),
            offset_of!(CacheCore<'static>, cpu),
            offset_of!(CacheCore<'static>, magazines),
        ];
        let cpus = offset_of!(CacheCore<'static>, cpus);
        let locks = [
            offset_of!(CacheCore<'static>, depot),
            offset_of!(CacheCore<'static>, slabs),
            offset_of!(CacheCore<'static>, counters),
        ];
        let last_read_mostly = read_mostly.iter().map(|&o| line(o)).max().unwrap();
        assert!(last_read_mostly < line(cpus), "{read_mostly:?} {cpus}");
        assert_eq!(cpus % 128, 0);
        assert_eq!(locks[0], cpus + size_of::<CpuSlots>());
        assert_eq!(locks[0] % 128, 0, "the depot lock starts a line pair");
        // What a kernel's stack pays for a cache built by value (the
        // guide's magazines page gives the figure): 4 KiB of CPU slots
        // and 768 bytes of the rest.
        let size = size_of::<CacheCore<'static>>();
        assert!(size <= 4864, "{size}");
    }

    /// A held CPU's hits take none of the cache's locks: they go through
    /// while another thread holds every one of them (a hit that took one
    /// would spin until the timeout fails the test).
    #[test]
    fn held_hits_take_no_lock() {
        use std::sync::mpsc;
        let cpus = crate::ThreadCpus::leak();
        let arena: &'static Arena<'static> = Box::leak(Box::new(
            Arena::create(ArenaConfig::new("a", 1).span(0, 1 << 16).meta(&HeapMeta)).unwrap(),
        ));
        let config = CacheConfig::new("c", 16, &HeapMeta, cpus).local(cpus);
        let cache: &'static ObjectCache<'static> =
            Box::leak(Box::new(ObjectCache::new(config, arena).unwrap()));
        let (locked_tx, locked) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            // A round trip stocks the magazines, then the locks are taken.
            let objs: Vec<u64> = (0..40).map(|_| cache.alloc_local(cpus).unwrap()).collect();
            for obj in objs {
                cache.free_local(cpus, obj).unwrap();
            }
            let before = cache.stats();
            done_tx.send(None).unwrap();
            locked.recv().unwrap();
            for _ in 0..1000 {
                let x = cache.alloc_local(cpus).unwrap();
                cache.free_local(cpus, x).unwrap();
            }
            done_tx.send(Some(before)).unwrap();
        });
        assert_eq!(done.recv().unwrap(), None, "warmed up");
        let core = &cache.core;
        let guards = (
            core::array::from_fn::<_, MAX_CPUS, _>(|i| core.cpus.locked(i).lock()),
            core.depot.lock(),
            core.slabs.lock(),
            core.counters.lock(),
        );
        locked_tx.send(()).unwrap();
        let before = done
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("hits went through with every lock taken")
            .unwrap();
        drop(guards);
        let s = cache.stats();
        assert_eq!(s.magazine_hits - before.magazine_hits, 1000);
        assert_eq!(s.free_magazine_hits - before.free_magazine_hits, 1000);
        cache.check().unwrap();
    }

    #[test]
    fn quantum_cache_slabs_follow_the_reference_rule() {
        let slab = CacheCore::qcache_slab_size;
        assert_eq!(slab(16 * 4096, 4096), Some(1 << 18), "2^highbit(3 * 64K)");
        assert_eq!(slab(4 * 4096, 4096), Some(1 << 16));
        assert_eq!(slab(4096, 4096), Some(1 << 14));
        assert_eq!(slab(1, 1), Some(64), "never below 64");
        assert_eq!(slab(16, 1), Some(64));
        assert_eq!(slab(32, 1), Some(128));
        assert_eq!(slab(8, 1 << 20), Some(1 << 20), "at least a quantum");
        assert_eq!(slab(1 << 62, 1 << 62), None, "3 * 2^62 needs a 2^64 slab");
        assert_eq!(slab(1 << 63, 1 << 63), None, "3 * 2^63 passes 2^64");
    }

    #[test]
    fn two_caches_of_one_config_tag_their_objects_apart() {
        let cpu = FixedCpu::new(0);
        let config = CacheConfig::new("c", 64, &HeapMeta, &cpu);
        let a = CacheCore::new(&config, 8, None).unwrap();
        let b = CacheCore::new(&config, 8, None).unwrap();
        assert_ne!(a.salt, b.salt);
        for obj in [0, 0x1000, u64::MAX - 8] {
            assert_ne!(a.tag(obj, TAG_FREE), b.tag(obj, TAG_FREE));
            assert_ne!(a.tag(obj, TAG_FREE), a.tag(obj, TAG_ALLOCATED));
            assert_ne!(a.tag(obj, TAG_FREE), a.tag(obj + 8, TAG_FREE));
        }
        // The salt spreads: neighbouring counts differ in many bits.
        assert!((mix(1) ^ mix(2)).count_ones() > 16);
    }

    #[test]
    fn without_magazines_every_object_is_built_on_alloc_and_torn_down_on_free() {
        let (built, torn) = (StdMutex::new(Vec::new()), StdMutex::new(Vec::new()));
        let ctor = |obj: u64| built.lock().unwrap().push(obj);
        let dtor = |obj: u64| torn.lock().unwrap().push(obj);
        let cpu = FixedCpu::new(0);
        let arena: Arena =
            Arena::create(ArenaConfig::new("a", 1).span(0, 1 << 12).meta(&HeapMeta)).unwrap();
        let config = CacheConfig::new("c", 16, &HeapMeta, &cpu)
            .hooks(Some(&ctor), Some(&dtor))
            .magazine(0);
        let cache = ObjectCache::new(config, &arena).unwrap();
        let a = cache.alloc().unwrap();
        let b = cache.alloc().unwrap();
        assert_eq!(*built.lock().unwrap(), vec![a, b]);
        cache.free(b).unwrap();
        assert_eq!(*torn.lock().unwrap(), vec![b]);
        assert_eq!(cache.alloc().unwrap(), b, "back from its slab");
        assert_eq!(*built.lock().unwrap(), vec![a, b, b], "and built again");
        let s = cache.stats();
        assert_eq!((s.magazines, s.magazine_hits, s.depot_empty), (0, 0, 0));
        cache.free(a).unwrap();
        cache.free(b).unwrap();
        cache.check().unwrap();
        assert_eq!(torn.lock().unwrap().len(), 3);
    }

    #[test]
    fn debug_memory_mode_builds_on_every_alloc_and_lays_out_poison_and_red_zone() {
        static BUILT: AtomicU64 = AtomicU64::new(0);
        static TORN: AtomicU64 = AtomicU64::new(0);
        let ctor = |obj: u64| {
            write(obj, 0x5eed_u64);
            BUILT.fetch_add(1, Ordering::Relaxed);
        };
        let dtor = |_: u64| {
            TORN.fetch_add(1, Ordering::Relaxed);
        };
        let cpu = FixedCpu::new(0);
        let memory = Memory::new(1 << 16);
        let arena = memory_arena(&memory);
        // SAFETY: the arena's integers are addresses in `memory`.
        let config = unsafe { CacheConfig::new("c", 20, &HeapMeta, &cpu).memory() }
            .debug(true)
            .hooks(Some(&ctor), Some(&dtor));
        let cache = ObjectCache::new(config, &arena).unwrap();
        let x = cache.alloc().unwrap();
        assert_eq!(read::<u64>(x), 0x5eed, "constructed");
        assert_eq!(read::<u64>(x + 24), REDZONE);
        assert_eq!(read::<u64>(x + 32), cache.core.tag(x, TAG_ALLOCATED));
        assert!((20..24).all(|b| read::<u8>(x + b) == PAD));
        cache.free(x).unwrap();
        // Freed: poison over the object, the pad and red zone kept, the
        // tag turned to free.
        assert_eq!((read::<u64>(x), read::<u64>(x + 8)), (POISON, POISON));
        assert!((16..20).all(|b| read::<u8>(x + b) == POISON as u8));
        assert!((20..24).all(|b| read::<u8>(x + b) == PAD));
        assert_eq!(read::<u64>(x + 32), cache.core.tag(x, TAG_FREE));
        // A magazine hit builds and tears down all the same: the poison
        // wiped what the constructor wrote.
        assert_eq!(cache.alloc().unwrap(), x);
        cache.free(x).unwrap();
        assert_eq!(cache.stats().magazine_hits, 1);
        assert_eq!(
            (BUILT.load(Ordering::Relaxed), TORN.load(Ordering::Relaxed)),
            (2, 2)
        );
        cache.check().unwrap();
    }

    #[test]
    fn a_damaged_tag_or_red_zone_refuses_the_free_and_the_user_keeps_the_object() {
        let cpu = FixedCpu::new(0);
        let memory = Memory::new(1 << 16);
        let arena = memory_arena(&memory);
        // SAFETY: the arena's integers are addresses in `memory`.
        let config = unsafe { CacheConfig::new("c", 16, &HeapMeta, &cpu).memory() }.debug(true);
        let cache = ObjectCache::new(config, &arena).unwrap();
        let x = cache.alloc().unwrap();
        let (redzone, tag) = (x + 16, x + 24);
        for (addr, value, want) in [
            (redzone, 0u64, ErrorKind::Corrupt),
            (tag, 0, ErrorKind::Corrupt),
            (tag, cache.core.tag(x, TAG_FREE), ErrorKind::BadFree),
            (
                tag,
                cache.core.tag(x + 8, TAG_ALLOCATED),
                ErrorKind::Corrupt,
            ),
        ] {
            let kept = read::<u64>(addr);
            write(addr, value);
            let e = cache.free(x).unwrap_err();
            assert_eq!((e.kind(), e.addr()), (want, Some(x)));
            assert_eq!(cache.stats().in_use, 1, "the object stays with its user");
            cache.check().unwrap();
            write(addr, kept);
        }
        cache.free(x).unwrap();
        assert_eq!(cache.stats().in_use, 0);
        cache.check().unwrap();
    }

    /// It failed before check_poison compared the bytes past the last whole
    /// word: the write went unnoticed and the allocation succeeded.
    #[test]
    fn a_write_after_free_to_an_objects_last_bytes_is_found() {
        let cpu = FixedCpu::new(0);
        let memory = Memory::new(1 << 16);
        let arena = memory_arena(&memory);
        // SAFETY: the arena's integers are addresses in `memory`.
        let config = unsafe { CacheConfig::new("c", 20, &HeapMeta, &cpu).memory() }.debug(true);
        let cache = ObjectCache::new(config, &arena).unwrap();
        let x = cache.alloc().unwrap();
        cache.free(x).unwrap();
        write(x + 17, 0x42u8);
        let e = cache.alloc().unwrap_err();
        assert_eq!((e.kind(), e.addr()), (ErrorKind::Corrupt, Some(x + 17)));
    }

    #[test]
    fn a_foreign_object_is_not_ours_and_a_double_free_is_refused() {
        let cpu = FixedCpu::new(0);
        let arena: Arena =
            Arena::create(ArenaConfig::new("a", 1).span(0, 1 << 12).meta(&HeapMeta)).unwrap();
        let config = CacheConfig::new("c", 8, &HeapMeta, &cpu).debug(true);
        let cache = ObjectCache::new(config, &arena).unwrap();
        let x = cache.alloc().unwrap();
        let outside = arena.alloc(8, Policy::InstantFit).unwrap();
        let foreign = cache.core.free(outside).err().map(|e| match e {
            FreeError::NotOurs(e) => ("not ours", e.kind()),
            FreeError::Refused(e) => ("refused", e.kind()),
        });
        assert_eq!(foreign, Some(("not ours", ErrorKind::BadFree)));
        cache.free(x).unwrap();
        let double = cache.core.free(x).err().map(|e| match e {
            FreeError::NotOurs(e) => ("not ours", e.kind()),
            FreeError::Refused(e) => ("refused", e.kind()),
        });
        assert_eq!(
            double,
            Some(("refused", ErrorKind::BadFree)),
            "x is this cache's"
        );
        let s = cache.stats();
        assert_eq!((s.allocs, s.frees, s.in_use), (1, 1, 0));
        cache.check().unwrap();
        arena.free(outside, 8).unwrap();
    }

    #[test]
    fn stats_count_allocations_refusals_and_reaps() {
        let cpu = FixedCpu::new(0);
        let meta = Budget::new(8);
        // Room for one slab of ten 24-integer objects.
        let arena: Arena =
            Arena::create(ArenaConfig::new("a", 1).span(0, 256).meta(&HeapMeta)).unwrap();
        let cache = ObjectCache::new(CacheConfig::new("c", 24, &meta, &cpu), &arena).unwrap();
        let objs: Vec<u64> = (0..10).map(|_| cache.alloc().unwrap()).collect();
        let before = cache.stats();
        assert_eq!(kind(cache.alloc()), ErrorKind::NoSpace);
        let s = cache.stats();
        assert_eq!((s.allocs, s.alloc_fails, s.in_use, s.slabs), (10, 1, 10, 1));
        assert_eq!(
            CacheStats {
                alloc_fails: 0,
                magazine_misses: 0,
                ..s
            },
            CacheStats {
                alloc_fails: 0,
                magazine_misses: 0,
                ..before
            },
            "a refused allocation counts, and changes nothing else"
        );
        cache.check().unwrap();
        for &obj in &objs {
            cache.free(obj).unwrap();
        }
        let s = cache.stats();
        assert_eq!((s.frees, s.in_use), (10, 0));
        assert_eq!(s.free_magazine_hits + s.free_magazine_misses, 10);
        assert_eq!(
            cache.alloc().unwrap(),
            objs[9],
            "the last freed, from a magazine"
        );
        assert_eq!(cache.stats().magazine_hits, 1);
        cache.free(objs[9]).unwrap();
        cache.reap().unwrap();
        let s = cache.stats();
        assert_eq!(
            (s.slabs, s.slabs_created, s.slabs_destroyed, s.reaps),
            (0, 1, 1, 1)
        );
        assert_eq!(
            (s.meta_pages, s.magazines, meta.out()),
            (0, 0, 0),
            "a reap gives every page back"
        );
        assert_eq!(arena.size().alloc, 0);
        cache.check().unwrap();
    }
}
