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
use crate::cache::{CacheConfig, CacheCore, CacheStats, CpuStats, DEFAULT_MAGAZINE};
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

    /// The counters of CPU slot `cpu` summed over every cache, as
    /// [`crate::ObjectCache::cpu_stats`] gives them for one.
    pub fn cpu_stats(&self, cpu: usize) -> Result<CpuStats> {
        if cpu >= crate::cpu::MAX_CPUS {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "CPU index at or above MAX_CPUS",
            ));
        }
        let mut sum = CpuStats::default();
        for c in self.caches.iter() {
            sum += c.cpu_stats(cpu)?;
        }
        Ok(sum)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arena, ArenaConfig, FixedCpu, HeapMeta, Policy, SegmentKind};

    const Q: u64 = 4096;

    fn kind<T>(r: Result<T>) -> ErrorKind {
        match r {
            Ok(_) => panic!("expected a refusal"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn each_multiple_of_the_quantum_up_to_the_max_has_its_own_cache() {
        let cpu = FixedCpu::new(0);
        let qc = QuantumCaches::new(Q, QCACHE_MAX_QUANTA * Q, &HeapMeta, &cpu).unwrap();
        assert_eq!((qc.max(), qc.quantum(), qc.caches.len()), (16 * Q, Q, 16));
        for n in 1..=QCACHE_MAX_QUANTA {
            assert_eq!(
                qc.cache_for(n * Q).map(CacheCore::size),
                Some(n * Q),
                "{n} quanta"
            );
        }
        for beyond in [0, (QCACHE_MAX_QUANTA + 1) * Q, !(Q - 1)] {
            assert!(qc.cache_for(beyond).is_none(), "{beyond:#x} is the arena's");
        }
        let slab = CacheCore::qcache_slab_size(16 * Q, Q).unwrap();
        for (size, stats) in qc.stats() {
            assert_eq!(
                (stats.chunk, stats.slab_size),
                (size, slab),
                "no-touch, reference slabs"
            );
        }
        assert!(qc.caches.iter().all(|c| c.verifies() && !c.memory_mode()));
        // A maximum between multiples rounds up to the quantum.
        let qc = QuantumCaches::new(Q, Q + 1, &HeapMeta, &cpu).unwrap();
        assert_eq!((qc.max(), qc.caches.len()), (2 * Q, 2));
        assert!(qc.cache_for(3 * Q).is_none());
        let qc = QuantumCaches::new(1, 16, &HeapMeta, &cpu).unwrap();
        assert_eq!(qc.cache_for(16).map(CacheCore::size), Some(16));
    }

    #[test]
    fn a_bad_quantum_or_maximum_is_refused() {
        let cpu = FixedCpu::new(0);
        let new = |quantum, max| QuantumCaches::new(quantum, max, &HeapMeta, &cpu);
        assert_eq!(
            kind(new(3 * Q, Q)),
            ErrorKind::BadConstraint,
            "quantum not a power of two"
        );
        assert_eq!(kind(new(0, Q)), ErrorKind::BadConstraint);
        assert_eq!(kind(new(Q, 0)), ErrorKind::ZeroSize);
        assert_eq!(
            kind(new(Q, 16 * Q + 1)),
            ErrorKind::BadConstraint,
            "17 quanta after rounding"
        );
        assert_eq!(
            kind(new(Q, u64::MAX)),
            ErrorKind::Overflow,
            "rounding passes 2^64"
        );
        assert_eq!(
            kind(new(1 << 62, 1 << 62)),
            ErrorKind::Overflow,
            "slabs pass 2^64"
        );
    }

    #[test]
    fn storage_is_claimed_by_one_arena_only() {
        let cpu = FixedCpu::new(0);
        let qc = QuantumCaches::new(Q, Q, &HeapMeta, &cpu).unwrap();
        assert!(qc.claim());
        assert!(!qc.claim());
    }

    #[test]
    fn sizes_beyond_the_max_next_fit_and_xalloc_go_to_the_arena() {
        let cpu = FixedCpu::new(0);
        let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &cpu).unwrap();
        let arena: Arena = Arena::create(
            ArenaConfig::new("a", Q)
                .span(0, 1 << 24)
                .meta(&HeapMeta)
                .qcache(&qc),
        )
        .unwrap();
        let alloc_segments = |arena: &Arena| {
            let mut sizes = Vec::new();
            arena.walk(|s| {
                if let SegmentKind::Alloc = s.kind {
                    sizes.push(s.size)
                }
            });
            sizes.sort_unstable();
            sizes
        };
        let small = arena.alloc(4 * Q - 1, Policy::InstantFit).unwrap();
        assert_eq!(qc.in_use(), 1);
        let slab = CacheCore::qcache_slab_size(4 * Q, Q).unwrap();
        assert_eq!(
            alloc_segments(&arena),
            vec![slab],
            "one slab, no segment of its own"
        );
        let big = arena.alloc(4 * Q + 1, Policy::InstantFit).unwrap();
        let next = arena.alloc(Q, Policy::NextFit).unwrap();
        let x = arena
            .xalloc(Q, &crate::Constraints::aligned(Q), Policy::BestFit)
            .unwrap();
        assert_eq!(qc.in_use(), 1, "none of these went to a cache");
        assert_eq!(alloc_segments(&arena), vec![Q, Q, 5 * Q, slab]);
        arena.free(next, Q).unwrap();
        arena.xfree(x, Q).unwrap();
        arena.free(big, 4 * Q + 1).unwrap();
        arena.free(small, 4 * Q).unwrap();
        assert_eq!(qc.in_use(), 0);
        arena.check().unwrap();
        arena.reap().unwrap();
        assert_eq!(alloc_segments(&arena), Vec::<u64>::new());
    }
}
