//! Which CPU is running: the one thing the magazine layer asks of the
//! platform.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Per-CPU magazine slots in every cache; a CPU index at or above this
/// shares a slot's locked magazines with `index % MAX_CPUS` (correct, only
/// less scalable).
pub const MAX_CPUS: usize = 32;

/// CPUs whose slots in every cache have a held part: the fast path
/// ([`CpuLocal`]) serves CPU indices below this, and a held CPU at or above
/// it takes the locked path. Every slot has one (each slot takes 128
/// bytes, so a cache's slots take 4 KiB).
pub const HELD_CPUS: usize = MAX_CPUS;

/// The current CPU, as the platform knows it: a thread index on a host,
/// the `cpu N` command in scenarios, per-CPU data in a kernel.
pub trait CpuId: Sync {
    /// The index of the CPU the caller runs on.
    fn current(&self) -> usize;
}

/// A CPU index set by hand, shared by everything that reads it: the
/// scenario interpreter's `cpu N`, or a single-CPU platform.
#[derive(Debug, Default)]
pub struct FixedCpu(AtomicUsize);

impl FixedCpu {
    /// CPU `index`.
    pub const fn new(index: usize) -> Self {
        FixedCpu(AtomicUsize::new(index))
    }

    /// Makes CPU `index` the current one.
    pub fn set(&self, index: usize) {
        self.0.store(index, Ordering::Relaxed);
    }
}

impl CpuId for FixedCpu {
    fn current(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// CPU 0, always.
pub static CPU0: FixedCpu = FixedCpu::new(0);

/// A CPU that one context may hold alone: the contract of the magazine
/// layer's fast path ([`crate::ObjectCache::alloc_local`]).
///
/// A context *holds* CPU `i` from an [`enter`](CpuLocal::enter) that
/// returned `Some(i)` until its [`leave`](CpuLocal::leave)`(i)`, or from an
/// [`enter_idle`](CpuLocal::enter_idle)`(i)` that returned `true` until its
/// [`leave_idle`](CpuLocal::leave_idle)`(i)`. [`CpuGuard`] makes those
/// pairs; the caches take no other way in. While a context holds CPU `i`,
/// each cache configured with this platform ([`crate::CacheConfig::local`])
/// lets that context alone touch the part of its slot `i` the fast path
/// uses, with plain loads and stores: no lock, no atomic read-modify-write.
///
/// A kernel implements it with a per-CPU flag that refuses a second
/// `enter` while a first is held (an interrupt handler that allocates
/// falls back, it does not nest), with interrupts disabled under the hold
/// unless no interrupt handler uses the caches; `enter_idle` of another
/// CPU answers `false` (a running CPU is never idle), and
/// [`notify`](CpuLocal::notify) makes that CPU, at a point where it holds
/// nothing, hold itself and call [`crate::ObjectCache::honour`] (the
/// unikernel posts a cross-call and wakes the CPU with an IPI).
/// The host implementation is `ThreadCpus` (feature `std`).
///
/// # Safety
/// An implementation promises, for every index `i`:
/// - at most one context holds `i` at a time, over both ways in (so a
///   context that holds `i` gets `None` from a nested `enter`);
/// - a hold ends only in the context that took it (a guard is not `Send`),
///   and the end of one hold *happens before* the start of the next (a
///   release store read by an acquire load, or the same CPU with
///   interrupts masked), so the next holder sees every write of the last;
/// - `enter`, `enter_idle` and `notify` never wait for another context
///   (a cache calls them with its locks held).
///
/// An index at or above [`HELD_CPUS`] is allowed and takes the locked path.
pub unsafe trait CpuLocal: Sync {
    /// Holds the CPU this context runs on and returns its index; `None`
    /// when this context cannot hold one now (it holds it already, or a
    /// host thread found every slot claimed).
    fn enter(&self) -> Option<usize>;

    /// Ends the hold `enter` returned `index` for.
    fn leave(&self, index: usize);

    /// Holds CPU `index` for a context that does not run on it, when no
    /// context holds it and none can until the hold ends (a host slot no
    /// thread has claimed); `false` otherwise.
    fn enter_idle(&self, index: usize) -> bool;

    /// Ends a hold `enter_idle(index)` took.
    fn leave_idle(&self, index: usize);

    /// A cache posted a request on CPU `index`'s slot (a reap or purge
    /// that found it held): the platform may make its owner honour it
    /// soon. By default nothing is sent, and the owner honours it on its
    /// next slow path.
    fn notify(&self, index: usize) {
        let _ = index;
    }
}

/// The platform with no fast path: no context ever holds a CPU, so every
/// `*_local` call through it is the locked path. The default platform of a
/// [`crate::GlobalHeap`] made with [`crate::GlobalHeap::new`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCpuLocal;

// SAFETY: no context ever holds an index, so every promise holds vacuously;
// nothing here waits.
unsafe impl CpuLocal for NoCpuLocal {
    #[inline(always)]
    fn enter(&self) -> Option<usize> {
        None
    }

    fn leave(&self, _index: usize) {}

    fn enter_idle(&self, _index: usize) -> bool {
        false
    }

    fn leave_idle(&self, _index: usize) {}
}

/// A hold on one CPU of a [`CpuLocal`] platform, ended when the guard
/// drops. Not `Send`: a hold ends in the context that took it.
pub struct CpuGuard<'a, L: CpuLocal + ?Sized> {
    local: &'a L,
    index: usize,
    idle: bool,
    _here: core::marker::PhantomData<*mut ()>,
}

impl<'a, L: CpuLocal + ?Sized> CpuGuard<'a, L> {
    /// Holds the CPU this context runs on, if it can.
    #[inline(always)]
    pub fn enter(local: &'a L) -> Option<Self> {
        let index = local.enter()?;
        Some(CpuGuard {
            local,
            index,
            idle: false,
            _here: core::marker::PhantomData,
        })
    }

    /// Holds CPU `index` from outside it, if no context holds it.
    pub fn enter_idle(local: &'a L, index: usize) -> Option<Self> {
        // `then`, not `then_some`: a guard made and dropped on refusal
        // would end a hold it never took.
        local.enter_idle(index).then(|| CpuGuard {
            local,
            index,
            idle: true,
            _here: core::marker::PhantomData,
        })
    }

    /// The CPU held.
    #[inline(always)]
    pub fn index(&self) -> usize {
        self.index
    }

    /// The platform the CPU belongs to.
    pub fn platform(&self) -> &'a L {
        self.local
    }
}

impl<L: CpuLocal + ?Sized> Drop for CpuGuard<'_, L> {
    #[inline(always)]
    fn drop(&mut self) {
        if self.idle {
            self.local.leave_idle(self.index);
        } else {
            self.local.leave(self.index);
        }
    }
}

impl<L: CpuLocal + ?Sized> core::fmt::Debug for CpuGuard<'_, L> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuGuard")
            .field("index", &self.index)
            .field("idle", &self.idle)
            .finish()
    }
}
