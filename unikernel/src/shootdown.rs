//! TLB shootdown: one IPI round makes every other CPU online drop its
//! translations of a batch of virtual ranges (page by page, or all of them
//! past `FULL_FLUSH_PAGES`), and returns once each has. `kmem` batches
//! the ranges `kmem_default` releases and holds them back from `kmem_va`
//! until the round is over (see `kmem::retire`).
//!
//! Rounds are one at a time. A CPU waiting for the round lock, or for the
//! others to answer, keeps interrupts enabled, so two CPUs that start
//! rounds at once do not wait for each other forever; every CPU runs with
//! interrupts enabled outside its interrupt handlers. The handler takes
//! no lock.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::tlb;

use crate::apic;
use crate::cpu::{self, SHOOTDOWN_VECTOR, rdtsc};
use crate::layout::PAGE;

/// Ranges one round carries.
pub const ROUND_RANGES: usize = 32;
/// Past this many pages a CPU flushes its whole TLB instead.
const FULL_FLUSH_PAGES: u64 = 128;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// The round under way: its ranges, whether to flush all, and the CPUs
/// that have not answered yet.
static ROUND: spin::Mutex<()> = spin::Mutex::new(());
static RANGES: [[AtomicU64; 2]; ROUND_RANGES] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; ROUND_RANGES];
static RANGE_COUNT: AtomicU64 = AtomicU64::new(0);
static FULL: AtomicBool = AtomicBool::new(false);
static WAITING: AtomicU64 = AtomicU64::new(0);

/// Rounds sent, ranges they carried, and TSC cycles they took.
pub static ROUNDS: AtomicU64 = AtomicU64::new(0);
pub static ROUND_RANGES_SENT: AtomicU64 = AtomicU64::new(0);
pub static ROUND_CYCLES: AtomicU64 = AtomicU64::new(0);

/// Turns shootdown off (boot word `shootdown=off`): released ranges go
/// back at once, other CPUs keep whatever translations they hold.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Whether released ranges must wait for a round: shootdown is on and
/// another CPU is online.
pub fn needed() -> bool {
    ENABLED.load(Ordering::Relaxed) && cpu::online() > 1
}

/// Whether shootdown is on (`shootdown=off` turns it off).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Makes every CPU online drop its translations of `ranges` (base,
/// bytes), at most `ROUND_RANGES` of them, and waits until all have. This
/// CPU too: a batch holds ranges other CPUs unmapped, which this one may
/// have used.
pub fn flush(ranges: &[(u64, u64)]) {
    if ranges.is_empty() {
        return;
    }
    let _round = ROUND.lock();
    let others = cpu::online_mask() & !(1 << cpu::current_index());
    let start = rdtsc();
    let mut pages = 0;
    for (slot, &(base, size)) in RANGES.iter().zip(ranges) {
        slot[0].store(base, Ordering::Relaxed);
        slot[1].store(size, Ordering::Relaxed);
        pages += size / PAGE;
    }
    let count = ranges.len().min(ROUND_RANGES);
    RANGE_COUNT.store(count as u64, Ordering::Relaxed);
    FULL.store(pages > FULL_FLUSH_PAGES, Ordering::Relaxed);
    WAITING.store(others, Ordering::Release);
    if others != 0 {
        apic::send_all_others(SHOOTDOWN_VECTOR);
    }
    flush_local();
    while WAITING.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    cpu::this()
        .counters
        .shootdowns_sent
        .fetch_add(1, Ordering::Relaxed);
    ROUNDS.fetch_add(1, Ordering::Relaxed);
    ROUND_RANGES_SENT.fetch_add(count as u64, Ordering::Relaxed);
    ROUND_CYCLES.fetch_add(rdtsc() - start, Ordering::Relaxed);
}

/// The shootdown IPI's handler: flushes the round's ranges and answers,
/// if this CPU is one the round waits for.
pub fn handle() {
    let me = 1 << cpu::current_index();
    if WAITING.load(Ordering::Acquire) & me == 0 {
        return;
    }
    flush_local();
    cpu::this()
        .counters
        .shootdowns_received
        .fetch_add(1, Ordering::Relaxed);
    WAITING.fetch_and(!me, Ordering::AcqRel);
}

/// Drops this CPU's translations of the round's ranges.
fn flush_local() {
    if FULL.load(Ordering::Relaxed) {
        tlb::flush_all();
    } else {
        let count = RANGE_COUNT.load(Ordering::Relaxed) as usize;
        for slot in RANGES.iter().take(count) {
            let (base, size) = (
                slot[0].load(Ordering::Relaxed),
                slot[1].load(Ordering::Relaxed),
            );
            for page in (base..base + size).step_by(PAGE as usize) {
                tlb::flush(VirtAddr::new(page));
            }
        }
    }
}
