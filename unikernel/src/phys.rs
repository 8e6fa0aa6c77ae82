//! `phys`: guest-physical RAM as a vmem arena of 4 KiB quanta, one span per
//! RAM range of the PVH map above 1 MiB, minus the kernel image (with its
//! boot page tables and stacks) and the loader's data. Holes between
//! ranges (the PCI hole below 4 GiB, RAM above it) stay holes.
//!
//! Every arena's metadata (boundary tags, hash tables, slab records,
//! magazines) comes in pages from `PhysMeta`: frames of `phys` reached
//! through the direct map.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use vmem_core::{Arena, ArenaConfig, MetaSource, Policy};

use crate::boot::MemRange;
use crate::paging::{DIRECT_BASE, PAGE, phys_to_virt, reachable};

/// RAM below this is left alone (real-mode data, the legacy holes).
const LOW_MEMORY: u64 = 1 << 20;

static PHYS: spin::Once<Arena<'static>> = spin::Once::new();

/// The `phys` arena (made by `init`).
pub fn phys() -> &'static Arena<'static> {
    PHYS.get().expect("phys is made first thing in kmain")
}

/// `phys`, if it was made.
pub fn try_phys() -> Option<&'static Arena<'static>> {
    PHYS.get()
}

/// Meta pages from `phys`, through the direct map.
///
/// `phys` takes its own metadata from here too. Its refill asks for a page
/// with no lock held; that allocation may itself need tags, and then the
/// nested request is refused (the arena falls back to the static tag pool
/// for that one refill) instead of recursing without end.
pub struct PhysMeta;

pub static PHYS_META: PhysMeta = PhysMeta;

/// Set while `PhysMeta` is allocating (one CPU, so one flag suffices).
static IN_META: AtomicBool = AtomicBool::new(false);

impl MetaSource for PhysMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        if IN_META.swap(true, Ordering::Acquire) {
            return None;
        }
        let frame = phys().xalloc(pages as u64 * PAGE, &reachable(), Policy::InstantFit);
        IN_META.store(false, Ordering::Release);
        NonNull::new(phys_to_virt(frame.ok()?) as *mut u8)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        let addr = base.as_ptr() as u64 - DIRECT_BASE;
        // The pages came from `phys` by xalloc, so the free is not refused.
        let _ = phys().xfree(addr, pages as u64 * PAGE);
    }
}

/// Makes `phys` from the RAM ranges of `memmap`, leaving out `excluded`
/// ranges (`(base, size)`).
pub fn init(memmap: &[MemRange], excluded: &[(u64, u64)]) -> Result<(), vmem_core::Error> {
    let arena = Arena::create(ArenaConfig::new("phys", PAGE).meta(&PHYS_META))?;
    let arena = PHYS.call_once(|| arena);
    for range in memmap.iter().filter(|r| r.kind == MemRange::RAM) {
        add_ram(arena, range.base.max(LOW_MEMORY), range.end(), excluded)?;
    }
    Ok(())
}

/// Adds `[start, end)` minus the excluded ranges, each piece shrunk to
/// whole pages.
fn add_ram(
    arena: &Arena<'static>,
    start: u64,
    end: u64,
    excluded: &[(u64, u64)],
) -> Result<(), vmem_core::Error> {
    let overlap = excluded
        .iter()
        .find(|&&(base, size)| size > 0 && base < end && start < base + size);
    if let Some(&(base, size)) = overlap {
        if start < base {
            add_ram(arena, start, base, excluded)?;
        }
        if base + size < end {
            add_ram(arena, base + size, end, excluded)?;
        }
        return Ok(());
    }
    let first = start.next_multiple_of(PAGE);
    let last = end & !(PAGE - 1);
    if first < last {
        arena.add_span(first, last - first)?;
    }
    Ok(())
}
