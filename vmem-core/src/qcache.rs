//! Quantum caches: object caches in front of an arena for the small sizes
//! most of its allocations have (1 to 16 quanta), so those take the
//! magazine fast path and never fragment the arena with tiny segments.
//!
//! Their slabs are `max(2^highbit(3 * qcache_max), 64)` integers, as in
//! the reference, and they never touch the integers. They verify frees, so
//! the arena's `free` keeps its `BadFree` answers. `xalloc` and `xfree`
//! bypass them; next-fit allocations too.

use crate::sync::atomic::{AtomicBool, Ordering};

use arrayvec::ArrayVec;
use lock_api::RawMutex;

use crate::arena::{Arena, ArenaConfig, Backing, FreeError, QuantumFront};
use crate::cache::{CacheConfig, CacheCore, CacheStats, DEFAULT_MAGAZINE};
use crate::constraint::round_up;
use crate::cpu::CpuId;
use crate::error::{Error, ErrorKind, Result};
use crate::meta::MetaSource;

/// Most quanta a quantum cache serves.
pub const QCACHE_MAX_QUANTA: u64 = 16;

/// Storage for one arena's quantum caches, made by its owner (a static in a
/// kernel, a box on a host) and handed to the arena with
/// [`crate::ArenaConfig::qcache`].
pub struct QuantumCaches<'a> {
    quantum: u64,
    max: u64,
    caches: ArrayVec<CacheCore<'a>, { QCACHE_MAX_QUANTA as usize }>,
    claimed: AtomicBool,
}

impl<'a> QuantumCaches<'a> {
    /// Caches for every multiple of `quantum` up to `qcache_max` (rounded
    /// up to the quantum, at most 16 quanta), their records and magazines
    /// from `meta`.
    pub fn new(
        quantum: u64,
        qcache_max: u64,
        meta: &'a dyn MetaSource,
        cpu: &'a dyn CpuId,
    ) -> Result<Self> {
        if !quantum.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "quantum is not a power of two",
            ));
        }
        if qcache_max == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "qcache_max of zero"));
        }
        let max = round_up(qcache_max, quantum)?;
        if max / quantum > QCACHE_MAX_QUANTA {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "qcache_max is above 16 quanta",
            ));
        }
        let slab_size = CacheCore::qcache_slab_size(max, quantum).ok_or(Error::new(
            ErrorKind::Overflow,
            "quantum-cache slabs would pass 2^64",
        ))?;
        let mut caches = ArrayVec::new();
        for n in 1..=max / quantum {
            let config = CacheConfig::new("qcache", n * quantum, meta, cpu)
                .align(quantum)
                .magazine(DEFAULT_MAGAZINE)
                .debug(true);
            caches.push(CacheCore::new(&config, quantum, Some(slab_size))?);
        }
        Ok(QuantumCaches {
            quantum,
            max,
            caches,
            claimed: AtomicBool::new(false),
        })
    }

    /// The largest size the caches serve.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The quantum the caches were made for.
    pub fn quantum(&self) -> u64 {
        self.quantum
    }

    /// Object size and counters of each cache, smallest first.
    pub fn stats(&self) -> impl Iterator<Item = (u64, CacheStats)> + '_ {
        self.caches.iter().map(|c| (c.size(), c.stats()))
    }

    /// The cache for `size` (already rounded to the quantum), if one serves it.
    fn cache_for(&self, size: u64) -> Option<&CacheCore<'a>> {
        if size == 0 || size > self.max {
            return None;
        }
        self.caches
            .get(usize::try_from((size / self.quantum).checked_sub(1)?).ok()?)
    }
}

// SAFETY: `QuantumCaches` is the one implementor, and only `ArenaConfig::qcache`
// below hands an arena its front, as a `&QuantumCaches`.
unsafe impl QuantumFront for QuantumCaches<'_> {
    fn quantum(&self) -> u64 {
        self.quantum
    }

    fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    fn in_use(&self) -> u64 {
        self.caches.iter().map(|c| c.stats().in_use).sum()
    }

    fn alloc(&self, size: u64, slabs: &dyn Backing) -> Option<Result<u64>> {
        Some(self.cache_for(size)?.alloc(slabs))
    }

    fn free(&self, addr: u64, size: u64) -> Option<core::result::Result<(), FreeError>> {
        Some(self.cache_for(size)?.free(addr))
    }

    fn purge(&self, slabs: &dyn Backing) -> Result<()> {
        let mut result = Ok(());
        for cache in &self.caches {
            if let Err(e) = cache.purge(slabs) {
                result = Err(e);
            }
        }
        result
    }

    fn check(&self) -> Result<()> {
        for cache in &self.caches {
            cache.check()?;
        }
        Ok(())
    }
}

impl<'s> ArenaConfig<'s> {
    /// Serves `alloc`/`free` of sizes up to `caches.max()` through these
    /// quantum caches (made for this arena's quantum, serving no other
    /// arena).
    pub const fn qcache(mut self, caches: &'s QuantumCaches<'s>) -> Self {
        self.qcache = Some(caches);
        self
    }
}

impl<'s, R: RawMutex> Arena<'s, R> {
    /// The arena's quantum caches, if it has them.
    pub fn qcaches(&self) -> Option<&'s QuantumCaches<'s>> {
        self.quantum_front().map(|front| {
            let front: *const dyn QuantumFront = front;
            // SAFETY: `QuantumCaches` is the only implementor of the unsafe
            // trait `QuantumFront`, so the front `ArenaConfig::qcache` handed
            // the arena is the `&'s QuantumCaches<'s>` it was given.
            unsafe { &*front.cast::<QuantumCaches<'s>>() }
        })
    }
}

impl Drop for QuantumCaches<'_> {
    /// Gives the caches' records and magazines back to their meta source
    /// (the arena, gone by now, reaped their slabs when it was dropped).
    fn drop(&mut self) {
        for cache in &mut self.caches {
            cache.release_meta();
        }
    }
}

impl core::fmt::Debug for QuantumCaches<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QuantumCaches")
            .field("quantum", &self.quantum)
            .field("max", &self.max)
            .finish()
    }
}
