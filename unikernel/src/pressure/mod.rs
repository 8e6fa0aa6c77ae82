//! The `pressure` boot word: every arena driven until it refuses, all of it
//! given back, and the kernel's memory compared with what it was before.
//!
//! A round has six steps; each takes one arena dry, checks that what
//! depends on it refuses cleanly, and gives everything back:
//!
//! - `phys`: frames, largest blocks first (halving from the largest power
//!   of two that is free down to 4 KiB), so 5 GiB is a few dozen
//!   allocations rather than a million; it ends on `NoSpace`. With no
//!   frames left the heap must answer null and `kmem_default` must refuse.
//! - the heap: `Vec<u8>` blocks through the global allocator
//!   (`try_reserve_exact`), largest first down to 8 bytes, until it
//!   refuses; the heap grows by mapping frames a page at a time, so this
//!   empties what `phys` has beyond a ballast (see the note on time). Every
//!   page is written and read back before the free, which catches two
//!   blocks sharing a frame.
//! - `kernel_va`, then `kmem_va` (which imports from `kernel_va`; sizes of
//!   16 pages or less go through its quantum caches, and `xalloc` takes
//!   what the caches' slabs cannot), then `device` and `ids`: ranges with
//!   no memory behind them.
//!
//! After each round every cache and every arena is reaped and the
//! kernel's memory is compared with a snapshot taken (after a reap) before
//! the first: every other arena's segment list and figures, every cache's
//! objects and slabs, the pages backing the heap. A reap gives back what
//! the round's peak took for metadata: an arena packs its boundary tags
//! onto as few meta pages as hold them and frees the rest, a cache frees
//! its record and magazine pages and its slab table, and the paging code
//! frees a page table the moment it empties, and an arena's
//! allocated-segment hash gives its tables back when the arena empties.
//! So `phys` must come back exactly, frame for frame, after every round:
//! a round that keeps a single frame fails. The rounds (`rounds=N` on the command
//! line, default `ROUNDS`) print what is kept after each.
//!
//! Time: TCG runs this at a few microseconds a page, but the first write
//! to each 2 MiB of guest RAM costs the host some 9 ms here (measured), so
//! a step that writes all of a 5 GiB guest would take 25 s. The `phys` step
//! writes only each block's first words; the heap step holds all but
//! `HEAP_ROOM` of `phys` as ballast while the heap grows.

#![allow(
    clippy::result_large_err,
    reason = "failures are found with the heap exhausted, so they are not boxed"
)]

use core::fmt;

use crate::console::Verdict;
use crate::kmem;
use crate::phys::phys;
use crate::println;
use crate::report::Bytes;
use crate::time::Clock;

use snapshot::{CACHES, Kept, compare, kept, reap, snapshot};
use steps::{Totals, round};

type Outcome<T = ()> = Result<T, Failure>;

/// What went wrong, formatted without the heap: it may be exhausted when
/// the failure is found.
#[derive(Clone, Copy)]
pub struct Failure {
    text: [u8; 200],
    len: usize,
}

impl Failure {
    fn new(args: fmt::Arguments<'_>) -> Failure {
        let mut f = Failure {
            text: [0; 200],
            len: 0,
        };
        let _ = fmt::Write::write_fmt(&mut f, args);
        f
    }
}

impl fmt::Write for Failure {
    /// Keeps what fits, cut at a character boundary.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).as_bytes();
            let Some(room) = self.text.get_mut(self.len..self.len + bytes.len()) else {
                break;
            };
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(core::str::from_utf8(&self.text[..self.len]).unwrap_or("?"))
    }
}

macro_rules! failure {
    ($($arg:tt)*) => { $crate::pressure::Failure::new(format_args!($($arg)*)) };
}

// After the macro, which they use.
mod snapshot;
mod steps;

/// The kernel's memory as it was when taken (after a reap), for another
/// test to compare with once it has given everything back.
pub struct Baseline(snapshot::Snapshot);

impl Baseline {
    /// Reaps every cache and arena, and takes the snapshot.
    pub fn take() -> Result<Baseline, Failure> {
        reap()?;
        snapshot().map(Baseline)
    }

    /// Reaps, and compares with the snapshot: every arena but `phys`
    /// segment for segment, every cache's objects and slabs, and `phys`
    /// frame for frame but for metadata pages the arenas and caches say
    /// they keep for reuse (see `Kept::unexplained`; the `pressure` rounds
    /// allow none). Returns the segments compared and what was kept.
    pub fn compare(&self) -> Result<(usize, impl fmt::Display), Failure> {
        reap()?;
        kmem::check_all().map_err(|e| failure!("{e}"))?;
        let (tables, meta) = compare(&self.0)?;
        let now = kept(&self.0, tables, meta);
        if now.unexplained() != 0 {
            return Err(failure!("phys did not come back exactly: {now}"));
        }
        Ok((self.0.arenas.iter().map(|a| a.segments).sum(), now))
    }
}

/// Runs `step`, and says how many milliseconds it took.
fn timed<T>(clock: &Clock, step: impl FnOnce() -> Outcome<T>) -> (Outcome<T>, u64) {
    let start = crate::cpu::rdtsc();
    let outcome = step();
    (outcome, clock.ns(crate::cpu::rdtsc() - start) / 1_000_000)
}

/// Rounds run when the command line does not say (`rounds=N`, at least
/// 2): each must recover exactly, and what is kept (the hash tables) must
/// not grow after the first.
pub const ROUNDS: usize = 2;

fn run_rounds(clock: &Clock, rounds: usize) -> Outcome {
    let mut totals = Totals::default();
    reap()?;
    let start = snapshot()?;
    let segments: usize = start.arenas.iter().skip(1).map(|a| a.segments).sum();
    println!(
        "starting state: phys {} free of {}; {segments} segments in the other 5 arenas, {CACHES} caches (snapshot after a reap); {rounds} rounds",
        Bytes(phys().size().free),
        Bytes(phys().size().total),
    );
    let mut last = Kept::default();
    for n in 1..=rounds {
        println!("round {n}:");
        let (outcome, ms) = timed(clock, || round(clock, &mut totals));
        outcome?;
        reap()?;
        kmem::check_all().map_err(|e| failure!("{e}"))?;
        let (tables, meta) =
            compare(&start).map_err(|e| failure!("after round {n} and a reap: {e}"))?;
        let now = kept(&start, tables, meta);
        println!(
            "  round {n}: {ms} ms {}; after a reap all as at the start but what is kept for reuse: {now}",
            clock.mark()
        );
        if now.frames() != 0 {
            return Err(failure!(
                "phys did not recover exactly after round {n}: {} frames kept ({now})",
                now.frames()
            ));
        }
        last = now;
    }
    let t = &totals;
    println!(
        "pressure: each round exhausted and gave back phys {} ({} blocks), the heap {} ({} blocks, with {} of phys held as ballast), kernel_va {}, kmem_va {}, device {}, ids {}",
        Bytes(t.phys.bytes),
        t.phys.blocks,
        Bytes(t.heap.bytes),
        t.heap.blocks,
        Bytes(t.ballast),
        Bytes(t.kernel_va.bytes),
        Bytes(t.kmem_va.bytes),
        Bytes(t.device.bytes),
        t.ids.bytes
    );
    println!(
        "pressure: recovered to the starting state: {segments} segments in 5 arenas, {CACHES} caches and {} pages backing the heap as before; phys recovered exactly, frame for frame ({last})",
        start.backed
    );
    Ok(())
}

/// The `pressure` boot word.
pub fn run(clock: &Clock, rounds: usize) -> Verdict {
    println!();
    println!("=== pressure: every arena exhausted, then recovered ===");
    println!(
        "timings: under {}; each marked {}",
        clock.accel.meaning(),
        clock.mark()
    );
    match run_rounds(clock, rounds) {
        Ok(()) => Verdict::Pass,
        Err(e) => {
            println!("pressure: FAILED: {e}");
            Verdict::Fail
        }
    }
}
