//! What the arena asks of the layers above it, declared here so that the
//! arena imports nothing from them: where an object cache's slabs come from
//! ([`Backing`]), and the quantum caches in front of the arena
//! ([`QuantumFront`]), which answer a free they do not hold with a typed
//! [`FreeError`].

use crate::error::{Error, Result};

/// Where a cache's slabs come from: an arena (the slab layer makes every
/// arena one), or the arena a set of quantum caches fronts, which marks
/// their slabs apart.
pub(crate) trait Backing {
    /// A slab of `size` integers aligned to `align`.
    fn slab_alloc(&self, size: u64, align: u64) -> Result<u64>;
    /// Gives a slab back.
    fn slab_free(&self, base: u64, size: u64, align: u64);
}

/// Why a cache did not take an object back: `NotOurs` lets a quantum cache
/// hand the free to its arena instead.
pub(crate) enum FreeError {
    /// The address is in none of the cache's slabs.
    NotOurs(Error),
    /// The address is in a slab of the cache, and the free is wrong.
    Refused(Error),
}

impl FreeError {
    /// The error the caller sees, whichever it was.
    pub(crate) fn error(self) -> Error {
        match self {
            FreeError::NotOurs(e) | FreeError::Refused(e) => e,
        }
    }
}

/// The quantum caches in front of an arena, as the arena sees them: "give
/// me an object of n quanta, take this one back", and what `reap`,
/// `check` and `destroy` need of them.
///
/// # Safety
/// The quantum cache layer's `QuantumCaches` is the only implementor: it
/// hands itself to an arena as its front and reads the front back as
/// itself.
pub(crate) unsafe trait QuantumFront: Sync {
    /// The quantum the caches were made for.
    fn quantum(&self) -> u64;

    /// Marks the caches as serving one arena; false if they already do.
    fn claim(&self) -> bool;

    /// Objects users hold across all the caches.
    fn in_use(&self) -> u64;

    /// An object of `size` integers (a multiple of the quantum) from the
    /// cache for that size, its slabs from `slabs`; `None` when no cache
    /// serves the size.
    fn alloc(&self, size: u64, slabs: &dyn Backing) -> Option<Result<u64>>;

    /// Takes back the object at `addr` of `size` integers (a multiple of
    /// the quantum); `None` when no cache serves the size.
    fn free(&self, addr: u64, size: u64) -> Option<core::result::Result<(), FreeError>>;

    /// Returns every cache's magazines and empty slabs to `slabs`; the
    /// last error, if any cache failed.
    fn purge(&self, slabs: &dyn Backing) -> Result<()>;

    /// Checks every cache's invariants; the first broken one.
    fn check(&self) -> Result<()>;
}
