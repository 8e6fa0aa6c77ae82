//! The host's [`CpuLocal`]: each thread claims a CPU slot of its own.
//!
//! A host has no way to keep two threads off one CPU, so a thread *is* the
//! CPU: the first time a thread enters a [`ThreadCpus`], it claims a free
//! slot index with one compare-and-swap and keeps it in a thread-local
//! for the rest of its life; every later entry reads that thread-local and
//! sets a thread-local "in use" flag, with no atomic operation at all. The
//! thread lets the slot go when it exits (a thread-local destructor; a
//! thread whose thread-locals are being destroyed takes the locked path).
//! Threads that find every slot claimed take the locked path for good.
//!
//! ## Why it is sound
//!
//! - One holder per index: an index is claimed by a successful
//!   compare-and-swap of its flag from free to claimed, and the flag goes
//!   back to free only when its claimer lets go, so at most one thread owns
//!   it. That thread holds the CPU between [`CpuLocal::enter`] and
//!   [`CpuLocal::leave`], and refuses a nested `enter` (a hook of the cache
//!   that calls it again) by the in-use flag. Any other thread can hold the
//!   index only by [`CpuLocal::enter_idle`], the same compare-and-swap,
//!   which fails while the owner has it.
//! - Holds in order: the claim is an acquiring compare-and-swap and the
//!   let-go a releasing store, so everything one holder wrote into a slot
//!   happens before the next holder (a later thread, or a reaper that
//!   drains an abandoned slot) reads it. Holds by one thread are ordered by
//!   the thread's own program order.
//! - Nothing waits: a claim tries each index once.
//!
//! A reaper that finds a slot claimed posts a request instead (see
//! [`crate::ObjectCache::reap`]); the owner answers it on its next slow
//! path, and once it exits the slot is free for the reaper to drain.
//! `vmem-loom` model-checks this protocol.

use core::cell::Cell;

use crate::cpu::{CpuId, CpuLocal, MAX_CPUS};
use crate::sync::atomic::{AtomicBool, Ordering};

/// No slot: every slot was claimed when this thread asked.
const NO_SLOT: usize = usize::MAX;

/// The host's CPU slots: a thread claims one and holds it until it exits.
/// A thread claims a slot of one `ThreadCpus` at a time; with another one
/// it takes the locked path. Made only as a `&'static` (a claim outlives
/// any scope: it is let go when the thread exits).
pub struct ThreadCpus {
    claimed: [AtomicBool; MAX_CPUS],
}

/// What this thread holds.
#[derive(Clone, Copy)]
struct Claim {
    platform: *const ThreadCpus,
    /// The slot index, or [`NO_SLOT`].
    index: usize,
    /// Whether a hold from `enter` is live.
    busy: bool,
}

impl Claim {
    /// Lets the slot go: the releasing store that the next claim's
    /// compare-and-swap acquires.
    fn let_go(self) {
        if self.index < MAX_CPUS {
            // SAFETY: a claim names a `&'static ThreadCpus`.
            let platform = unsafe { &*self.platform };
            platform.claimed[self.index].store(false, Ordering::Release);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's claim, in a thread-local with no destructor, so
    /// reading it costs one load relative to the thread pointer and no
    /// state check.
    static CLAIM: Cell<Option<Claim>> = const { Cell::new(None) };
    /// Touched once, when the thread claims: its destructor lets go.
    static LET_GO: LetGo = const { LetGo };
}

/// Lets go of this thread's slot when the thread exits.
#[cfg(not(loom))]
struct LetGo;

#[cfg(not(loom))]
impl Drop for LetGo {
    fn drop(&mut self) {
        if let Ok(Some(claim)) = CLAIM.try_with(Cell::take) {
            claim.let_go();
        }
    }
}

/// Calls `f` with this thread's claim; `None` when the thread's locals are
/// being destroyed.
#[cfg(not(loom))]
#[inline(always)]
fn with_claim<R>(f: impl FnOnce(&Cell<Option<Claim>>) -> R) -> Option<R> {
    CLAIM.try_with(f).ok()
}

/// Registers the destructor that lets this thread's claim go; false when
/// the thread's locals are being destroyed (it must claim nothing then).
#[cfg(not(loom))]
fn will_let_go() -> bool {
    LET_GO.try_with(|_| ()).is_ok()
}

// `loom` runs no destructor of one thread-local that reads another, so
// under it the claim and its destructor are one thread-local.
#[cfg(loom)]
struct Held(Cell<Option<Claim>>);

#[cfg(loom)]
impl Drop for Held {
    fn drop(&mut self) {
        if let Some(claim) = self.0.take() {
            claim.let_go();
        }
    }
}

#[cfg(loom)]
loom::thread_local! {
    static HELD: Held = Held(Cell::new(None));
}

#[cfg(loom)]
fn with_claim<R>(f: impl FnOnce(&Cell<Option<Claim>>) -> R) -> Option<R> {
    HELD.try_with(|held| f(&held.0)).ok()
}

#[cfg(loom)]
fn will_let_go() -> bool {
    true
}

impl ThreadCpus {
    fn new() -> Self {
        ThreadCpus {
            claimed: core::array::from_fn(|_| AtomicBool::new(false)),
        }
    }

    /// A new set of slots, for good (its claims outlive any scope).
    pub fn leak() -> &'static ThreadCpus {
        std::boxed::Box::leak(std::boxed::Box::new(ThreadCpus::new()))
    }

    /// The process's set of slots.
    #[cfg(not(loom))]
    pub fn global() -> &'static ThreadCpus {
        static GLOBAL: std::sync::OnceLock<&'static ThreadCpus> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(ThreadCpus::leak)
    }

    /// Lets go of this thread's slot now, as its exit would (a thread that
    /// holds its CPU, or holds a slot of another `ThreadCpus`, keeps it).
    /// Its held magazines stay in the slot, for the next thread that
    /// claims it or a reap; its next entry claims a slot again.
    pub fn let_go(&self) {
        with_claim(|c| {
            if let Some(claim) = c.get()
                && core::ptr::eq(claim.platform, self)
                && !claim.busy
            {
                c.set(None);
                claim.let_go();
            }
        });
    }

    /// How many slots threads hold now.
    pub fn claimed(&self) -> usize {
        self.claimed
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count()
    }

    /// Claims a free slot for this thread, with the destructor that lets it
    /// go registered first.
    #[cold]
    fn claim(&self) -> usize {
        if !will_let_go() {
            return NO_SLOT;
        }
        self.claimed
            .iter()
            .position(|c| {
                c.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .unwrap_or(NO_SLOT)
    }
}

impl core::fmt::Debug for ThreadCpus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ThreadCpus")
            .field("claimed", &self.claimed())
            .finish()
    }
}

// SAFETY: see the module's soundness argument: an index has one claimer
// (compare-and-swap), the claimer's holds exclude each other by its in-use
// flag, `enter_idle` is the same compare-and-swap, claims acquire and
// let-gos release, and nothing waits. `ThreadCpus` has a nonzero size and
// is made only as a `&'static`, so no other platform shares its address.
unsafe impl CpuLocal for ThreadCpus {
    #[inline(always)]
    fn enter(&self) -> Option<usize> {
        with_claim(|c| {
            let claim = match c.get() {
                Some(claim) if core::ptr::eq(claim.platform, self) => claim,
                Some(_) => return None,
                None => Claim {
                    platform: self,
                    index: self.claim(),
                    busy: false,
                },
            };
            if claim.busy || claim.index >= MAX_CPUS {
                c.set(Some(claim));
                return None;
            }
            c.set(Some(Claim {
                busy: true,
                ..claim
            }));
            Some(claim.index)
        })
        .flatten()
    }

    #[inline(always)]
    fn leave(&self, _index: usize) {
        with_claim(|c| {
            if let Some(claim) = c.get() {
                c.set(Some(Claim {
                    busy: false,
                    ..claim
                }));
            }
        });
    }

    fn enter_idle(&self, index: usize) -> bool {
        self.claimed.get(index).is_some_and(|c| {
            c.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })
    }

    fn leave_idle(&self, index: usize) {
        if let Some(c) = self.claimed.get(index) {
            c.store(false, Ordering::Release);
        }
    }
}

impl CpuId for ThreadCpus {
    /// This thread's slot index; a thread that holds none (it has not
    /// entered, or found every slot claimed) is CPU `MAX_CPUS`, whose
    /// locked magazines it shares with slot 0's.
    fn current(&self) -> usize {
        with_claim(|c| match c.get() {
            Some(claim) if core::ptr::eq(claim.platform, self) => claim.index.min(MAX_CPUS),
            _ => MAX_CPUS,
        })
        .unwrap_or(MAX_CPUS)
    }
}
