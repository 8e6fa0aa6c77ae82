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

use alloc::alloc::{Layout, alloc};
use alloc::vec::Vec;
use core::fmt;
use core::hint::black_box;
use core::mem::ManuallyDrop;
use core::sync::atomic::Ordering;

use vmem_core::{Arena, CacheStats, Constraints, ErrorKind, Policy, SegmentKind};

use crate::console::Verdict;
use crate::kmem::{self, HEAP, PAGES_MAPPED, PAGES_UNMAPPED};
use crate::paging::{PAGE, TABLE_FRAMES, phys_to_virt};
use crate::phys::{META_PAGES, phys};
use crate::println;
use crate::report::Bytes;
use crate::time::Clock;

type Outcome<T = ()> = Result<T, Failure>;

/// What went wrong, formatted without the heap: it may be exhausted when
/// the failure is found.
#[derive(Clone, Copy)]
struct Failure {
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
    ($($arg:tt)*) => { Failure::new(format_args!($($arg)*)) };
}

/// Written into every page taken, xor its address, and read back before
/// the page is given back.
const SEED: u64 = 0x5eed_f00d_cafe_d00d;

/// Blocks taken by one step.
#[derive(Clone, Copy, Default)]
struct Taken {
    blocks: u64,
    bytes: u64,
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
fn stamp(va: u64, size: u64, offset: u64) {
    for page in (0..size).step_by(PAGE as usize) {
        if page + offset + 8 <= size {
            let at = va + page + offset;
            // SAFETY: inside a block the caller owns.
            unsafe { (at as *mut u64).write_unaligned(at ^ SEED) };
        }
    }
}

/// Checks what `stamp` wrote.
fn check_stamp(va: u64, size: u64, offset: u64) -> Outcome {
    for page in (0..size).step_by(PAGE as usize) {
        if page + offset + 8 <= size {
            let at = va + page + offset;
            // SAFETY: as in `stamp`.
            let seen = unsafe { (at as *const u64).read_unaligned() };
            if seen != at ^ SEED {
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
                    let va = phys_to_virt(block);
                    // SAFETY: a block just allocated, reached by the direct map.
                    unsafe {
                        (va as *mut u64).write(self.head);
                        (va as *mut u64).add(1).write(size);
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
            let va = phys_to_virt(self.head);
            // SAFETY: each block's head was written by `take`.
            let (next, size) =
                unsafe { ((va as *const u64).read(), (va as *const u64).add(1).read()) };
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
        stamp(va, size, 8);
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
                check = check_stamp(block, size, 8);
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

/// Returns every cache's magazines and empty slabs: the heap's (to
/// `kmem_default`, which releases wholly free spans) first, then every
/// arena's (`kmem_va`'s quantum caches among them).
fn reap() -> Outcome {
    if let Some(classes) = HEAP.classes() {
        classes.reap().map_err(|e| failure!("heap reap: {e}"))?;
    }
    // Every arena's reap gives back its wholly spare tag pages; `phys`
    // last, as the others' pages go back into it.
    for arena in kmem::arenas().iter().rev() {
        arena
            .reap()
            .map_err(|e| failure!("{} reap: {e}", arena.name()))?;
    }
    Ok(())
}

/// The arena figures a snapshot keeps, in `ARENA_FIELDS` order.
const ARENA_FIELDS: [&str; 11] = [
    "bytes allocated",
    "bytes free",
    "bytes in spans",
    "bytes imported",
    "spans",
    "allocated segments",
    "free segments",
    "boundary tags",
    "spare boundary tags",
    "tag pages",
    "hash buckets",
];
/// From this field on, arena figures are metadata kept for reuse.
const ARENA_KEPT: usize = 7;

const CACHE_FIELDS: [&str; 8] = [
    "objects in use",
    "slabs",
    "empty slabs",
    "magazines",
    "full magazines in the depot",
    "empty magazines in the depot",
    "magazine size",
    "meta pages",
];
/// From this field on, cache figures are metadata kept for reuse.
const CACHE_KEPT: usize = 3;

/// The heap's size classes and `kmem_va`'s quantum caches.
const CACHES: usize = vmem_core::SIZE_CLASSES.len() + vmem_core::QCACHE_MAX_QUANTA as usize;

/// Segments all arenas may have at once in a snapshot.
const SEGMENTS_MAX: usize = 32 * 1024;

/// The segment lists of the last snapshot, as (start, size, kind), in a
/// static so that taking a snapshot does not touch the heap it describes.
static SEGMENTS: spin::Mutex<[[u64; 3]; SEGMENTS_MAX]> = spin::Mutex::new([[0; 3]; SEGMENTS_MAX]);

#[derive(Clone, Copy, Default)]
struct ArenaState {
    fields: [u64; 11],
    first: usize,
    segments: usize,
}

/// What the kernel's memory looks like: every arena and cache, and the
/// pages the memory subsystem holds for itself.
#[derive(Clone, Copy)]
struct Snapshot {
    arenas: [ArenaState; 6],
    caches: [[u64; 8]; CACHES],
    /// Pages `BackedPages` has mapped and not unmapped.
    backed: u64,
    tables: u64,
    meta: u64,
}

fn kind_code(kind: SegmentKind) -> u64 {
    match kind {
        SegmentKind::Span { imported: false } => 1,
        SegmentKind::Span { imported: true } => 2,
        SegmentKind::Free => 3,
        SegmentKind::Alloc => 4,
    }
}

fn kind_name(code: u64) -> &'static str {
    match code {
        1 => "span",
        2 => "imported span",
        3 => "free",
        _ => "allocated",
    }
}

fn arena_fields(arena: &Arena<'static>, imported: u64) -> [u64; 11] {
    let size = arena.size();
    let s = arena.stats();
    [
        size.alloc,
        size.free,
        size.total,
        imported,
        s.spans,
        s.alloc_segments,
        s.free_segments,
        s.tags,
        s.tags_spare,
        s.tag_pages,
        s.hash_buckets,
    ]
}

fn cache_fields(s: &CacheStats) -> [u64; 8] {
    [
        s.in_use,
        s.slabs,
        s.slabs_empty,
        s.magazines,
        s.depot_full,
        s.depot_empty,
        s.magazine_size,
        s.meta_pages,
    ]
}

/// The name of cache `index` in a snapshot.
struct CacheName(usize);

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let heap = vmem_core::SIZE_CLASSES.len();
        match vmem_core::SIZE_CLASSES.get(self.0) {
            Some(size) => write!(f, "kmem_alloc_{size}"),
            None => write!(
                f,
                "kmem_va qcache {}K",
                (self.0 - heap + 1) as u64 * PAGE / 1024
            ),
        }
    }
}

fn caches(mut visit: impl FnMut(usize, &CacheStats)) {
    let mut index = 0;
    if let Some(classes) = HEAP.classes() {
        for cache in classes.caches() {
            visit(index, &cache.stats());
            index += 1;
        }
    }
    index = vmem_core::SIZE_CLASSES.len();
    for (_, s) in kmem::kmem_va_qcaches().stats() {
        visit(index, &s);
        index += 1;
    }
}

fn globals() -> (u64, u64, u64) {
    (
        PAGES_MAPPED.load(Ordering::Relaxed) - PAGES_UNMAPPED.load(Ordering::Relaxed),
        TABLE_FRAMES.load(Ordering::Relaxed),
        META_PAGES.load(Ordering::Relaxed),
    )
}

/// Takes a snapshot, keeping the segment lists in `SEGMENTS`.
fn snapshot() -> Outcome<Snapshot> {
    let mut buf = SEGMENTS.lock();
    let mut next = 0usize;
    let mut arenas = [ArenaState::default(); 6];
    for (state, arena) in arenas.iter_mut().zip(kmem::arenas()) {
        let first = next;
        let mut imported = 0;
        arena.walk(|seg| {
            if let Some(slot) = buf.get_mut(next) {
                *slot = [seg.start, seg.size, kind_code(seg.kind)];
            }
            next += 1;
            if seg.kind == (SegmentKind::Span { imported: true }) {
                imported += seg.size;
            }
        });
        if next > SEGMENTS_MAX {
            return Err(failure!("more than {SEGMENTS_MAX} segments to snapshot"));
        }
        *state = ArenaState {
            fields: arena_fields(arena, imported),
            first,
            segments: next - first,
        };
    }
    let mut cache_states = [[0; 8]; CACHES];
    caches(|i, s| cache_states[i] = cache_fields(s));
    let (backed, tables, meta) = globals();
    Ok(Snapshot {
        arenas,
        caches: cache_states,
        backed,
        tables,
        meta,
    })
}

/// Compares the kernel's memory now with `before` (whose segment lists
/// are in `SEGMENTS`): everything but the metadata kept for reuse must
/// match, and `phys`, which holds that metadata, must differ by exactly
/// the pages it grew by. Returns those (page-table frames, meta pages), or
/// the first difference.
fn compare(before: &Snapshot) -> Outcome<(i64, i64)> {
    let (backed, tables, meta) = globals();
    if backed != before.backed {
        return Err(failure!(
            "kmem_default has {backed} pages backed, had {}",
            before.backed
        ));
    }
    let (was, is) = (&before.arenas[0].fields, phys().size());
    if is.total != was[2] {
        return Err(failure!(
            "phys has {} bytes in spans, had {}",
            is.total,
            was[2]
        ));
    }
    let tables_grew = tables as i64 - before.tables as i64;
    let meta_grew = meta as i64 - before.meta as i64;
    let grew = is.alloc as i64 - was[0] as i64;
    let unaccounted = grew - (tables_grew + meta_grew) * PAGE as i64;
    if unaccounted != 0 {
        return Err(failure!(
            "phys has {unaccounted} bytes allocated that are neither the {tables_grew} page-table frames nor the {meta_grew} meta pages kept"
        ));
    }
    let buf = SEGMENTS.lock();
    // phys is `arenas()[0]`, accounted for above.
    for (i, arena) in kmem::arenas().iter().enumerate().skip(1) {
        let name = arena.name();
        let was = &before.arenas[i];
        let list = &buf[was.first..was.first + was.segments];
        let mut n = 0usize;
        let mut diff: Option<Failure> = None;
        let mut imported = 0;
        arena.walk(|seg| {
            let now = [seg.start, seg.size, kind_code(seg.kind)];
            if diff.is_none() && list.get(n) != Some(&now) {
                diff = Some(match list.get(n) {
                    Some(old) => failure!(
                        "segment {n} was {} {:#x}+{:#x}, is {} {:#x}+{:#x}",
                        kind_name(old[2]),
                        old[0],
                        old[1],
                        kind_name(now[2]),
                        now[0],
                        now[1]
                    ),
                    None => failure!(
                        "segment {n} is new: {} {:#x}+{:#x}",
                        kind_name(now[2]),
                        now[0],
                        now[1]
                    ),
                });
            }
            n += 1;
            if seg.kind == (SegmentKind::Span { imported: true }) {
                imported += seg.size;
            }
        });
        if diff.is_none() && n < list.len() {
            let old = list[n];
            diff = Some(failure!(
                "segment {n} is gone: {} {:#x}+{:#x}",
                kind_name(old[2]),
                old[0],
                old[1]
            ));
        }
        if let Some(d) = diff {
            return Err(failure!("arena '{name}': {d}"));
        }
        let now = arena_fields(arena, imported);
        let kept = ARENA_KEPT;
        for (f, (old, new)) in was.fields.iter().zip(now).enumerate().take(kept) {
            if *old != new {
                return Err(failure!(
                    "arena '{name}': {} was {old}, is {new}",
                    ARENA_FIELDS[f]
                ));
            }
        }
    }
    let mut diff = None;
    caches(|i, s| {
        let now = cache_fields(s);
        for (f, (old, new)) in before.caches[i]
            .iter()
            .zip(now)
            .enumerate()
            .take(CACHE_KEPT)
        {
            if diff.is_none() && *old != new {
                diff = Some(failure!(
                    "cache '{}': {} was {old}, is {new}",
                    CacheName(i),
                    CACHE_FIELDS[f]
                ));
            }
        }
    });
    match diff {
        Some(d) => Err(d),
        None => Ok((tables_grew, meta_grew)),
    }
}

/// Runs `step`, and says how many milliseconds it took.
fn timed<T>(clock: &Clock, step: impl FnOnce() -> Outcome<T>) -> (Outcome<T>, u64) {
    let start = crate::cpu::rdtsc();
    let outcome = step();
    (outcome, clock.ns(crate::cpu::rdtsc() - start) / 1_000_000)
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
struct Totals {
    phys: Taken,
    heap: Taken,
    ballast: u64,
    kernel_va: Taken,
    kmem_va: Taken,
    device: Taken,
    ids: Taken,
}

/// One round: every step, each giving back all it took.
fn round(clock: &Clock, totals: &mut Totals) -> Outcome {
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
            largest: crate::paging::KERNEL_VA_SIZE,
            then_xalloc: false,
            refused: &kernel_va_full_refuses,
            note: "; then kmem_va could not import, the heap answered null",
        },
        VaStep {
            arena: kmem::kmem_va(),
            largest: crate::paging::KERNEL_VA_SIZE,
            then_xalloc: true,
            refused: &kmem_va_full,
            note: "; quantum caches, then xalloc; the heap answered null",
        },
        VaStep {
            arena: kmem::device(),
            largest: crate::paging::DEVICE_SIZE,
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

/// The arena checker on every arena and the heap caches' checker.
fn check_all() -> Outcome {
    for arena in kmem::arenas() {
        arena
            .check()
            .map_err(|e| failure!("checker: arena {}: {e}", arena.name()))?;
    }
    if let Some(classes) = HEAP.classes() {
        classes
            .check()
            .map_err(|e| failure!("checker: heap caches: {e}"))?;
    }
    Ok(())
}

/// Rounds run when the command line does not say (`rounds=N`, at least
/// 2): each must recover exactly, and what is kept (the hash tables) must
/// not grow after the first.
pub const ROUNDS: usize = 2;

/// Metadata kept for reuse after a round and a reap, beyond the snapshot:
/// page-table frames and meta pages (of which tag pages, the arenas'
/// allocated-segment hash tables, and the caches' records, magazines and
/// slab hash tables; the rest are `phys`'s set-aside frames).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Kept {
    tables: i64,
    meta: i64,
    tag_pages: i64,
    hash_pages: i64,
    cache_pages: i64,
}

impl Kept {
    fn frames(&self) -> i64 {
        self.tables + self.meta
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} page-table frames, {} meta pages ({} tag pages, {} hash table pages, {} cache meta pages)",
            self.tables, self.meta, self.tag_pages, self.hash_pages, self.cache_pages
        )
    }
}

/// Pages of an allocated-segment hash table of `buckets` buckets, as
/// vmem-core lays it out: 16 bytes a bucket, the first 16 buckets inside
/// the arena.
fn hash_pages(buckets: u64) -> i64 {
    if buckets <= 16 {
        0
    } else {
        (buckets * 16).div_ceil(PAGE) as i64
    }
}

/// The kept figures now, against `start`; `tables` and `meta` from `compare`.
fn kept(start: &Snapshot, tables: i64, meta: i64) -> Kept {
    let mut k = Kept {
        tables,
        meta,
        ..Kept::default()
    };
    for (arena, was) in kmem::arenas().iter().zip(&start.arenas) {
        let s = arena.stats();
        k.tag_pages += s.tag_pages as i64 - was.fields[9] as i64;
        k.hash_pages += hash_pages(s.hash_buckets) - hash_pages(was.fields[10]);
    }
    caches(|i, s| k.cache_pages += s.meta_pages as i64 - start.caches[i][7] as i64);
    k
}

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
        check_all()?;
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
