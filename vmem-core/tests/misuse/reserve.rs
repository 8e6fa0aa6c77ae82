//! Reserves over a debug cache.

use vmem_core::ErrorKind::*;
use vmem_core::{Arena, ArenaConfig, HeapMeta, ObjectCache, Reserve};

use crate::Case;
use crate::harness::{Outcome, cache, probe};

/// An address that is none of the reserve cache's objects.
const FOREIGN: u64 = 0x10_0000;

/// The layer's cases, in the page's order.
#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("reserve/count-zero", "`Reserve::new(cache, 0, ..)`", ZeroSize,
            count_zero),
        Case::new("reserve/count-too-many", "a reserve of 65 objects when the arena holds 64", NoSpace,
            count_too_many),
        Case::new("reserve/alloc-exhausted", "`alloc` when the reserve is empty and the arena full", NoSpace,
            || on_reserve(exhausted, |r, _| r.alloc())),
        Case::new("reserve/free-double", "an object freed twice (the first free put it back in the reserve)", BadFree,
            || on_reserve(freed_beside, |r, x| r.free(x))),
        Case::new("reserve/free-foreign", "`free` of an address not of the cache while the reserve has room", BadFree,
            || on_reserve(|r, _| r.alloc().unwrap(), |r, _| r.free(FOREIGN))),
        Case::new("reserve/free-after-cache-free", "an object from the reserve freed to the cache, then to the reserve", BadFree,
            || on_reserve(freed_to_cache, |r, x| r.free(x))),
        Case::new("reserve/free-foreign-when-full", "`free` of an address not of the cache while the reserve is full (it goes to the cache)", BadFree,
            || on_reserve(|_, _| 0, |r, _| r.free(FOREIGN))),
    ]
}

/// The arena reserves sit on: exactly 64 objects of 64 integers.
fn reserve_arena() -> Arena<'static> {
    Arena::create(ArenaConfig::new("r", 64).span(0, 64 * 64).meta(&HeapMeta)).unwrap()
}

/// Makes a reserve of two objects over a cache without magazines, prepares
/// it with `setup`, then makes `call` on it and the object `setup` named.
fn on_reserve<T>(
    setup: impl FnOnce(&Reserve<'_>, &ObjectCache<'_>) -> u64,
    call: impl FnOnce(&Reserve<'_>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    let a = reserve_arena();
    let objects = cache(&a, "c", 64, 0);
    let r = Reserve::new(&objects, 2, &HeapMeta).unwrap();
    let x = setup(&r, &objects);
    probe(&[&a, &objects, &r], || call(&r, x))
}

/// The arena's 62 other objects taken from the cache, and both of the
/// reserve's.
fn exhausted(r: &Reserve<'_>, objects: &ObjectCache<'_>) -> u64 {
    for _ in 0..62 {
        objects.alloc().unwrap();
    }
    r.alloc().unwrap();
    r.alloc().unwrap()
}

/// One of the reserve's objects given back while the other stays out.
fn freed_beside(r: &Reserve<'_>, _: &ObjectCache<'_>) -> u64 {
    let x = r.alloc().unwrap();
    let _kept = r.alloc().unwrap();
    r.free(x).unwrap();
    x
}

/// One of the reserve's objects given to the cache instead.
fn freed_to_cache(r: &Reserve<'_>, objects: &ObjectCache<'_>) -> u64 {
    let x = r.alloc().unwrap();
    objects.free(x).unwrap();
    x
}

fn count_zero() -> Outcome {
    let a = reserve_arena();
    let objects = cache(&a, "c", 64, 0);
    probe(&[&a, &objects], || Reserve::new(&objects, 0, &HeapMeta))
}

fn count_too_many() -> Outcome {
    let a = reserve_arena();
    let objects = cache(&a, "c", 64, 4);
    let _o = objects.alloc().unwrap();
    probe(&[&a, &objects], || Reserve::new(&objects, 65, &HeapMeta))
}
