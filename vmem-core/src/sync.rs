//! The locks and atomics the caches and arenas share between CPUs, in one
//! place so a model checker can stand in for them.
//!
//! A normal build uses `spin`'s mutex and `core`'s atomics. Built with
//! `--cfg loom` (see `vmem-loom/tests/loom.rs`), the same names are
//! `loom`'s atomics and a lock made of them ([`LoomLock`]), so `loom` sees
//! every lock acquisition and explores the orders in which CPUs can take
//! them.
//!
//! Four things stay as they are under `loom`: the static tag pool,
//! [`crate::HeapMeta`]'s page pool and the count of caches made (which
//! seeds each cache's salt) are statics, which `loom` objects cannot be
//! (each belongs to one run of a model), and [`crate::FixedCpu`] is a
//! `const` CPU index, not shared state. The count is one relaxed
//! `fetch_add` that orders nothing. The two pools never run `loom` code
//! with their lock held, so to `loom` each of those critical sections is a
//! single step and their locks are never seen taken.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic;
#[cfg(not(loom))]
pub(crate) use spin::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic;

/// A mutex over the lock `loom` can see.
#[cfg(loom)]
pub(crate) type Mutex<T> = lock_api::Mutex<LoomLock, T>;

/// The guard of a [`Mutex`].
#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = lock_api::MutexGuard<'a, LoomLock, T>;

/// A spin lock on `loom` atomics, for model checking: the lock of every
/// cache's CPU slots, depot and slab layer under `--cfg loom`, and the `R`
/// that instantiates [`crate::Arena`] and [`crate::ObjectCache`] in the
/// `loom` models.
///
/// A waiter yields to `loom` after each failed attempt, so the model runs
/// the holder instead of spinning; a deadlock shows up as a model that never
/// ends and exceeds `loom`'s branch limit. The flag is created on first use
/// (`lock_api` wants a `const` initial lock, and `loom` atomics are made at
/// run time inside a model), so a lock must be used only inside the model
/// run that first used it, and first used before threads share it: the
/// `OnceLock` that makes it is invisible to `loom`, which would report two
/// threads' first uses as a race. The checkers ([`crate::Arena::check`],
/// [`crate::ObjectCache::check`]) take every lock of what they check.
#[cfg(loom)]
pub struct LoomLock {
    held: std::sync::OnceLock<atomic::AtomicBool>,
}

#[cfg(loom)]
impl LoomLock {
    fn held(&self) -> &atomic::AtomicBool {
        self.held.get_or_init(|| atomic::AtomicBool::new(false))
    }
}

// SAFETY: the flag is set by an acquiring compare-and-swap that only one
// caller can win, and cleared with release ordering by the holder alone.
#[cfg(loom)]
unsafe impl lock_api::RawMutex for LoomLock {
    #[allow(
        clippy::declare_interior_mutable_const,
        reason = "lock_api copies INIT into each new lock"
    )]
    const INIT: Self = LoomLock {
        held: std::sync::OnceLock::new(),
    };

    type GuardMarker = lock_api::GuardSend;

    fn lock(&self) {
        while !self.try_lock() {
            loom::thread::yield_now();
        }
    }

    fn try_lock(&self) -> bool {
        self.held()
            .compare_exchange(
                false,
                true,
                atomic::Ordering::Acquire,
                atomic::Ordering::Relaxed,
            )
            .is_ok()
    }

    unsafe fn unlock(&self) {
        self.held().store(false, atomic::Ordering::Release);
    }
}

/// A cell one context at a time may change, with no lock: the part of a
/// CPU slot the holder of that CPU ([`crate::CpuLocal`]) alone touches.
/// Under `loom` it is `loom`'s cell, which fails a model in which two
/// threads reach it without one happening before the other.
#[cfg(not(loom))]
pub(crate) struct OwnedCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> OwnedCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        OwnedCell(core::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// As the normal build's: `loom`'s cell.
#[cfg(loom)]
pub(crate) struct OwnedCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T> OwnedCell<T> {
    pub(crate) fn new(value: T) -> Self {
        OwnedCell(loom::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a pointer to the value.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }
}
