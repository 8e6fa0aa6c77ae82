//! Size classes (kmalloc): `alloc(size, align)` / `free(addr, size, align)`
//! over object caches from 8 bytes to 8 KiB, larger or more strictly
//! aligned requests straight from the backing arena; and an adapter that
//! makes them a `GlobalAlloc`.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, Ordering};

use arrayvec::ArrayVec;
use lock_api::RawMutex;

use crate::arena::{Arena, DefaultLock, Policy};
use crate::cache::{CacheConfig, ObjectCache};
use crate::constraint::Constraints;
use crate::cpu::{CpuGuard, CpuId, CpuLocal, NoCpuLocal};
use crate::error::{Error, ErrorKind, Result};
use crate::meta::MetaSource;

/// The class sizes, in bytes: powers of two and the halves between them,
/// as kmem's size caches.
pub const SIZE_CLASSES: [u64; 20] = [
    8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144,
    8192,
];

/// Sizes the lookup table answers directly.
const SMALL_MAX: u64 = 1024;

/// For each 8-byte step up to `SMALL_MAX`, the smallest class that holds it.
const SMALL_CLASS: [u8; (SMALL_MAX / 8) as usize] = {
    let mut table = [0u8; (SMALL_MAX / 8) as usize];
    let mut i = 0;
    while i < table.len() {
        let size = (i as u64 + 1) * 8;
        let mut class = 0;
        while SIZE_CLASSES[class] < size {
            class += 1;
        }
        table[i] = class as u8;
        i += 1;
    }
    table
};

/// Size-class caches over a memory-mode arena.
pub struct SizeClasses<'a, R: RawMutex = DefaultLock> {
    arena: &'a Arena<'a, R>,
    caches: ArrayVec<ObjectCache<'a, R>, { SIZE_CLASSES.len() }>,
}

impl<'a, R: RawMutex> SizeClasses<'a, R> {
    /// Caches for every class over `arena`, whose integers are addresses;
    /// `debug` turns on the caches' debug checks.
    ///
    /// # Safety
    /// Every integer `arena` hands out must be the address of writable
    /// memory that nothing else uses while it is allocated.
    pub unsafe fn new(
        arena: &'a Arena<'a, R>,
        meta: &'a dyn MetaSource,
        cpu: &'a dyn CpuId,
        debug: bool,
    ) -> Result<Self> {
        // SAFETY: passed on from the caller.
        unsafe { Self::build(arena, meta, cpu, None, debug) }
    }

    /// As [`SizeClasses::new`], with every cache configured for the fast
    /// path of `local` ([`CacheConfig::local`]): [`SizeClasses::alloc_local`]
    /// and [`SizeClasses::free_local`] through `local` take a class's
    /// magazine without a lock.
    ///
    /// # Safety
    /// As [`SizeClasses::new`].
    pub unsafe fn with_local(
        arena: &'a Arena<'a, R>,
        meta: &'a dyn MetaSource,
        cpu: &'a dyn CpuId,
        local: &'a dyn CpuLocal,
        debug: bool,
    ) -> Result<Self> {
        // SAFETY: passed on from the caller.
        unsafe { Self::build(arena, meta, cpu, Some(local), debug) }
    }

    /// # Safety
    /// As [`SizeClasses::new`].
    unsafe fn build(
        arena: &'a Arena<'a, R>,
        meta: &'a dyn MetaSource,
        cpu: &'a dyn CpuId,
        local: Option<&'a dyn CpuLocal>,
        debug: bool,
    ) -> Result<Self> {
        let mut caches = ArrayVec::new();
        for size in SIZE_CLASSES {
            let mut name = arrayvec::ArrayString::<24>::new();
            let _ = core::fmt::write(&mut name, format_args!("kmem_alloc_{size}"));
            // SAFETY: the caller promises the arena's integers are memory.
            let mut config =
                unsafe { CacheConfig::new(&name, size, meta, cpu).memory() }.debug(debug);
            if let Some(local) = local {
                config = config.local(local);
            }
            caches.push(ObjectCache::new(config, arena)?);
        }
        Ok(SizeClasses { arena, caches })
    }

    /// The cache for `size` bytes aligned to `align`, if a class serves it:
    /// the smallest class at least `size` whose objects are aligned to
    /// `align` (class `c` aligns to the lowest set bit of `c`, up to the
    /// arena's quantum, since slabs start on quantum boundaries).
    #[inline]
    fn class(&self, size: u64, align: u64) -> Option<&ObjectCache<'a, R>> {
        let quantum = self.arena.quantum();
        let index = if align <= 8 && size <= SMALL_MAX && quantum >= 8 {
            // Every class is a multiple of 8, so only the size matters.
            usize::from(*SMALL_CLASS.get(size.saturating_sub(1) as usize / 8)?)
        } else {
            SIZE_CLASSES.iter().position(|&c| {
                let natural = (1u64 << c.trailing_zeros()).min(quantum);
                c >= size && natural >= align
            })?
        };
        self.caches
            .get(index)
            .filter(|cache| !cache.debug() || align <= 8)
    }

    /// Allocates `size` bytes aligned to `align` (a power of two).
    pub fn alloc(&self, size: u64, align: u64) -> Result<u64> {
        match self.route(size, align, "allocation of size zero")? {
            Some(cache) => cache.alloc(),
            None => self.alloc_large(size, align),
        }
    }

    /// As [`SizeClasses::alloc`], through the CPU `local` lets this context
    /// hold alone: a class's [`ObjectCache::alloc_local`] (the fast path
    /// when the classes were made [`SizeClasses::with_local`] the same
    /// platform, the locked path otherwise).
    #[inline]
    pub fn alloc_local<L: CpuLocal>(&self, local: &L, size: u64, align: u64) -> Result<u64> {
        match self.route(size, align, "allocation of size zero")? {
            Some(cache) => cache.alloc_local(local),
            None => self.alloc_large(size, align),
        }
    }

    /// Frees what [`SizeClasses::alloc`] returned for the same size and
    /// alignment (an alignment `alloc` refuses is refused here too).
    pub fn free(&self, addr: u64, size: u64, align: u64) -> Result<()> {
        match self
            .route(size, align, "free of size zero")
            .map_err(|e| e.at(addr))?
        {
            Some(cache) => cache.free(addr),
            None => self.free_large(addr, size, align),
        }
    }

    /// As [`SizeClasses::free`], through the CPU `local` lets this context
    /// hold alone (see [`SizeClasses::alloc_local`]). Either free takes
    /// what either alloc returned.
    #[inline]
    pub fn free_local<L: CpuLocal>(
        &self,
        local: &L,
        addr: u64,
        size: u64,
        align: u64,
    ) -> Result<()> {
        match self
            .route(size, align, "free of size zero")
            .map_err(|e| e.at(addr))?
        {
            Some(cache) => cache.free_local(local, addr),
            None => self.free_large(addr, size, align),
        }
    }

    /// Answers the requests other contexts posted on the slot of the CPU
    /// `guard` holds, in every class ([`ObjectCache::honour`]).
    pub fn honour<L: CpuLocal>(&self, guard: &CpuGuard<'_, L>) {
        for cache in &self.caches {
            cache.honour(guard);
        }
    }

    /// The class cache for a request, `None` when the arena serves it, or
    /// the error for a size or alignment no call takes.
    #[inline]
    fn route(
        &self,
        size: u64,
        align: u64,
        verb: &'static str,
    ) -> Result<Option<&ObjectCache<'a, R>>> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, verb));
        }
        if !align.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "align is not a power of two",
            ));
        }
        Ok(self.class(size, align))
    }

    fn alloc_large(&self, size: u64, align: u64) -> Result<u64> {
        if align <= self.arena.quantum() {
            // Plain alignment goes through `alloc`, so an importing arena
            // imports; stricter alignment needs `xalloc`.
            self.arena.alloc(size, Policy::InstantFit)
        } else {
            self.arena
                .xalloc(size, &Constraints::aligned(align), Policy::InstantFit)
        }
    }

    fn free_large(&self, addr: u64, size: u64, align: u64) -> Result<()> {
        if align <= self.arena.quantum() {
            self.arena.free(addr, size)
        } else {
            self.arena.xfree(addr, size)
        }
    }

    /// The caches, smallest class first.
    pub fn caches(&self) -> &[ObjectCache<'a, R>] {
        &self.caches
    }

    /// The backing arena.
    pub fn arena(&self) -> &'a Arena<'a, R> {
        self.arena
    }

    /// Returns every cache's magazines and empty slabs to the arena.
    pub fn reap(&self) -> Result<()> {
        self.caches.iter().try_for_each(|c| c.reap())
    }

    /// Checks every cache.
    pub fn check(&self) -> Result<()> {
        self.caches.iter().try_for_each(|c| c.check())
    }
}

/// The size classes as a `GlobalAlloc`: a kernel's `#[global_allocator]`,
/// or a host program's. The classes are made on first use by `init`.
///
/// A heap made [`GlobalHeap::with_local`] a platform allocates and frees
/// through it ([`SizeClasses::alloc_local`]): the classes' fast path, when
/// `init` made them [`SizeClasses::with_local`] the same platform. One made
/// [`GlobalHeap::new`] takes the locked path.
///
/// An allocation made while `init` runs gets null: by `init` itself, by a
/// meta source of its arenas and caches that allocates from the global
/// allocator (`HeapMeta` then serves them from its static reserve), or by
/// another thread. Such a call cannot wait for `init`, since it may be what
/// `init` waits for.
pub struct GlobalHeap<R: RawMutex + 'static = DefaultLock, L: CpuLocal + 'static = NoCpuLocal> {
    classes: spin::Once<Option<SizeClasses<'static, R>>>,
    /// Whether a call has begun making the classes.
    started: AtomicBool,
    init: fn() -> Option<SizeClasses<'static, R>>,
    local: &'static L,
}

impl<R: RawMutex + 'static> GlobalHeap<R> {
    /// A heap whose classes `init` makes on first use, on the locked path.
    pub const fn new(init: fn() -> Option<SizeClasses<'static, R>>) -> Self {
        GlobalHeap::with_local(init, &NoCpuLocal)
    }
}

impl<R: RawMutex + 'static, L: CpuLocal + 'static> GlobalHeap<R, L> {
    /// A heap whose classes `init` makes on first use, allocating and
    /// freeing through the CPU `local` lets each context hold.
    pub const fn with_local(
        init: fn() -> Option<SizeClasses<'static, R>>,
        local: &'static L,
    ) -> Self {
        GlobalHeap {
            classes: spin::Once::new(),
            started: AtomicBool::new(false),
            init,
            local,
        }
    }

    /// The classes, made now if they were not yet; `None` if `init` gave
    /// none, or while it runs.
    pub fn classes(&self) -> Option<&SizeClasses<'static, R>> {
        if let Some(classes) = self.classes.get() {
            return classes.as_ref();
        }
        if self.started.swap(true, Ordering::AcqRel) {
            return self.classes.get().and_then(Option::as_ref);
        }
        self.classes.call_once(self.init).as_ref()
    }
}

// SAFETY: `alloc` returns memory from the arena the classes were made over
// (which the `SizeClasses::new` caller vouched for), sized and aligned as
// the layout asks, or null; `dealloc` hands back exactly such a block with
// the layout it was allocated with.
unsafe impl<R: RawMutex + 'static, L: CpuLocal + 'static> GlobalAlloc for GlobalHeap<R, L>
where
    SizeClasses<'static, R>: Sync,
{
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(classes) = self.classes() else {
            return core::ptr::null_mut();
        };
        match classes.alloc_local(
            self.local,
            layout.size().max(1) as u64,
            layout.align() as u64,
        ) {
            Ok(addr) => addr as usize as *mut u8,
            Err(_) => core::ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(classes) = self.classes() {
            let _ = classes.free_local(
                self.local,
                ptr as usize as u64,
                layout.size().max(1) as u64,
                layout.align() as u64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Memory;
    use crate::{Arena, ArenaConfig, ErrorKind, FixedCpu, HeapMeta, ObjectCache};
    use lock_api::RawMutex;

    const Q: u64 = 4096;

    fn arena(memory: &Memory) -> Arena<'static> {
        Arena::create(
            ArenaConfig::new("heap", Q)
                .span(memory.base(), memory.len())
                .meta(&HeapMeta),
        )
        .unwrap()
    }

    /// The object size of the class serving `size` bytes aligned to `align`.
    fn class_of<R: RawMutex>(classes: &SizeClasses<'_, R>, size: u64, align: u64) -> Option<u64> {
        classes.class(size, align).map(ObjectCache::object_size)
    }

    #[test]
    fn the_lookup_table_names_the_smallest_class_that_holds_each_size() {
        for size in 1..=SMALL_MAX {
            let class = SIZE_CLASSES[usize::from(SMALL_CLASS[(size as usize - 1) / 8])];
            let smallest = SIZE_CLASSES.iter().copied().find(|&c| c >= size);
            assert_eq!(Some(class), smallest, "size {size}");
        }
        assert!(
            SIZE_CLASSES
                .windows(2)
                .all(|w| w[0] < w[1] && w[0] % 8 == 0)
        );
        assert_eq!(SIZE_CLASSES.last(), Some(&8192));
    }

    #[test]
    fn every_class_boundary_picks_the_right_cache() {
        let memory = Memory::new(1 << 20);
        let arena = arena(&memory);
        let cpu = FixedCpu::new(0);
        // SAFETY: the arena hands out addresses in `memory`.
        let classes = unsafe { SizeClasses::new(&arena, &HeapMeta, &cpu, false) }.unwrap();
        for (i, &class) in SIZE_CLASSES.iter().enumerate() {
            let next = SIZE_CLASSES.get(i + 1).copied();
            let below = if i == 0 { 1 } else { SIZE_CLASSES[i - 1] + 1 };
            for align in [1, 8] {
                assert_eq!(
                    class_of(&classes, below, align),
                    Some(class),
                    "{below} bytes"
                );
                assert_eq!(
                    class_of(&classes, class, align),
                    Some(class),
                    "{class} bytes"
                );
                assert_eq!(
                    class_of(&classes, class + 1, align),
                    next,
                    "{} bytes",
                    class + 1
                );
            }
        }
        assert_eq!(class_of(&classes, u64::MAX, 1), None);
        // Stricter alignment takes the first class whose objects are
        // naturally aligned so (at most to the quantum).
        assert_eq!(class_of(&classes, 24, 16), Some(32));
        assert_eq!(class_of(&classes, 33, 16), Some(48), "48 is 16-aligned");
        assert_eq!(class_of(&classes, 33, 32), Some(64), "48 is not 32-aligned");
        assert_eq!(class_of(&classes, 100, 64), Some(128));
        assert_eq!(class_of(&classes, 8, Q), Some(Q));
        assert_eq!(class_of(&classes, 6000, Q), Some(8192));
        assert_eq!(
            class_of(&classes, 8, 2 * Q),
            None,
            "beyond the quantum: the arena"
        );
        // Debug caches keep only 8-byte alignment: the rest is the arena's.
        // SAFETY: as above.
        let debug = unsafe { SizeClasses::new(&arena, &HeapMeta, &cpu, true) }.unwrap();
        assert_eq!(class_of(&debug, 24, 8), Some(24));
        assert_eq!(class_of(&debug, 24, 16), None);
    }

    #[test]
    fn oversize_and_overaligned_requests_go_to_the_arena() {
        let memory = Memory::new(1 << 20);
        let arena = arena(&memory);
        let cpu = FixedCpu::new(0);
        // SAFETY: the arena hands out addresses in `memory`.
        let classes = unsafe { SizeClasses::new(&arena, &HeapMeta, &cpu, false) }.unwrap();
        let big = classes.alloc(8193, 8).unwrap();
        assert_eq!(
            arena.size().alloc,
            3 * Q,
            "8193 bytes rounded to the quantum"
        );
        assert!(classes.caches().iter().all(|c| c.stats().slabs == 0));
        let aligned = classes.alloc(8, 4 * Q).unwrap();
        assert_eq!(aligned % (4 * Q), 0);
        assert_eq!(arena.size().alloc, 4 * Q);
        // Each is freed the way it was allocated.
        assert_eq!(
            arena.free(aligned, Q).unwrap_err().kind(),
            ErrorKind::BadFree
        );
        classes.free(aligned, 8, 4 * Q).unwrap();
        classes.free(big, 8193, 8).unwrap();
        assert_eq!(arena.size().alloc, 0);
        arena.check().unwrap();
    }

    #[test]
    fn a_zero_size_or_bad_alignment_is_refused_and_changes_nothing() {
        let memory = Memory::new(1 << 20);
        let arena = arena(&memory);
        let cpu = FixedCpu::new(0);
        // SAFETY: the arena hands out addresses in `memory`.
        let classes = unsafe { SizeClasses::new(&arena, &HeapMeta, &cpu, true) }.unwrap();
        let x = classes.alloc(24, 8).unwrap();
        let before = (arena.size(), classes.caches()[2].stats());
        let kind = |r: Result<u64>| r.unwrap_err().kind();
        let free_kind = |r: Result<()>| r.unwrap_err().kind();
        assert_eq!(kind(classes.alloc(0, 8)), ErrorKind::ZeroSize);
        assert_eq!(kind(classes.alloc(24, 0)), ErrorKind::BadConstraint);
        assert_eq!(kind(classes.alloc(24, 24)), ErrorKind::BadConstraint);
        assert_eq!(free_kind(classes.free(x, 0, 8)), ErrorKind::ZeroSize);
        assert_eq!(free_kind(classes.free(x, 24, 3)), ErrorKind::BadConstraint);
        assert_eq!(free_kind(classes.free(x + 8, 24, 8)), ErrorKind::BadFree);
        assert_eq!((arena.size(), classes.caches()[2].stats()), before);
        classes.check().unwrap();
        classes.free(x, 24, 8).unwrap();
        classes.reap().unwrap();
        assert_eq!(arena.size().alloc, 0);
    }
}
