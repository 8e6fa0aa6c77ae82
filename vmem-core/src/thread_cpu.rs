//! The host's [`CpuLocal`]: each thread claims a CPU slot of its own.
//!
//! A host has no way to keep two threads off one CPU, so a thread *is* the
//! CPU: the first time a thread enters a [`ThreadCpus`], it claims a free
//! slot index with one compare-and-swap and keeps it in a thread-local
//! for the rest of its life; every later entry reads that thread-local and
//! sets a thread-local "in use" flag, with no atomic operation at all. The
//! thread lets the slot go when it exits (a thread-local destructor; a
//! thread whose thread-locals are being destroyed takes the locked path).
//! Threads that find every slot claimed take the locked path for good, and
//! so do the threads holding a slot at or above [`crate::HELD_CPUS`] (with
//! a slot of their own: their locked magazines are not shared).
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

/// What this thread holds: three cells, so that entering reads and writes
/// only the words it needs.
struct Claim {
    /// The `ThreadCpus` the slot belongs to (null: none yet).
    platform: Cell<*const ThreadCpus>,
    /// The slot index, or [`NO_SLOT`].
    index: Cell<usize>,
    /// Whether a hold from `enter` is live.
    busy: Cell<bool>,
}

impl Claim {
    const fn none() -> Claim {
        Claim {
            platform: Cell::new(core::ptr::null()),
            index: Cell::new(NO_SLOT),
            busy: Cell::new(false),
        }
    }

    /// Lets the slot go, if any: the releasing store that the next claim's
    /// compare-and-swap acquires. The claim is empty afterwards.
    fn let_go(&self) {
        let (platform, index) = (self.platform.get(), self.index.get());
        self.platform.set(core::ptr::null());
        self.index.set(NO_SLOT);
        if !platform.is_null() && index < MAX_CPUS {
            // SAFETY: a claim names a `&'static ThreadCpus`.
            let platform = unsafe { &*platform };
            platform.claimed[index].store(false, Ordering::Release);
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    /// This thread's claim, in a thread-local with no destructor, so
    /// reading it costs a load relative to the thread pointer and no
    /// state check.
    static CLAIM: Claim = const { Claim::none() };
    /// Touched once, when the thread claims: its destructor lets go.
    static LET_GO: LetGo = const { LetGo };
}

/// Lets go of this thread's slot when the thread exits.
#[cfg(not(loom))]
struct LetGo;

#[cfg(not(loom))]
impl Drop for LetGo {
    fn drop(&mut self) {
        let _ = CLAIM.try_with(Claim::let_go);
    }
}

/// Calls `f` with this thread's claim; `None` when the thread's locals are
/// being destroyed.
#[cfg(not(loom))]
#[inline(always)]
fn with_claim<R>(f: impl FnOnce(&Claim) -> R) -> Option<R> {
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
struct Held(Claim);

#[cfg(loom)]
impl Drop for Held {
    fn drop(&mut self) {
        self.0.let_go();
    }
}

#[cfg(loom)]
loom::thread_local! {
    static HELD: Held = Held(Claim::none());
}

#[cfg(loom)]
fn with_claim<R>(f: impl FnOnce(&Claim) -> R) -> Option<R> {
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
            if core::ptr::eq(c.platform.get(), self) && !c.busy.get() {
                c.let_go();
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

impl ThreadCpus {
    /// `enter` when this thread holds no slot of `self` ready to use: the
    /// first entry claims one; a thread with no slot, a nested entry, or a
    /// thread holding another `ThreadCpus`'s slot gets none.
    #[cold]
    fn enter_first(&self, c: &Claim) -> Option<usize> {
        if !c.platform.get().is_null() {
            return None;
        }
        let index = self.claim();
        c.platform.set(self);
        c.index.set(index);
        (index < MAX_CPUS).then(|| {
            c.busy.set(true);
            index
        })
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
            let index = c.index.get();
            if core::ptr::eq(c.platform.get(), self) && index < MAX_CPUS && !c.busy.get() {
                c.busy.set(true);
                return Some(index);
            }
            self.enter_first(c)
        })
        .flatten()
    }

    #[inline(always)]
    fn leave(&self, _index: usize) {
        with_claim(|c| c.busy.set(false));
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
        with_claim(|c| {
            if core::ptr::eq(c.platform.get(), self) {
                c.index.get().min(MAX_CPUS)
            } else {
                MAX_CPUS
            }
        })
        .unwrap_or(MAX_CPUS)
    }
}
