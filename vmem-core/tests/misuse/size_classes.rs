//! Size classes (kmalloc) with debug checks, over a memory-mode arena.

use vmem_core::ErrorKind::*;
use vmem_core::{Arena, CPU0, HeapMeta, SizeClasses};

use crate::Case;
use crate::harness::{Outcome, memory_arena, poke, probe};

/// The layer's cases, in the page's order.
#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("size/alloc-zero", "`alloc(0, 8)`", ZeroSize,
            || on_classes(|k| k.alloc(0, 8))),
        Case::new("size/align-zero", "`alloc(64, 0)`", BadConstraint,
            || on_classes(|k| k.alloc(64, 0))),
        Case::new("size/align-not-power-of-two", "`alloc(64, 24)`", BadConstraint,
            || on_classes(|k| k.alloc(64, 24))),
        Case::new("size/alloc-overflow", "`alloc(2^64 - 1, 8)`", Overflow,
            || on_classes(|k| k.alloc(u64::MAX, 8))),
        Case::new("size/alloc-too-large", "`alloc` of 64 MiB from a 2 MiB arena", NoSpace,
            || on_classes(|k| k.alloc(64 << 20, 8))),
        Case::new("size/align-too-large", "`alloc(8, 2^40)`: no address of the arena has that alignment", NoSpace,
            || on_classes(|k| k.alloc(8, 1 << 40))),
        Case::new("size/free-zero", "`free(addr, 0, 8)`", ZeroSize,
            || after(&[8], |k, x| k.free(x, 0, 8))),
        Case::new("size/free-align-not-power-of-two", "`free(addr, 8, 3)`: an alignment no `alloc` accepts", BadConstraint,
            || after(&[8], |k, x| k.free(x, 8, 3))),
        Case::new("size/free-wrong-class", "an 8-byte block freed as 100 bytes (another class)", BadFree,
            || after(&[8, 100], |k, x| k.free(x, 100, 8))),
        Case::new("size/free-wrong-large-size", "a 100,000-byte block freed as 50,000 bytes", BadFree,
            || after(&[100_000], |k, x| k.free(x, 50_000, 8))),
        Case::new("size/free-wrong-align", "a 100,000-byte block allocated with align 8, freed with align 2^16", BadFree,
            || after(&[100_000], |k, x| k.free(x, 100_000, 1 << 16))),
        Case::new("size/free-double-small", "a 24-byte block freed twice", BadFree,
            || after_free(&[24], |k, x| k.free(x, 24, 8))),
        Case::new("size/free-double-large", "a 100,000-byte block freed twice", BadFree,
            || after_free(&[100_000, 100_000], |k, x| k.free(x, 100_000, 8))),
        Case::new("size/free-never-allocated", "`free` of an address no class or arena handed out", BadFree,
            || after(&[100_000], |k, _| k.free(0x1000, 64, 8))),
        Case::new("size/overrun", "a 24-byte block written one byte past its end, then `free`", Corrupt,
            || after(&[24], |k, x| { poke(x + 24, 0); k.free(x, 24, 8) })),
    ]
}

/// Makes `call` on fresh size classes with debug checks over a fresh
/// `memory_arena`.
fn on_classes<T>(call: impl FnOnce(&SizeClasses<'_>) -> vmem_core::Result<T>) -> Outcome {
    prepared(&[], false, |k, _| call(k))
}

/// Allocates blocks of `sizes` (align 8) from fresh size classes, then
/// makes `call` on them and the first block.
fn after<T>(
    sizes: &[u64],
    call: impl FnOnce(&SizeClasses<'_>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    prepared(sizes, false, call)
}

/// As `after`, with the first block freed before `call`.
fn after_free<T>(
    sizes: &[u64],
    call: impl FnOnce(&SizeClasses<'_>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    prepared(sizes, true, call)
}

fn prepared<T>(
    sizes: &[u64],
    free_first: bool,
    call: impl FnOnce(&SizeClasses<'_>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    let a: Arena = memory_arena();
    // SAFETY: the arena hands out addresses of a leaked host buffer that
    // nothing else uses (as for `memory_cache`).
    let k = unsafe { SizeClasses::new(&a, &HeapMeta, &CPU0, true) }.unwrap();
    let blocks: Vec<u64> = sizes.iter().map(|&s| k.alloc(s, 8).unwrap()).collect();
    let first = blocks.first().copied().unwrap_or(0);
    if free_first {
        k.free(first, sizes[0], 8).unwrap();
    }
    probe(&[&k], || call(&k, first))
}
