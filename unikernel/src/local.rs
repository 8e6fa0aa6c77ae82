//! vmem-core's fast path on this kernel: the `CpuLocal` platform
//! (`LOCAL`), and the cross-call with which a reap on one CPU asks another
//! CPU to give back the magazines it holds.
//!
//! A context holds the CPU it runs on while that CPU's held flag is set
//! (`cpu::hold`); a second hold on the same CPU (an interrupt handler's)
//! is refused and takes the locked path. Interrupts stay enabled while a
//! CPU is held, so a CPU that waits under the hold for a cache lock keeps
//! answering shootdown IPIs, and a CPU that holds that lock while it waits
//! for a shootdown round (a reap releasing slabs to `kmem_default`) is
//! answered, not deadlocked. No interrupt handler here uses a cache (the
//! shootdown, wake and spurious handlers take no lock; an exception fails
//! the run), and no context migrates: every hold on CPU `i` is by code on
//! CPU `i`, in program order.
//!
//! A CPU is never held from outside (`enter_idle` is false), so a reap
//! that finds another CPU's held magazines posts a request on the cache's
//! slot, and `notify` posts a cross-call to that CPU: a count in its
//! `PerCpu` and a wake-up IPI. The IPI handler does no work itself (the
//! interrupted context may hold the very locks a drain takes); the CPU
//! answers at its next safe point, where it holds no lock and no CPU: its
//! idle loop (which the IPI wakes from `hlt`) or the end of a job
//! (`smp::run_on_all`). To answer it holds itself and calls `honour` on
//! every cache registered here. A holder busy in a cache also answers on
//! its next slow path (vmem-core's own rule). `settle` waits until every
//! CPU has answered what was posted to it.

use core::sync::atomic::Ordering;

use vmem_core::{CpuGuard, CpuLocal, ObjectCache, SizeClasses};

use crate::apic;
use crate::cpu::{self, WAKE_VECTOR, rdtsc};

/// The platform vmem-core's caches are configured with
/// (`CacheConfig::local`) and called through (`alloc_local`). Not
/// zero-sized: vmem-core tells platforms apart by address.
pub struct KernelLocal {
    _by_address: u8,
}

/// The kernel's one `CpuLocal` platform.
pub static LOCAL: KernelLocal = KernelLocal { _by_address: 0 };

// SAFETY: a hold of CPU `i` starts and ends on CPU `i` (`cpu::hold` gives
// the running CPU's index from its GS block and nothing migrates), and
// `hold` refuses while the flag is set, so one context holds `i` at a
// time; a nested (interrupt) hold runs to its end before the interrupted
// code goes on, and the compiler fences keep every access of a hold
// between its flag store and its flag clear, so each hold sees the last
// one's writes in program order on that CPU. `notify` waits for no
// context: it counts, and hands the IPI to the local APIC (whose
// delivery it may wait on, a bounded wait on hardware).
unsafe impl CpuLocal for KernelLocal {
    #[inline(always)]
    fn enter(&self) -> Option<usize> {
        cpu::hold()
    }

    #[inline(always)]
    fn leave(&self, _index: usize) {
        cpu::unhold();
    }

    fn enter_idle(&self, _index: usize) -> bool {
        false
    }

    fn leave_idle(&self, _index: usize) {}

    fn notify(&self, index: usize) {
        post(index);
    }
}

/// Something a cross-call answers: caches configured with `LOCAL`.
pub trait Answer: Sync {
    /// Answers the requests posted on the slot of the CPU `guard` holds.
    fn answer(&self, guard: &CpuGuard<'_, KernelLocal>);
}

impl Answer for ObjectCache<'_> {
    fn answer(&self, guard: &CpuGuard<'_, KernelLocal>) {
        self.honour(guard);
    }
}

impl Answer for SizeClasses<'_> {
    fn answer(&self, guard: &CpuGuard<'_, KernelLocal>) {
        self.honour(guard);
    }
}

/// A registered cache, its lifetime erased; `Registration` takes it out
/// (under the write lock, so after every answer that used it) before the
/// cache can go.
#[derive(Clone, Copy)]
struct Entry(*const (dyn Answer + 'static));
// SAFETY: the pointee is `Sync` (`Answer: Sync`) and outlives the entry.
unsafe impl Send for Entry {}
// SAFETY: as above.
unsafe impl Sync for Entry {}

/// How many caches may be registered at once.
const REGISTERED: usize = 8;

static REGISTRY: spin::RwLock<[Option<Entry>; REGISTERED]> = spin::RwLock::new([None; REGISTERED]);

/// A cache's place in the registry, given up when dropped.
pub struct Registration<'a> {
    entry: Entry,
    _cache: core::marker::PhantomData<&'a ()>,
}

/// Registers `cache` for cross-calls until the registration drops; `None`
/// when the registry is full.
pub fn register<'a>(cache: &'a (dyn Answer + 'a)) -> Option<Registration<'a>> {
    let ptr: *const (dyn Answer + 'a) = cache;
    // SAFETY: only the lifetime changes; `Registration<'a>` removes the
    // entry before `'a` ends, under the write lock no answer holds then.
    let ptr: *const (dyn Answer + 'static) = unsafe { core::mem::transmute(ptr) };
    let entry = Entry(ptr);
    let mut registry = REGISTRY.write();
    let free = registry.iter_mut().find(|e| e.is_none())?;
    *free = Some(entry);
    Some(Registration {
        entry,
        _cache: core::marker::PhantomData,
    })
}

/// Registers a cache that lives as long as the kernel.
pub fn register_forever(cache: &'static (dyn Answer + 'static)) -> bool {
    register(cache).map(core::mem::forget).is_some()
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut registry = REGISTRY.write();
        for e in registry.iter_mut() {
            if e.is_some_and(|x| core::ptr::addr_eq(x.0, self.entry.0)) {
                *e = None;
            }
        }
    }
}

/// Posts a cross-call to CPU `index`: counted in its `PerCpu`, and a
/// wake-up IPI when it is another CPU and online.
fn post(index: usize) {
    let Some(target) = cpu::cpu(index) else {
        return;
    };
    target.calls_posted.fetch_add(1, Ordering::AcqRel);
    cpu::this()
        .counters
        .calls_sent
        .fetch_add(1, Ordering::Relaxed);
    if index != cpu::current_index() && cpu::online_mask() & (1 << index) != 0 {
        apic::send_to(target.apic_id.load(Ordering::Relaxed), WAKE_VECTOR);
    }
}

/// Whether cross-calls wait for the running CPU.
pub fn pending() -> bool {
    let me = cpu::this();
    me.calls_posted.load(Ordering::Acquire) != me.calls_answered.load(Ordering::Acquire)
}

/// Answers the cross-calls posted to the running CPU: holds it and
/// honours every registered cache. Call it where the CPU holds no lock
/// and no hold (its idle loop, the end of a job). Returns whether there
/// was something to answer.
pub fn answer() -> bool {
    let me = cpu::this();
    let posted = me.calls_posted.load(Ordering::Acquire);
    if posted == me.calls_answered.load(Ordering::Acquire) {
        return false;
    }
    // A safe point holds no CPU; were it held, its holder answers on its
    // next slow path and this call stays pending.
    let Some(guard) = CpuGuard::enter(&LOCAL) else {
        return false;
    };
    {
        let registry = REGISTRY.read();
        for entry in registry.iter().flatten() {
            // SAFETY: a registered entry's cache lives until its
            // registration drops, which waits for this read lock.
            unsafe { &*entry.0 }.answer(&guard);
        }
    }
    drop(guard);
    me.calls_answered.store(posted, Ordering::Release);
    true
}

/// TSC cycles `settle` waits at most: seconds on any CPU QEMU emulates.
const SETTLE_CYCLES: u64 = 1 << 34;

/// Waits until every CPU online has answered the cross-calls posted to
/// it, answering the running CPU's own; `Err` with the first CPU that did
/// not answer in time.
pub fn settle() -> Result<(), usize> {
    answer();
    let start = rdtsc();
    for index in 0..vmem_core::MAX_CPUS {
        if cpu::online_mask() & (1 << index) == 0 {
            continue;
        }
        let Some(c) = cpu::cpu(index) else {
            continue;
        };
        while c.calls_answered.load(Ordering::Acquire) != c.calls_posted.load(Ordering::Acquire) {
            if rdtsc().wrapping_sub(start) > SETTLE_CYCLES {
                return Err(index);
            }
            core::hint::spin_loop();
        }
    }
    Ok(())
}
