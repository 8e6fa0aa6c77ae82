//! The kernel's virtual memory, as the illumos boot arenas arrange it:
//!
//! - `kernel_va`: the kernel's virtual range, spans with no memory behind;
//! - `kmem_va`: imports from `kernel_va`, with quantum caches for sizes up
//!   to 16 pages, so the heap's imports take the magazine fast path;
//! - `kmem_default`: imports from `kmem_va` through `BackedPages`, which
//!   backs each page with a frame from `phys` and maps it, and on release
//!   unmaps, flushes and frees the frames;
//! - the heap: vmem-core's size classes over `kmem_default`, the
//!   `#[global_allocator]`;
//! - `device`: virtual ranges for MMIO, mapped uncached;
//! - `ids`: task IDs, quantum 1, handed out by next fit;
//! - kernel stacks from `kernel_va`, each with an unmapped guard page below.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use vmem_core::{
    Arena, ArenaConfig, CPU0, Error, ErrorKind, GlobalHeap, Importer, Policy, QCACHE_MAX_QUANTA,
    QuantumCaches, SizeClasses, Source,
};
use x86_64::structures::paging::PageTableFlags as Flags;

use crate::paging::{
    self, DEVICE_BASE, DEVICE_SIZE, DIRECT_BASE, KERNEL_VA_BASE, KERNEL_VA_SIZE, PAGE,
};
use crate::phys::{PHYS_META, phys, try_phys};

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
    /// Unmaps `[base, base + size)` page by page, frees the frames, and
    /// frees the page tables that emptied.
    fn unback(base: u64, size: u64) {
        for va in (base..base + size).step_by(PAGE as usize) {
            if let Some(frame) = paging::unmap(va) {
                PAGES_UNMAPPED.fetch_add(1, Ordering::Relaxed);
                // The frame came from `phys().alloc` in `import`.
                let _ = phys().free(frame, PAGE);
            }
        }
        if size > 0 {
            paging::free_empty_tables(base, size);
        }
    }
}

impl Source for BackedPages {
    fn import(&self, _importer: Importer, size: u64, _align: u64) -> vmem_core::Result<u64> {
        let base = kmem_va().alloc(size, Policy::InstantFit)?;
        for va in (base..base + size).step_by(PAGE as usize) {
            let mapped = phys().alloc(PAGE, Policy::InstantFit).and_then(|frame| {
                paging::map(va, frame, Flags::WRITABLE).map_err(|_| {
                    let _ = phys().free(frame, PAGE);
                    Error::new(ErrorKind::NoSpace, "no frame for a page table")
                })
            });
            if let Err(e) = mapped {
                Self::unback(base, va - base);
                let _ = kmem_va().free(base, size);
                return Err(e);
            }
            PAGES_MAPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(base)
    }

    // `BACKED_PAGES` is private to this module and kmem_default its only
    // importer, so the importer needs no check.
    fn release(&self, _importer: Importer, base: u64, size: u64) -> vmem_core::Result<()> {
        Self::unback(base, size);
        kmem_va().free(base, size)
    }
}

/// Makes the virtual arenas (after `phys` and the kernel's page tables).
pub fn init() -> vmem_core::Result<()> {
    let kernel_va = Arena::create(
        ArenaConfig::new("kernel_va", PAGE)
            .span(KERNEL_VA_BASE, KERNEL_VA_SIZE)
            .meta(&PHYS_META),
    )?;
    let kernel_va = KERNEL_VA.call_once(|| kernel_va);
    let qc = QuantumCaches::new(PAGE, QCACHE_MAX_QUANTA * PAGE, &PHYS_META, &CPU0)?;
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
            .span(DEVICE_BASE, DEVICE_SIZE)
            .meta(&PHYS_META),
    )?;
    DEVICE.call_once(|| device);
    let ids = Arena::create(ArenaConfig::new("ids", 1).span(1, 1 << 20).meta(&PHYS_META))?;
    IDS.call_once(|| ids);
    Ok(())
}

fn heap_classes() -> Option<SizeClasses<'static>> {
    let arena = KMEM_DEFAULT.get()?;
    // SAFETY: kmem_default hands out addresses of pages BackedPages mapped
    // writable and keeps mapped until they are freed.
    unsafe { SizeClasses::new(arena, &PHYS_META, &CPU0, false) }.ok()
}

/// The kernel heap: the size classes over `kmem_default`, whose blocks
/// above the largest class come from `kmem_default` itself (importing).
#[global_allocator]
pub static HEAP: GlobalHeap = GlobalHeap::new(heap_classes);

/// The quantum caches in front of `kmem_va`.
pub fn kmem_va_qcaches() -> &'static QuantumCaches<'static> {
    KMEM_VA_QCACHE.get().expect("made with kmem_va")
}

/// Maps `size` bytes of MMIO at physical `base` uncached into the device
/// arena, returning the virtual address.
pub fn map_device(base: u64, size: u64) -> vmem_core::Result<u64> {
    let size = size.next_multiple_of(PAGE);
    let va = device().alloc(size, Policy::InstantFit)?;
    for off in (0..size).step_by(PAGE as usize) {
        let flags = Flags::WRITABLE | Flags::NO_CACHE | Flags::WRITE_THROUGH;
        if paging::map(va + off, base + off, flags).is_err() {
            for done in (0..off).step_by(PAGE as usize) {
                paging::unmap(va + done);
            }
            let _ = device().free(va, size);
            return Err(Error::new(ErrorKind::NoSpace, "no frame for a page table"));
        }
    }
    Ok(va)
}

/// A kernel stack from `kernel_va`: `pages` mapped pages above one
/// unmapped guard page.
#[derive(Clone, Copy, Debug)]
pub struct Stack {
    pub name: &'static str,
    pub guard: u64,
    pub top: u64,
}

const STACKS_MAX: usize = 4;
static STACKS: spin::Mutex<[Option<Stack>; STACKS_MAX]> = spin::Mutex::new([None; STACKS_MAX]);

impl Stack {
    pub fn new(name: &'static str, pages: u64) -> vmem_core::Result<Stack> {
        let guard = kernel_va().alloc((pages + 1) * PAGE, Policy::InstantFit)?;
        for i in 1..=pages {
            let frame = phys().alloc(PAGE, Policy::InstantFit)?;
            paging::map(guard + i * PAGE, frame, Flags::WRITABLE)
                .map_err(|_| Error::new(ErrorKind::NoSpace, "no frame for a page table"))?;
        }
        let stack = Stack {
            name,
            guard,
            top: guard + (pages + 1) * PAGE,
        };
        if let Some(slot) = STACKS.lock().iter_mut().find(|s| s.is_none()) {
            *slot = Some(stack);
        }
        Ok(stack)
    }
}

/// The kernel stack that overflowed into its guard page, if a fault at
/// `addr` (cr2) with the stack pointer at `rsp` looks like that: the stack
/// pointer is in the guard page or just above it, and the fault address or
/// the stack pointer is in the guard page. (A stray read of a guard page
/// from higher up the stack, as the `fault` word makes, is not one.)
pub fn overflowed(addr: u64, rsp: u64) -> Option<Stack> {
    let stacks = STACKS.try_lock()?;
    stacks.iter().flatten().copied().find(|s| {
        let guard = s.guard..s.guard + PAGE;
        (s.guard..=s.guard + 2 * PAGE).contains(&rsp)
            && (guard.contains(&addr) || guard.contains(&rsp))
    })
}

/// Who owns an address, for the page-fault report.
pub struct Owner(u64);

impl Owner {
    pub fn of(addr: u64) -> Owner {
        Owner(addr)
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.0;
        if let Some(stacks) = STACKS.try_lock() {
            for s in stacks.iter().flatten() {
                if (s.guard..s.guard + PAGE).contains(&addr) {
                    return write!(
                        f,
                        "kernel_va: the guard page below kernel stack '{}' ({:#x}..{:#x}): a stack overflow or a stray pointer",
                        s.name,
                        s.guard + PAGE,
                        s.top
                    );
                }
            }
        }
        if addr < PAGE {
            return write!(f, "nothing: a null pointer");
        }
        if (DIRECT_BASE..KERNEL_VA_BASE).contains(&addr) {
            let pa = addr - DIRECT_BASE;
            let inside = try_phys().is_some_and(|p| p.contains(pa, 1).unwrap_or(false));
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
            if arena.contains(addr, 1).unwrap_or(false) {
                return write!(f, "arena '{}'", arena.name());
            }
        }
        write!(f, "no arena")
    }
}
