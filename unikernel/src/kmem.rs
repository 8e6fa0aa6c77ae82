//! The kernel's virtual memory, as the illumos boot arenas arrange it:
//!
//! - `kernel_va`: the kernel's virtual range, spans with no memory behind;
//! - `kmem_va`: imports from `kernel_va`, with quantum caches for sizes up
//!   to 16 pages, so the heap's imports take the magazine fast path;
//! - `kmem_default`: imports from `kmem_va` through `BackedPages`, which
//!   backs each page with a frame from `phys` and maps it, and on release
//!   unmaps and frees the frames; with other CPUs online the range goes
//!   back to `kmem_va` only after a TLB shootdown round (`retire`, `purge`);
//! - the heap: vmem-core's size classes over `kmem_default`, the
//!   `#[global_allocator]`;
//! - `device`: virtual ranges for MMIO, mapped uncached;
//! - `ids`: task IDs, quantum 1, handed out by next fit;
//! - kernel stacks from `kernel_va`, each with an unmapped guard page below.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use vmem_core::{
    Arena, ArenaConfig, Constraints, DefaultLock, GlobalHeap, Importer, MAX_CPUS, Policy,
    QCACHE_MAX_QUANTA, QuantumCaches, SizeClasses, Source,
};
use x86_64::structures::paging::page::PageRange;
use x86_64::structures::paging::{Page, PageTableFlags as Flags, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

use crate::cpu;
use crate::error::MemError;
use crate::layout::{DEVICE_BASE, DEVICE_SIZE, KERNEL_VA_BASE, KERNEL_VA_SIZE, PAGE, virt_to_phys};
use crate::local::{self, KernelLocal};
use crate::paging::{self, DeferredTables};
use crate::phys::{PHYS_META, phys, try_phys};
use crate::shootdown::{self, ROUND_RANGES};

static KERNEL_VA: spin::Once<Arena<'static>> = spin::Once::new();
static KMEM_VA_QCACHE: spin::Once<QuantumCaches<'static>> = spin::Once::new();
static KMEM_VA: spin::Once<Arena<'static>> = spin::Once::new();
static KMEM_DEFAULT: spin::Once<Arena<'static>> = spin::Once::new();
static DEVICE: spin::Once<Arena<'static>> = spin::Once::new();
static IDS: spin::Once<Arena<'static>> = spin::Once::new();

/// Pages `BackedPages` has mapped and unmapped.
pub static PAGES_MAPPED: AtomicU64 = AtomicU64::new(0);
pub static PAGES_UNMAPPED: AtomicU64 = AtomicU64::new(0);

/// Smallest span `kmem_default` imports: 16 pages, the largest size
/// `kmem_va`'s quantum caches serve.
const KMEM_IMPORT: u64 = QCACHE_MAX_QUANTA * PAGE;
/// Smallest span `kmem_va` imports from `kernel_va`.
const KMEM_VA_IMPORT: u64 = 4 << 20;

fn made(arena: &'static spin::Once<Arena<'static>>) -> &'static Arena<'static> {
    arena.get().expect("kmem::init makes the arenas before use")
}

pub fn kernel_va() -> &'static Arena<'static> {
    made(&KERNEL_VA)
}
pub fn kmem_va() -> &'static Arena<'static> {
    made(&KMEM_VA)
}
pub fn kmem_default() -> &'static Arena<'static> {
    made(&KMEM_DEFAULT)
}
pub fn device() -> &'static Arena<'static> {
    made(&DEVICE)
}
pub fn ids() -> &'static Arena<'static> {
    made(&IDS)
}

/// Every arena, for the report and the checker.
pub fn arenas() -> [&'static Arena<'static>; 6] {
    [
        phys(),
        kernel_va(),
        kmem_va(),
        kmem_default(),
        device(),
        ids(),
    ]
}

/// `kmem_default`'s source: virtual ranges from `kmem_va`, each page backed
/// by a frame of `phys`.
struct BackedPages;

static BACKED_PAGES: BackedPages = BackedPages;

impl BackedPages {
    /// Backs `page` with a frame of `phys` and maps it.
    fn back(page: Page<Size4KiB>) -> Result<(), MemError> {
        let frame =
            PhysFrame::containing_address(PhysAddr::new(phys().alloc(PAGE, Policy::InstantFit)?));
        paging::map(page, frame, Flags::WRITABLE).inspect_err(|_| {
            let _ = phys().free(frame.start_address().as_u64(), PAGE);
        })
    }

    /// Unmaps `pages` one by one (flushing this CPU's TLB) and frees the
    /// frames.
    fn unback(pages: PageRange) {
        for page in pages {
            if let Some(frame) = paging::unmap(page) {
                PAGES_UNMAPPED.fetch_add(1, Ordering::Relaxed);
                // The frame came from `phys().alloc` in `back`.
                let _ = phys().free(frame.start_address().as_u64(), PAGE);
            }
        }
    }
}

/// Bases of the ranges `BackedPages` holds that `kmem_va` gave by
/// `xalloc` (imports aligned above a page: a heap block or slab aligned
/// to more than a page), which go back by `xfree`; 0 is an empty place.
/// Few are ever held at once; one more is refused.
const ALIGNED_MAX: usize = 32;
static ALIGNED: spin::Mutex<[u64; ALIGNED_MAX]> = spin::Mutex::new([0; ALIGNED_MAX]);

/// VA for an import of `size` aligned to `align` from `kmem_va`: through
/// its quantum caches when a page aligns it, else by `xalloc` (which
/// imports an aligned span from `kernel_va` when it must), noted in
/// `ALIGNED`.
fn va_alloc(size: u64, align: u64) -> vmem_core::Result<u64> {
    if align <= PAGE {
        return kmem_va().alloc(size, Policy::InstantFit);
    }
    let mut aligned = ALIGNED.lock();
    let Some(place) = aligned.iter_mut().find(|b| **b == 0) else {
        return Err(vmem_core::Error::new(
            vmem_core::ErrorKind::ImportFailed,
            "kmem_default holds its most imports aligned above a page",
        ));
    };
    let base = kmem_va().xalloc(size, &Constraints::aligned(align), Policy::InstantFit)?;
    *place = base;
    Ok(base)
}

/// Gives `[base, base + size)` back to `kmem_va` the way `va_alloc` took
/// it.
fn va_free(base: u64, size: u64) -> vmem_core::Result<()> {
    let xalloced = {
        let mut aligned = ALIGNED.lock();
        match aligned.iter_mut().find(|b| **b == base) {
            Some(place) => {
                *place = 0;
                true
            }
            None => false,
        }
    };
    if xalloced {
        kmem_va().xfree(base, size)
    } else {
        kmem_va().free(base, size)
    }
}

/// Ranges `kmem_default` released, unmapped here but perhaps still in
/// another CPU's TLB, waiting for a shootdown round before `kmem_va` gets
/// them back; with the page-table frames their unmapping emptied.
struct Purge {
    ranges: [(u64, u64); ROUND_RANGES],
    count: usize,
    pages: u64,
    tables: DeferredTables,
}

static PURGE: spin::Mutex<Purge> = spin::Mutex::new(Purge {
    ranges: [(0, 0); ROUND_RANGES],
    count: 0,
    pages: 0,
    tables: DeferredTables::new(),
});

/// Pages waiting that make a round worth it before the ranges run out.
const PURGE_PAGES: u64 = 1024;

/// Gives back a range `kmem_default` released: unmapped and its frames
/// freed at once, but the range itself returns to `kmem_va` only once no
/// CPU can hold a translation of it: at once when no other CPU is online
/// (or shootdown is off), else after the shootdown round of its batch.
fn retire(base: u64, size: u64) -> vmem_core::Result<()> {
    let range = pages(base, size);
    BackedPages::unback(range);
    if !shootdown::needed() {
        paging::free_empty_tables(range, None);
        return va_free(base, size);
    }
    let full = {
        let mut purge = PURGE.lock();
        let p = &mut *purge;
        paging::free_empty_tables(range, Some(&mut p.tables));
        p.ranges[p.count] = (base, size);
        p.count += 1;
        p.pages += size / PAGE;
        p.count == ROUND_RANGES || p.pages >= PURGE_PAGES
    };
    if full {
        purge();
    }
    Ok(())
}

/// Runs a shootdown round for the ranges waiting, then frees their
/// emptied page tables and gives the ranges back to `kmem_va`.
pub fn purge() {
    let (ranges, count, mut tables) = {
        let mut purge = PURGE.lock();
        let batch = (
            purge.ranges,
            purge.count,
            core::mem::take(&mut purge.tables),
        );
        purge.count = 0;
        purge.pages = 0;
        batch
    };
    if count == 0 && tables.count == 0 {
        return;
    }
    shootdown::flush(&ranges[..count]);
    tables.free();
    for &(base, size) in &ranges[..count] {
        // `retire` took the range from `kmem_default`'s release, which
        // `import` had from `kmem_va`.
        let _ = va_free(base, size);
    }
}

/// The pages of `[base, base + size)`, an arena's range.
fn pages(base: u64, size: u64) -> PageRange {
    let first = Page::containing_address(VirtAddr::new(base));
    Page::range(first, first + size / PAGE)
}

impl Source for BackedPages {
    fn import(&self, _importer: Importer, size: u64, align: u64) -> vmem_core::Result<u64> {
        let base = va_alloc(size, align)?;
        let range = pages(base, size);
        for page in range {
            if let Err(e) = Self::back(page) {
                let done = Page::range(range.start, page);
                Self::unback(done);
                paging::free_empty_tables(done, None);
                let _ = va_free(base, size);
                return Err(e.into());
            }
            PAGES_MAPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(base)
    }

    // `BACKED_PAGES` is private to this module and kmem_default its only
    // importer, so the importer needs no check.
    fn release(&self, _importer: Importer, base: u64, size: u64) -> vmem_core::Result<()> {
        retire(base, size)
    }
}

/// Makes the virtual arenas (after `phys` and the kernel's page tables).
pub fn init() -> Result<(), MemError> {
    let kernel_va = Arena::create(
        ArenaConfig::new("kernel_va", PAGE)
            .span(KERNEL_VA_BASE.as_u64(), KERNEL_VA_SIZE)
            .meta(&PHYS_META),
    )?;
    let kernel_va = KERNEL_VA.call_once(|| kernel_va);
    let qc = QuantumCaches::new(PAGE, QCACHE_MAX_QUANTA * PAGE, &PHYS_META, &cpu::CURRENT)?;
    let qc = KMEM_VA_QCACHE.call_once(|| qc);
    let kmem_va = Arena::create(
        ArenaConfig::new("kmem_va", PAGE)
            .source(kernel_va, KMEM_VA_IMPORT)
            .qcache(qc)
            .meta(&PHYS_META),
    )?;
    KMEM_VA.call_once(|| kmem_va);
    let kmem_default = Arena::create(
        ArenaConfig::new("kmem_default", PAGE)
            .source(&BACKED_PAGES, KMEM_IMPORT)
            .meta(&PHYS_META),
    )?;
    KMEM_DEFAULT.call_once(|| kmem_default);
    let device = Arena::create(
        ArenaConfig::new("device", PAGE)
            .span(DEVICE_BASE.as_u64(), DEVICE_SIZE)
            .meta(&PHYS_META),
    )?;
    DEVICE.call_once(|| device);
    let ids = Arena::create(ArenaConfig::new("ids", 1).span(1, 1 << 20).meta(&PHYS_META))?;
    IDS.call_once(|| ids);
    Ok(())
}

/// Makes the heap's size classes (on the main kernel stack: they are
/// built by value, too large for the boot stack) and registers them for
/// cross-calls, so a reap on one CPU asks the others for the magazines
/// they hold.
pub fn init_heap() -> Result<(), &'static str> {
    let classes = HEAP.classes().ok_or("no heap size classes")?;
    if local::register_forever(classes) {
        Ok(())
    } else {
        Err("no room to register the heap for cross-calls")
    }
}

fn heap_classes() -> Option<SizeClasses<'static>> {
    let arena = KMEM_DEFAULT.get()?;
    // SAFETY: kmem_default hands out addresses of pages BackedPages mapped
    // writable and keeps mapped until they are freed.
    unsafe { SizeClasses::with_local(arena, &PHYS_META, &cpu::CURRENT, &local::LOCAL, false) }.ok()
}

/// The kernel heap: the size classes over `kmem_default`, whose blocks
/// above the largest class come from `kmem_default` itself (importing).
/// Every `Box`, `Vec` and `BTreeMap` allocates and frees through
/// `local::LOCAL`: the running CPU's own magazines, without a lock.
#[global_allocator]
pub static HEAP: GlobalHeap<DefaultLock, KernelLocal> =
    GlobalHeap::with_local(heap_classes, &local::LOCAL);

/// The quantum caches in front of `kmem_va`.
pub fn kmem_va_qcaches() -> &'static QuantumCaches<'static> {
    KMEM_VA_QCACHE.get().expect("made with kmem_va")
}

/// Maps `size` bytes of MMIO at physical `base` uncached into the device
/// arena, returning the virtual address of its first page.
pub fn map_device(base: PhysAddr, size: u64) -> Result<VirtAddr, MemError> {
    let size = size.next_multiple_of(PAGE);
    let va = device().alloc(size, Policy::InstantFit)?;
    let range = pages(va, size);
    let frame = PhysFrame::containing_address(base);
    let flags = Flags::WRITABLE | Flags::NO_CACHE | Flags::WRITE_THROUGH;
    for (i, page) in range.enumerate() {
        if let Err(e) = paging::map(page, frame + i as u64, flags) {
            for done in Page::range(range.start, page) {
                paging::unmap(done);
            }
            let _ = device().free(va, size);
            return Err(e);
        }
    }
    Ok(range.start.start_address())
}

/// A kernel stack from `kernel_va`: mapped pages above one unmapped guard
/// page.
#[derive(Clone, Copy, Debug)]
pub struct Stack {
    pub name: &'static str,
    pub guard: Page<Size4KiB>,
    /// The address above the stack's highest byte: its first push goes
    /// below.
    pub top: VirtAddr,
}

/// The boot CPU's two and two per CPU (kernel and double fault), and room.
const STACKS_MAX: usize = 4 + 2 * MAX_CPUS;
static STACKS: spin::Mutex<[Option<Stack>; STACKS_MAX]> = spin::Mutex::new([None; STACKS_MAX]);

/// The stack `kmain` moves to, once it has.
pub static MAIN_STACK: spin::Once<Stack> = spin::Once::new();

impl Stack {
    /// A stack of `pages` mapped pages, each backed by a frame of `phys`.
    pub fn new(name: &'static str, pages: u64) -> Result<Stack, MemError> {
        let guard = kernel_va().alloc((pages + 1) * PAGE, Policy::InstantFit)?;
        let guard = Page::containing_address(VirtAddr::new(guard));
        for page in Page::range(guard + 1, guard + 1 + pages) {
            let frame = phys().alloc(PAGE, Policy::InstantFit)?;
            paging::map(
                page,
                PhysFrame::containing_address(PhysAddr::new(frame)),
                Flags::WRITABLE,
            )?;
        }
        let stack = Stack {
            name,
            guard,
            top: (guard + 1 + pages).start_address(),
        };
        if let Some(slot) = STACKS.lock().iter_mut().find(|s| s.is_none()) {
            *slot = Some(stack);
        }
        Ok(stack)
    }

    /// The stack's lowest mapped address, just above the guard page.
    pub fn bottom(&self) -> VirtAddr {
        (self.guard + 1).start_address()
    }
}

/// The kernel stack that overflowed into its guard page, if a fault at
/// `addr` (cr2) with the stack pointer at `rsp` looks like that: the stack
/// pointer is in the guard page or just above it, and the fault address or
/// the stack pointer is in the guard page. (A stray read of a guard page
/// from higher up the stack, as the `fault` word makes, is not one.)
pub fn overflowed(addr: VirtAddr, rsp: VirtAddr) -> Option<Stack> {
    let stacks = STACKS.try_lock()?;
    stacks.iter().flatten().copied().find(|s| {
        let guard = s.guard.start_address()..s.bottom();
        (s.guard.start_address()..=s.bottom() + PAGE).contains(&rsp)
            && (guard.contains(&addr) || guard.contains(&rsp))
    })
}

/// Who owns an address, for the page-fault report.
pub struct Owner(VirtAddr);

impl Owner {
    pub fn of(addr: VirtAddr) -> Owner {
        Owner(addr)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.0;
        if let Some(stacks) = STACKS.try_lock() {
            for s in stacks.iter().flatten() {
                if Page::containing_address(addr) == s.guard {
                    return write!(
                        f,
                        "kernel_va: the guard page below kernel stack '{}' ({:#x}..{:#x}): a stack overflow or a stray pointer",
                        s.name,
                        s.bottom(),
                        s.top
                    );
                }
            }
        }
        if addr.as_u64() < PAGE {
            return write!(f, "nothing: a null pointer");
        }
        if let Some(pa) = virt_to_phys(addr) {
            let inside = try_phys().is_some_and(|p| p.contains(pa.as_u64(), 1).unwrap_or(false));
            return write!(
                f,
                "the direct map: physical {pa:#x}, {}",
                if inside {
                    "a frame of 'phys'"
                } else {
                    "not RAM that 'phys' manages"
                }
            );
        }
        // Most specific arena first.
        let Some(order) = KMEM_DEFAULT
            .get()
            .map(|_| [kmem_default(), kmem_va(), kernel_va(), device(), ids()])
        else {
            return write!(f, "unknown (the virtual arenas do not exist yet)");
        };
        for arena in order {
            if arena.contains(addr.as_u64(), 1).unwrap_or(false) {
                return write!(f, "arena '{}'", arena.name());
            }
        }
        write!(f, "no arena")
    }
}

/// What the checker found broken: in which arena (none: the heap's
/// caches), and what.
#[derive(Clone, Copy, Debug)]
pub struct CheckFailure {
    arena: Option<&'static str>,
    error: vmem_core::Error,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.arena {
            Some(name) => write!(f, "checker: arena {name}: {}", self.error),
            None => write!(f, "checker: heap caches: {}", self.error),
        }
    }
}

/// The arena checker on every arena, and the heap caches' checker. Takes
/// nothing from the heap, which may be exhausted.
pub fn check_all() -> Result<(), CheckFailure> {
    for arena in arenas() {
        arena.check().map_err(|error| CheckFailure {
            arena: Some(arena.name()),
            error,
        })?;
    }
    if let Some(classes) = HEAP.classes() {
        classes
            .check()
            .map_err(|error| CheckFailure { arena: None, error })?;
    }
    Ok(())
}
