//! The steps of a round: each takes one arena dry, checks that what
//! depends on it refuses cleanly, and gives everything back (the module
//! above says what each step does and why).

use alloc::alloc::{Layout, alloc};
use alloc::vec::Vec;
use core::hint::black_box;
use core::mem::ManuallyDrop;
use core::sync::atomic::Ordering;

use vmem_core::{Arena, Constraints, ErrorKind, Policy};
use x86_64::{PhysAddr, VirtAddr};

use super::{Outcome, timed};
use crate::kmem::{self, PAGES_MAPPED};
use crate::layout::{DEVICE_SIZE, KERNEL_VA_SIZE, PAGE, phys_to_virt};
use crate::phys::phys;
use crate::println;
use crate::report::Bytes;
use crate::time::Clock;

/// Written into every page taken, xor its address, and read back before
/// the page is given back.
const SEED: u64 = 0x5eed_f00d_cafe_d00d;

/// Blocks taken by one step.
#[derive(Clone, Copy, Default)]
pub(super) struct Taken {
    pub(super) blocks: u64,
    pub(super) bytes: u64,
    largest: u64,
}

impl Taken {
    fn add(&mut self, size: u64) {
        self.blocks += 1;
        self.bytes += size;
        self.largest = self.largest.max(size);
    }
}

/// The largest power of two not above `n` (0 for 0).
fn floor_pow2(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 << n.ilog2() }
}

/// Whether an arena's refusal means it (or its source) is out of space.
fn exhausted(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NoSpace | ErrorKind::ImportFailed)
}

/// Calls `take(size)` with `size` from `largest` down, halving whenever it
/// refuses (`Ok(false)`), until `size` is below `smallest`.
fn largest_first(
    largest: u64,
    smallest: u64,
    mut take: impl FnMut(u64) -> Outcome<bool>,
) -> Outcome<Taken> {
    let mut taken = Taken::default();
    let mut size = largest;
    while size >= smallest && size > 0 {
        if take(size)? {
            taken.add(size);
        } else {
            size /= 2;
        }
    }
    Ok(taken)
}

/// Writes the seed into the first words of every page of `[va, va + size)`
/// at `offset` into each page.
fn stamp(va: VirtAddr, size: u64, offset: u64) {
    for page in (0..size).step_by(PAGE as usize) {
        if page + offset + 8 <= size {
            let at = va + page + offset;
            // SAFETY: inside a block the caller owns.
            unsafe { at.as_mut_ptr::<u64>().write_unaligned(at.as_u64() ^ SEED) };
        }
    }
}

/// Checks what `stamp` wrote.
fn check_stamp(va: VirtAddr, size: u64, offset: u64) -> Outcome {
    for page in (0..size).step_by(PAGE as usize) {
        if page + offset + 8 <= size {
            let at = va + page + offset;
            // SAFETY: as in `stamp`.
            let seen = unsafe { at.as_ptr::<u64>().read_unaligned() };
            if seen != at.as_u64() ^ SEED {
                return Err(failure!(
                    "{at:#x} reads {seen:#x}, not what was written: two blocks share memory"
                ));
            }
        }
    }
    Ok(())
}

/// A heap block large enough that `kmem_default` must import for it, and
/// too large for `kmem_va` to serve without importing from `kernel_va`.
fn heap_request_that_imports() -> u64 {
    let free = kmem::kmem_default().size().free + kmem::kmem_va().size().free;
    (free + 1).next_power_of_two().max(1 << 20)
}

/// The heap must answer null, and `Vec` must report the failure, for a
/// block that needs an import its sources cannot give.
fn heap_refuses(why: &str) -> Outcome {
    let size = heap_request_that_imports();
    let fails = kmem::kmem_default().stats().import_fails;
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(size as usize).is_ok() {
        return Err(failure!(
            "Vec::try_reserve_exact({size:#x}) succeeded with {why}"
        ));
    }
    let layout = Layout::from_size_align(size as usize, 8).map_err(|e| failure!("{e}"))?;
    // SAFETY: a layout of non-zero size; a non-null block is freed at once.
    // `black_box`: the compiler may otherwise drop an allocation whose
    // block is unused, and assume it succeeded.
    let p = black_box(unsafe { alloc(layout) });
    if !p.is_null() {
        // SAFETY: allocated just above with this layout.
        unsafe { alloc::alloc::dealloc(p, layout) };
        return Err(failure!("the heap gave {size:#x} bytes with {why}"));
    }
    let refused = kmem::kmem_default().stats().import_fails - fails;
    if refused < 2 {
        return Err(failure!(
            "kmem_default refused {refused} imports for two requests with {why}"
        ));
    }
    Ok(())
}

/// Blocks of `phys` chained through their first words (the heap may not
/// grow while they are held), each stamped to catch two blocks that
/// overlap.
struct PhysBlocks {
    /// Physical address of the last block; 0 for none.
    head: u64,
}

impl PhysBlocks {
    /// Takes blocks largest first while `phys` has more than `keep` bytes
    /// free; `phys` refusing must be `NoSpace`.
    fn take(&mut self, keep: u64) -> Outcome<Taken> {
        let spare = || phys().size().free.saturating_sub(keep);
        largest_first(floor_pow2(spare()), PAGE, |size| {
            if size > spare() {
                return Ok(false);
            }
            match phys().alloc(size, Policy::InstantFit) {
                Ok(block) => {
                    let va = phys_to_virt(PhysAddr::new(block));
                    // SAFETY: a block just allocated, reached by the direct map.
                    unsafe {
                        va.as_mut_ptr::<u64>().write(self.head);
                        va.as_mut_ptr::<u64>().add(1).write(size);
                    }
                    stamp(va, PAGE.min(size), 16);
                    self.head = block;
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::NoSpace => Ok(false),
                Err(e) => Err(failure!("phys refused {size:#x} bytes with {e}")),
            }
        })
    }

    /// Frees every block; the first stamp that changed is the error.
    fn free(&mut self) -> Outcome {
        let mut check = Ok(());
        while self.head != 0 {
            let va = phys_to_virt(PhysAddr::new(self.head));
            // SAFETY: each block's head was written by `take`.
            let (next, size) =
                unsafe { (va.as_ptr::<u64>().read(), va.as_ptr::<u64>().add(1).read()) };
            if check.is_ok() {
                check = check_stamp(va, PAGE.min(size), 16);
            }
            phys()
                .free(self.head, size)
                .map_err(|e| failure!("phys free {:#x}: {e}", self.head))?;
            self.head = next;
        }
        check
    }
}

/// Takes every frame of `phys`, checks that the heap refuses, and frees
/// them all.
fn exhaust_phys() -> Outcome<Taken> {
    let mut blocks = PhysBlocks { head: 0 };
    let taken = blocks.take(0);
    let left = phys().size().free;
    let refusal = taken
        .as_ref()
        .map_err(|e| *e)
        .and_then(|_| heap_refuses("phys empty"));
    blocks.free()?;
    let taken = taken?;
    refusal?;
    if left != 0 {
        return Err(failure!("{left} bytes still free in phys after NoSpace"));
    }
    Ok(taken)
}

/// Frames the heap step leaves free for the heap to grow into; the rest of
/// `phys` is held as ballast meanwhile (see the module's note on time).
const HEAP_ROOM: u64 = 256 << 20;

/// What the heap step found.
struct HeapTaken {
    taken: Taken,
    ballast: u64,
    /// `phys` bytes free when the heap refused 8 bytes.
    left: u64,
}

/// Grows the heap through the global allocator until it refuses even
/// 8 bytes, then frees everything. Blocks of each size are chained through
/// their first word.
fn exhaust_heap() -> Outcome<HeapTaken> {
    let mut ballast = PhysBlocks { head: 0 };
    let held = match ballast.take(HEAP_ROOM) {
        Ok(t) => t.bytes,
        Err(e) => {
            ballast.free()?;
            return Err(e);
        }
    };
    let mut chains = [0u64; 64]; // by log2 of the block size
    let start = floor_pow2(phys().size().free);
    let taken = largest_first(start, 8, |size| {
        // A block larger than the free frames cannot be backed: skip it
        // rather than map and unmap most of them to learn that.
        if size > floor_pow2(phys().size().free).max(64 << 10) {
            return Ok(false);
        }
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(size as usize).is_err() {
            return Ok(false);
        }
        if v.capacity() as u64 != size {
            return Err(failure!("asked for {size} bytes, got {}", v.capacity()));
        }
        let va = ManuallyDrop::new(v).as_mut_ptr() as u64;
        stamp(VirtAddr::new(va), size, 8);
        let chain = &mut chains[size.ilog2() as usize];
        // SAFETY: the block is at least 8 bytes and ours.
        unsafe { (va as *mut u64).write_unaligned(*chain) };
        *chain = va;
        Ok(true)
    });
    let left = phys().size().free;
    let mut check = taken.as_ref().map(|_| ()).map_err(|e| *e);
    if check.is_ok() {
        let layout = Layout::from_size_align(8, 8).map_err(|e| failure!("{e}"))?;
        // SAFETY: a non-zero layout; a non-null answer is a failure and
        // leaks 8 bytes in a run that is failing anyway.
        if !black_box(unsafe { alloc(layout) }).is_null() {
            check = Err(failure!("the heap gave 8 bytes after refusing them"));
        }
    }
    for (log, head) in chains.iter().enumerate() {
        let size = 1u64 << log;
        let mut block = *head;
        while block != 0 {
            // SAFETY: each chained block's first word was written above.
            let next = unsafe { (block as *const u64).read_unaligned() };
            if check.is_ok() {
                check = check_stamp(VirtAddr::new(block), size, 8);
            }
            // SAFETY: the block is a `Vec<u8>` of capacity `size`, leaked above.
            drop(unsafe { Vec::from_raw_parts(block as *mut u8, 0, size as usize) });
            block = next;
        }
    }
    ballast.free()?;
    check?;
    Ok(HeapTaken {
        taken: taken?,
        ballast: held,
        left,
    })
}

/// One range taken from a virtual arena, and whether by `xalloc`.
type Range = (u64, u64, bool);

/// Takes all of `arena` (and what it can import), `alloc` first and, with
/// `then_xalloc`, `xalloc` for what `alloc`'s quantum caches cannot reach;
/// runs `refused` while it is full; gives it all back.
fn exhaust_va(
    arena: &Arena<'static>,
    largest: u64,
    then_xalloc: bool,
    refused: &dyn Fn() -> Outcome,
) -> Outcome<Taken> {
    let mut ranges: Vec<Range> = Vec::with_capacity(4096);
    let mut take = |size: u64, by_x: bool| {
        if ranges.len() == ranges.capacity() {
            return Err(failure!("more than {} ranges", ranges.capacity()));
        }
        let got = if by_x {
            arena.xalloc(size, &Constraints::NONE, Policy::InstantFit)
        } else {
            arena.alloc(size, Policy::InstantFit)
        };
        match got {
            Ok(addr) => {
                ranges.push((addr, size, by_x));
                Ok(true)
            }
            Err(e) if exhausted(e.kind()) => Ok(false),
            Err(e) => Err(failure!("{} refused {size:#x} with {e}", arena.name())),
        }
    };
    let quantum = arena.quantum();
    let mut taken = largest_first(largest, quantum, |size| take(size, false));
    if then_xalloc && let Ok(by_alloc) = taken {
        taken = largest_first(largest, quantum, |size| take(size, true)).map(|by_x| Taken {
            blocks: by_alloc.blocks + by_x.blocks,
            bytes: by_alloc.bytes + by_x.bytes,
            largest: by_alloc.largest.max(by_x.largest),
        });
    }
    let left = arena.size().free;
    let check = taken.as_ref().map_err(|e| *e).and_then(|_| {
        if left != 0 {
            Err(failure!(
                "{left:#x} still free in {} after it refused",
                arena.name()
            ))
        } else {
            refused()
        }
    });
    for &(addr, size, by_x) in &ranges {
        let freed = if by_x {
            arena.xfree(addr, size)
        } else {
            arena.free(addr, size)
        };
        freed.map_err(|e| failure!("{} free {addr:#x}: {e}", arena.name()))?;
    }
    check?;
    taken
}

/// With `kernel_va` full, `kmem_va` cannot import and the heap cannot grow.
fn kernel_va_full_refuses() -> Outcome {
    let size = heap_request_that_imports();
    match kmem::kmem_va().alloc(size, Policy::InstantFit) {
        Err(e) if exhausted(e.kind()) => {}
        Err(e) => return Err(failure!("kmem_va refused with {e}, not for lack of space")),
        Ok(addr) => {
            let _ = kmem::kmem_va().free(addr, size);
            return Err(failure!("kmem_va gave {size:#x} bytes with kernel_va full"));
        }
    }
    heap_refuses("kernel_va full")
}

fn report_taken(what: &str, taken: &Taken, ms: u64, mark: &str, note: &str) {
    println!(
        "  {what:<10} {:>11} in {:>6} blocks (largest {:>10}) {:>6} ms {mark}{note}",
        Bytes(taken.bytes),
        taken.blocks,
        Bytes(taken.largest),
        ms
    );
}

/// What one round took from each arena, for the summary.
#[derive(Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) phys: Taken,
    pub(super) heap: Taken,
    pub(super) ballast: u64,
    pub(super) kernel_va: Taken,
    pub(super) kmem_va: Taken,
    pub(super) device: Taken,
    pub(super) ids: Taken,
}

/// One round: every step, each giving back all it took.
pub(super) fn round(clock: &Clock, totals: &mut Totals) -> Outcome {
    let (phys_taken, ms) = timed(clock, exhaust_phys);
    let phys_taken = phys_taken.map_err(|e| failure!("phys: {e}"))?;
    totals.phys = phys_taken;
    report_taken(
        "phys",
        &phys_taken,
        ms,
        clock.mark(),
        "; then NoSpace, and the heap answered null",
    );

    let mapped = PAGES_MAPPED.load(Ordering::Relaxed);
    let (heap, ms) = timed(clock, exhaust_heap);
    let heap = heap.map_err(|e| failure!("heap: {e}"))?;
    totals.heap = heap.taken;
    totals.ballast = heap.ballast;
    let mapped = PAGES_MAPPED.load(Ordering::Relaxed) - mapped;
    report_taken(
        "heap",
        &heap.taken,
        ms,
        clock.mark(),
        "; then null even for 8 bytes",
    );
    println!(
        "             {mapped} pages backed and mapped; phys held {} as ballast, had {} free at the end",
        Bytes(heap.ballast),
        Bytes(heap.left)
    );

    let none = || Ok(());
    let kmem_va_full = || heap_refuses("kmem_va full");
    let steps = [
        VaStep {
            arena: kmem::kernel_va(),
            largest: KERNEL_VA_SIZE,
            then_xalloc: false,
            refused: &kernel_va_full_refuses,
            note: "; then kmem_va could not import, the heap answered null",
        },
        VaStep {
            arena: kmem::kmem_va(),
            largest: KERNEL_VA_SIZE,
            then_xalloc: true,
            refused: &kmem_va_full,
            note: "; quantum caches, then xalloc; the heap answered null",
        },
        VaStep {
            arena: kmem::device(),
            largest: DEVICE_SIZE,
            then_xalloc: false,
            refused: &none,
            note: "",
        },
        VaStep {
            arena: kmem::ids(),
            largest: 1 << 20,
            then_xalloc: false,
            refused: &none,
            note: " (IDs, not bytes)",
        },
    ];
    let slots = [
        &mut totals.kernel_va,
        &mut totals.kmem_va,
        &mut totals.device,
        &mut totals.ids,
    ];
    for (step, slot) in steps.iter().zip(slots) {
        let what = step.arena.name();
        let (taken, ms) = timed(clock, || {
            exhaust_va(step.arena, step.largest, step.then_xalloc, step.refused)
        });
        *slot = taken.map_err(|e| failure!("{what}: {e}"))?;
        if step.arena.quantum() >= PAGE {
            report_taken(what, slot, ms, clock.mark(), step.note);
        } else {
            println!(
                "  {what:<10} {:>11} in {:>6} blocks (largest {:>10}) {:>6} ms {}{}",
                slot.bytes,
                slot.blocks,
                slot.largest,
                ms,
                clock.mark(),
                step.note
            );
        }
    }
    Ok(())
}

/// One virtual arena's step.
struct VaStep<'a> {
    arena: &'static Arena<'static>,
    /// The first size tried.
    largest: u64,
    /// Whether `xalloc` takes what `alloc` (through quantum caches) cannot.
    then_xalloc: bool,
    /// Checks run while the arena is full.
    refused: &'a dyn Fn() -> Outcome,
    note: &'static str,
}
