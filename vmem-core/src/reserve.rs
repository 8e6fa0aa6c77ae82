//! Reserves (DragonFly's MPIPE): objects of a cache set aside so that a
//! caller that must not fail or block (an interrupt handler, a pager under
//! memory pressure) can always have one.

use core::ptr::NonNull;

use lock_api::RawMutex;

use crate::cache::ObjectCache;
use crate::error::{Error, ErrorKind, Result};
use crate::meta::{META_PAGE, MetaSource};

/// `count` objects of a cache held back: [`Reserve::alloc`] takes one of
/// them without touching the cache's slabs or arena, and falls back to the
/// cache (which may fail cleanly) only when all are out. Frees refill the
/// reserve first.
pub struct Reserve<'a, R: RawMutex = crate::arena::DefaultLock> {
    cache: &'a ObjectCache<'a, R>,
    meta: &'a dyn MetaSource,
    store: crate::sync::Mutex<Store>,
}

/// The reserved objects: a stack in meta pages.
struct Store {
    base: NonNull<u64>,
    pages: usize,
    len: usize,
    cap: usize,
}

// SAFETY: the store owns its pages, reached only under the reserve's lock.
unsafe impl Send for Store {}

impl Store {
    fn slots(&mut self) -> &mut [u64] {
        // SAFETY: the pages hold `cap` words and belong to this store.
        unsafe { core::slice::from_raw_parts_mut(self.base.as_ptr(), self.cap) }
    }
}

impl<'a, R: RawMutex> Reserve<'a, R> {
    /// Sets aside `count` objects of `cache`, their list in pages from
    /// `meta`. Fails (changing nothing) when the cache cannot supply them.
    pub fn new(
        cache: &'a ObjectCache<'a, R>,
        count: usize,
        meta: &'a dyn MetaSource,
    ) -> Result<Self> {
        if count == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "reserve of zero objects"));
        }
        let pages = count.div_ceil(META_PAGE / 8);
        let base = meta
            .alloc_pages(pages)
            .ok_or(Error::new(
                ErrorKind::NoSpace,
                "no memory for the reserve's list",
            ))?
            .cast::<u64>();
        let mut store = Store {
            base,
            pages,
            len: 0,
            cap: count,
        };
        let mark = cache.core.slab_mark();
        for i in 0..count {
            // Unstocked: a fill that fails leaves even the depot as it was.
            match cache.core.alloc_unstocked(cache.arena()) {
                Ok(obj) => {
                    store.slots()[i] = obj;
                    store.len += 1;
                }
                Err(e) => {
                    // Give back what was taken so the arena is as it was.
                    let len = store.len;
                    cache
                        .core
                        .unwind(&store.slots()[..len], mark, cache.arena());
                    // SAFETY: the pages came from `meta` and are not used any more.
                    unsafe { meta.free_pages(base.cast(), pages) };
                    return Err(e);
                }
            }
        }
        Ok(Reserve {
            cache,
            meta,
            store: crate::sync::Mutex::new(store),
        })
    }

    /// An object: from the reserve while it has one, else from the cache.
    pub fn alloc(&self) -> Result<u64> {
        let mut store = self.store.lock();
        if store.len > 0 {
            store.len -= 1;
            let len = store.len;
            return Ok(store.slots()[len]);
        }
        drop(store);
        self.cache.alloc()
    }

    /// Frees an object from [`Reserve::alloc`]: back into the reserve while
    /// it is short, else to the cache. An object already in the reserve is
    /// `BadFree`; so, when the cache has debug checks, is one no user holds
    /// (not the cache's, or already freed to it).
    pub fn free(&self, obj: u64) -> Result<()> {
        self.cache.core.check_held(obj)?;
        let mut store = self.store.lock();
        let len = store.len;
        if store.slots()[..len].contains(&obj) {
            return Err(Error::new(ErrorKind::BadFree, "object is already in the reserve").at(obj));
        }
        if store.len < store.cap {
            store.slots()[len] = obj;
            store.len += 1;
            return Ok(());
        }
        drop(store);
        self.cache.free(obj)
    }

    /// Objects the reserve holds now.
    pub fn available(&self) -> usize {
        self.store.lock().len
    }

    /// Objects the reserve holds when full.
    pub fn capacity(&self) -> usize {
        self.store.lock().cap
    }
}

impl<R: RawMutex> Drop for Reserve<'_, R> {
    /// Returns the reserved objects to the cache and the list's pages.
    fn drop(&mut self) {
        let store = self.store.get_mut();
        for i in 0..store.len {
            let obj = store.slots()[i];
            let _ = self.cache.free(obj);
        }
        // SAFETY: the pages came from `meta` and are not used any more.
        unsafe { self.meta.free_pages(store.base.cast(), store.pages) };
    }
}

impl<R: RawMutex> core::fmt::Debug for Reserve<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reserve")
            .field("cache", &self.cache.name())
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Budget;
    use crate::{Arena, ArenaConfig, CacheConfig, CacheStats, FixedCpu, HeapMeta};

    fn kind<T>(r: Result<T>) -> ErrorKind {
        match r {
            Ok(_) => panic!("expected a refusal"),
            Err(e) => e.kind(),
        }
    }

    /// An arena of `objects` 64-integer objects' room.
    fn arena(objects: u64) -> Arena<'static> {
        Arena::create(
            ArenaConfig::new("a", 64)
                .span(0, 64 * objects)
                .meta(&HeapMeta),
        )
        .unwrap()
    }

    #[test]
    fn the_list_takes_a_page_per_512_objects_and_gives_them_back() {
        let cpu = FixedCpu::new(0);
        let arena = arena(1024);
        let cache = ObjectCache::new(CacheConfig::new("c", 64, &HeapMeta, &cpu), &arena).unwrap();
        let meta = Budget::new(2);
        for (count, pages) in [(1, 1), (META_PAGE / 8, 1), (META_PAGE / 8 + 1, 2)] {
            let reserve = Reserve::new(&cache, count, &meta).unwrap();
            assert_eq!((reserve.available(), reserve.capacity()), (count, count));
            assert_eq!(meta.out(), pages, "{count} objects");
            assert_eq!(cache.stats().in_use, count as u64);
            drop(reserve);
            assert_eq!(
                (meta.out(), cache.stats().in_use),
                (0, 0),
                "all back on drop"
            );
        }
        cache.check().unwrap();
    }

    #[test]
    fn a_fill_that_cannot_be_had_changes_nothing() {
        let cpu = FixedCpu::new(0);
        let arena = arena(16);
        let cache = ObjectCache::new(CacheConfig::new("c", 64, &HeapMeta, &cpu), &arena).unwrap();
        let held = cache.alloc().unwrap();
        let before = (arena.size(), cache.stats());
        let meta = Budget::new(1);
        assert_eq!(kind(Reserve::new(&cache, 0, &meta)), ErrorKind::ZeroSize);
        assert_eq!(
            kind(Reserve::new(&cache, 16, &Budget::new(0))),
            ErrorKind::NoSpace,
            "no page for the list"
        );
        // Sixteen more than the arena has room for: the fill fails
        // partway, and the slabs it made go back.
        assert_eq!(kind(Reserve::new(&cache, 16, &meta)), ErrorKind::NoSpace);
        assert_eq!(meta.out(), 0, "the list's page went back");
        let after = (arena.size(), cache.stats());
        assert_eq!(after.0, before.0, "the arena is as it was");
        let counts = |s: CacheStats| (s.in_use, s.slabs, s.depot_empty, s.magazines);
        assert_eq!(
            counts(after.1),
            counts(before.1),
            "so is the cache, depot and all"
        );
        cache.check().unwrap();
        arena.check().unwrap();
        // Fifteen fit.
        let reserve = Reserve::new(&cache, 15, &meta).unwrap();
        assert_eq!(reserve.available(), 15);
        drop(reserve);
        cache.free(held).unwrap();
    }

    #[test]
    fn allocations_drain_the_reserve_first_and_frees_refill_it_first() {
        let cpu = FixedCpu::new(0);
        let arena = arena(64);
        let config = CacheConfig::new("c", 64, &HeapMeta, &cpu).debug(true);
        let cache = ObjectCache::new(config, &arena).unwrap();
        let reserve = Reserve::new(&cache, 2, &HeapMeta).unwrap();
        let allocs = cache.stats().allocs;
        let a = reserve.alloc().unwrap();
        let b = reserve.alloc().unwrap();
        assert_eq!(
            (reserve.available(), cache.stats().allocs),
            (0, allocs),
            "the cache untouched"
        );
        let c = reserve.alloc().unwrap();
        assert_eq!(
            cache.stats().allocs,
            allocs + 1,
            "empty, it falls back to the cache"
        );
        reserve.free(a).unwrap();
        assert_eq!(
            kind(reserve.free(a)),
            ErrorKind::BadFree,
            "already in the reserve"
        );
        assert_eq!(reserve.available(), 1);
        reserve.free(c).unwrap();
        assert_eq!(
            (reserve.available(), cache.stats().frees),
            (2, 0),
            "refilled before the cache"
        );
        reserve.free(b).unwrap();
        assert_eq!(
            (reserve.available(), cache.stats().frees),
            (2, 1),
            "full: to the cache"
        );
        // With debug checks, an object no user holds is refused too.
        assert_eq!(
            kind(reserve.free(b)),
            ErrorKind::BadFree,
            "freed to the cache already"
        );
        assert_eq!(
            kind(reserve.free(64 * 63)),
            ErrorKind::BadFree,
            "not the cache's"
        );
        assert_eq!(reserve.available(), 2);
        cache.check().unwrap();
        drop(reserve);
        assert_eq!(cache.stats().in_use, 0);
        cache.check().unwrap();
    }
}
