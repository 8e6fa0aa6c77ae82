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
use crate::cpu::CpuId;
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
        let mut caches = ArrayVec::new();
        for size in SIZE_CLASSES {
            let mut name = arrayvec::ArrayString::<24>::new();
            let _ = core::fmt::write(&mut name, format_args!("kmem_alloc_{size}"));
            // SAFETY: the caller promises the arena's integers are memory.
            let config = unsafe { CacheConfig::new(&name, size, meta, cpu).memory() }.debug(debug);
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
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "allocation of size zero"));
        }
        if !align.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "align is not a power of two",
            ));
        }
        match self.class(size, align) {
            Some(cache) => cache.alloc(),
            // Plain alignment goes through `alloc`, so an importing arena
            // imports; stricter alignment needs `xalloc`.
            None if align <= self.arena.quantum() => self.arena.alloc(size, Policy::InstantFit),
            None => self
                .arena
                .xalloc(size, &Constraints::aligned(align), Policy::InstantFit),
        }
    }

    /// Frees what [`SizeClasses::alloc`] returned for the same size and
    /// alignment (an alignment `alloc` refuses is refused here too).
    pub fn free(&self, addr: u64, size: u64, align: u64) -> Result<()> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "free of size zero").at(addr));
        }
        if !align.is_power_of_two() {
            return Err(
                Error::new(ErrorKind::BadConstraint, "align is not a power of two").at(addr),
            );
        }
        match self.class(size, align) {
            Some(cache) => cache.free(addr),
            None if align <= self.arena.quantum() => self.arena.free(addr, size),
            None => self.arena.xfree(addr, size),
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
/// An allocation made while `init` runs gets null: by `init` itself, by a
/// meta source of its arenas and caches that allocates from the global
/// allocator (`HeapMeta` then serves them from its static reserve), or by
/// another thread. Such a call cannot wait for `init`, since it may be what
/// `init` waits for.
pub struct GlobalHeap<R: RawMutex + 'static = DefaultLock> {
    classes: spin::Once<Option<SizeClasses<'static, R>>>,
    /// Whether a call has begun making the classes.
    started: AtomicBool,
    init: fn() -> Option<SizeClasses<'static, R>>,
}

impl<R: RawMutex + 'static> GlobalHeap<R> {
    /// A heap whose classes `init` makes on first use.
    pub const fn new(init: fn() -> Option<SizeClasses<'static, R>>) -> Self {
        GlobalHeap {
            classes: spin::Once::new(),
            started: AtomicBool::new(false),
            init,
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
unsafe impl<R: RawMutex + 'static> GlobalAlloc for GlobalHeap<R>
where
    SizeClasses<'static, R>: Sync,
{
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(classes) = self.classes() else {
            return core::ptr::null_mut();
        };
        match classes.alloc(layout.size().max(1) as u64, layout.align() as u64) {
            Ok(addr) => addr as usize as *mut u8,
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(classes) = self.classes() {
            let _ = classes.free(
                ptr as usize as u64,
                layout.size().max(1) as u64,
                layout.align() as u64,
            );
        }
    }
}
