//! Object caches, in no-touch mode and in memory mode (debug checks on).

use vmem_core::ErrorKind::*;
use vmem_core::{Arena, CPU0, CacheConfig, HeapMeta, ObjectCache};

use crate::Case;
use crate::harness::{Outcome, Q, arena, cache, memory_arena, memory_cache, poke, probe, standard};

use Mode::{Memory, NoTouch};

/// The layer's cases, in the page's order.
#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("cache/size-zero", "`CacheConfig::new(name, 0, ..)`: objects of size zero", ZeroSize,
            new_cache(0, None)),
        Case::new("cache/align-zero", "object alignment 0", BadConstraint,
            new_cache(64, Some(0))),
        Case::new("cache/align-not-power-of-two", "object alignment 24", BadConstraint,
            new_cache(64, Some(24))),
        Case::new("cache/size-overflow", "objects of 2^64 - 1 integers (no slab can hold them)", Overflow,
            new_cache(u64::MAX, None)),
        Case::new("cache/alloc-arena-too-small", "`alloc` when the arena cannot hold one slab", NoSpace,
            alloc_arena_too_small),
        Case::new("cache/free-double-magazine", "an object freed twice (the first free left it in a magazine)", BadFree,
            || on_cache(NoTouch, 64, 4, freed, |c, o| c.free(o))),
        Case::new("cache/free-double-slab", "an object freed twice, magazines off (the first free put it back in its slab)", BadFree,
            || on_cache(NoTouch, 64, 0, freed_beside, |c, o| c.free(o))),
        Case::new("cache/free-wrong-cache", "an object freed to another cache of the same size over the same arena", BadFree,
            free_wrong_cache),
        Case::new("cache/free-interior", "`free` of an address inside an object", BadFree,
            || on_cache(NoTouch, 64, 4, allocated, |c, o| c.free(o + 8))),
        Case::new("cache/free-never-allocated", "`free` of an address in none of the cache's slabs", BadFree,
            || on_cache(NoTouch, 64, 4, allocated, |c, _| c.free(0x1_0000))),
        Case::new("cache/free-never-handed-out", "`free` of an object still free in its slab", BadFree,
            || on_cache(NoTouch, 64, 0, allocated, |c, o| c.free(o + 64))),
        Case::new("cache/memory-double-free", "memory mode: an object freed twice", BadFree,
            || on_cache(Memory, 24, 4, freed, |c, o| c.free(o))),
        Case::new("cache/memory-write-after-free", "memory mode: a freed object written, then the next `alloc` (from a magazine)", Corrupt,
            || on_cache(Memory, 24, 4, |c| overwrite(freed(c), 3, 0x42), |c, _| c.alloc())),
        Case::new("cache/memory-write-after-free-slab", "memory mode, magazines off: a freed object written, then the next `alloc` (from its slab)", Corrupt,
            || on_cache(Memory, 24, 0, |c| overwrite(freed_beside(c), 16, 0), |c, _| c.alloc())),
        Case::new("cache/memory-red-zone", "memory mode: a write just past the object's 8-byte-rounded end (its red zone), then `free`", Corrupt,
            || on_cache(Memory, 24, 4, |c| overwrite(allocated(c), 24, 0), |c, o| c.free(o))),
        Case::new("cache/memory-pad", "memory mode: a one-byte overrun of a 20-byte object (into its pad), then `free`", Corrupt,
            || on_cache(Memory, 20, 4, |c| overwrite(allocated(c), 20, 0), |c, o| c.free(o))),
        Case::new("cache/memory-buffer-tag", "memory mode: the buffer tag after the red zone overwritten, then `free`", Corrupt,
            || on_cache(Memory, 24, 4, |c| overwrite(allocated(c), 32, 0), |c, o| c.free(o))),
        Case::new("cache/align-overflow", "object alignment 2^63 (a slab of eight such objects passes 2^64)", Overflow,
            new_cache(64, Some(1 << 63))),
        Case::new("cache/memory-size-near-2^64", "memory mode, debug: objects of 2^64 - 16 integers (the red zone and buffer tag after each take it past 2^64)", Overflow,
            memory_size_near_2_64),
    ]
}

/// A case that makes a no-touch cache of objects of `size` (aligned to
/// `align`, if given) over a fresh `standard` arena.
fn new_cache(size: u64, align: Option<u64>) -> impl Fn() -> Outcome {
    move || {
        let a = standard();
        let mut config = CacheConfig::new("c", size, &HeapMeta, &CPU0);
        if let Some(align) = align {
            config = config.align(align);
        }
        probe(&[&a], || ObjectCache::new(config, &a))
    }
}

/// Where a cache's objects are.
enum Mode {
    /// Integers of a `standard` arena, never read or written.
    NoTouch,
    /// Memory of a host buffer (`memory_arena`): poisoned when free, with a
    /// red zone and a buffer tag after each object.
    Memory,
}

/// Makes a debug cache of objects of `size` with `magazine` rounds per
/// magazine, prepares it with `setup`, then makes `call` on it and the
/// object `setup` named.
fn on_cache<T>(
    mode: Mode,
    size: u64,
    magazine: u32,
    setup: impl FnOnce(&ObjectCache<'_>) -> u64,
    call: impl FnOnce(&ObjectCache<'_>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    let a = match mode {
        NoTouch => standard(),
        Memory => memory_arena(),
    };
    let objects = match mode {
        NoTouch => cache(&a, "c", size, magazine),
        Memory => memory_cache(&a, size, magazine),
    };
    let o = setup(&objects);
    probe(&[&a, &objects], || call(&objects, o))
}

/// An object allocated and kept.
fn allocated(objects: &ObjectCache<'_>) -> u64 {
    objects.alloc().unwrap()
}

/// An object allocated and freed.
fn freed(objects: &ObjectCache<'_>) -> u64 {
    let o = objects.alloc().unwrap();
    objects.free(o).unwrap();
    o
}

/// An object allocated and freed while the next one stays out, so its
/// slab is not empty.
fn freed_beside(objects: &ObjectCache<'_>) -> u64 {
    let o = objects.alloc().unwrap();
    let _kept = objects.alloc().unwrap();
    objects.free(o).unwrap();
    o
}

/// Writes `byte` at `offset` into the memory-mode object `o`; gives `o`.
fn overwrite(o: u64, offset: u64, byte: u8) -> u64 {
    poke(o + offset, byte);
    o
}

fn alloc_arena_too_small() -> Outcome {
    let a = arena(0x10_0000, Q);
    let objects = cache(&a, "c", 0x1000, 4);
    probe(&[&a, &objects], || objects.alloc())
}

fn free_wrong_cache() -> Outcome {
    let a = standard();
    let first = cache(&a, "c1", 64, 4);
    let second = cache(&a, "c2", 64, 4);
    let o = first.alloc().unwrap();
    let _p = second.alloc().unwrap();
    probe(&[&a, &first, &second], || second.free(o))
}

fn memory_size_near_2_64() -> Outcome {
    let a: Arena = memory_arena();
    // SAFETY: as for `memory_cache`.
    let config =
        unsafe { CacheConfig::new("c", u64::MAX - 15, &HeapMeta, &CPU0).memory() }.debug(true);
    probe(&[&a], || ObjectCache::new(config, &a))
}
