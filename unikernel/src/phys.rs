//! `phys`: guest-physical RAM as a vmem arena of 4 KiB quanta, one span per
//! RAM range of the PVH map above page 0 (low RAM too: a starting CPU's trampoline page comes from there), minus the kernel image (with its
//! boot page tables and stacks) and the loader's data. Holes between
//! ranges (the PCI hole below 4 GiB, RAM above it) stay holes.
//!
//! Every arena's metadata (boundary tags, hash tables, slab records,
//! magazines) comes in pages from `PhysMeta`: frames of `phys` reached
//! through the direct map (`phys` itself takes only single pages).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use vmem_core::{Arena, ArenaConfig, MetaSource, Policy};
use x86_64::{PhysAddr, VirtAddr};

use crate::boot::MemRange;
use crate::cpu;
use crate::error::MemError;
use crate::layout::{LOW_MEMORY, PAGE, phys_to_virt, virt_to_phys};
use crate::paging::reachable;

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
/// with no lock held, and carving that page out of `phys` may itself need
/// tags. That nested request is served from a few frames set aside for it
/// (`PHYS_TAG_FRAMES`), topped up after each outer request. Were it
/// refused, `phys` would fall back to vmem-core's static tag pool and keep
/// the batch it took for good: the pool (2048 tags, 16 a batch) ran dry
/// after 128 refills, some 9,000 single-page allocations, and from then on
/// `phys` could split no free segment with most of memory free (the
/// `pressure` run found this: the heap stopped at 42 of 125 MiB).
pub struct PhysMeta;

pub static PHYS_META: PhysMeta = PhysMeta;

/// `phys`'s own meta source: [`PhysMeta`] for single pages, but no runs.
/// A run is a larger hash table, and one carved out of `phys` while it is
/// exhausted would stay once it recovers (a hash gives its tables back
/// only when its arena empties, and `phys` never does), so `phys` keeps
/// its hash within one page (256 buckets) and lets its chains grow instead.
struct PhysOwnMeta;

static PHYS_OWN_META: PhysOwnMeta = PhysOwnMeta;

impl MetaSource for PhysOwnMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        if pages != 1 {
            return None;
        }
        PHYS_META.alloc_pages(1)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        // SAFETY: the caller's promise: the pages came from `alloc_pages`,
        // that is from `PHYS_META`.
        unsafe { PHYS_META.free_pages(base, pages) }
    }
}

/// Frames `PhysMeta` took from `phys` and holds now: handed out as meta
/// pages, or set aside for `phys`'s own tags.
pub static META_PAGES: AtomicU64 = AtomicU64::new(0);

/// Frames set aside for nested requests; one refill of `phys` takes one.
const PHYS_TAG_FRAMES: usize = 4;
static SET_ASIDE: spin::Mutex<([u64; PHYS_TAG_FRAMES], usize)> =
    spin::Mutex::new(([0; PHYS_TAG_FRAMES], 0));

fn take_frames(pages: usize) -> Option<u64> {
    let frame = phys()
        .xalloc(pages as u64 * PAGE, &reachable(), Policy::InstantFit)
        .ok()?;
    META_PAGES.fetch_add(pages as u64, Ordering::Relaxed);
    Some(frame)
}

/// Sets frames aside until there are `PHYS_TAG_FRAMES` (or `phys` has none).
/// Each `take_frames` may itself use a set-aside frame; `phys` then holds a
/// page of fresh tags, so the next ones do not.
fn top_up_set_aside() {
    for _ in 0..2 * PHYS_TAG_FRAMES {
        if SET_ASIDE.lock().1 == PHYS_TAG_FRAMES {
            return;
        }
        let Some(frame) = take_frames(1) else { return };
        let mut set_aside = SET_ASIDE.lock();
        let (frames, count) = &mut *set_aside;
        match frames.get_mut(*count) {
            Some(slot) => {
                *slot = frame;
                *count += 1;
            }
            None => {
                drop(set_aside);
                let _ = phys().xfree(frame, PAGE);
                META_PAGES.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl MetaSource for PhysMeta {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        // Per CPU: another CPU allocating meta pages at the same time is
        // no nested request.
        let in_meta = &cpu::this().in_meta;
        if in_meta.swap(true, Ordering::Acquire) {
            // `phys` needs tags (or a larger hash) to carve the page being
            // asked for: only a set-aside frame serves, and only a tag page.
            if pages != 1 {
                return None;
            }
            let mut set_aside = SET_ASIDE.lock();
            let (frames, count) = &mut *set_aside;
            *count = count.checked_sub(1)?;
            return NonNull::new(phys_to_virt(PhysAddr::new(frames[*count])).as_mut_ptr());
        }
        let frame = take_frames(pages);
        top_up_set_aside();
        in_meta.store(false, Ordering::Release);
        NonNull::new(phys_to_virt(PhysAddr::new(frame?)).as_mut_ptr())
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        // The pages came from `phys` by xalloc, through the direct map, so
        // the free is not refused.
        if let Some(addr) = virt_to_phys(VirtAddr::from_ptr(base.as_ptr())) {
            let _ = phys().xfree(addr.as_u64(), pages as u64 * PAGE);
        }
        META_PAGES.fetch_sub(pages as u64, Ordering::Relaxed);
    }
}

/// Makes `phys` from the RAM ranges of `memmap`, leaving out `excluded`
/// ranges (`(base, size)`).
pub fn init(memmap: &[MemRange], excluded: &[(PhysAddr, u64)]) -> Result<(), MemError> {
    let arena = Arena::create(ArenaConfig::new("phys", PAGE).meta(&PHYS_OWN_META))?;
    let arena = PHYS.call_once(|| arena);
    for range in memmap.iter().filter(|r| r.kind == MemRange::RAM) {
        add_ram(
            arena,
            range.base.max(LOW_MEMORY.as_u64()),
            range.end(),
            excluded,
        )?;
    }
    Ok(())
}

/// Adds `[start, end)` minus the excluded ranges, each piece shrunk to
/// whole pages. (`start` and `end` are the arena's plain integers.)
fn add_ram(
    arena: &Arena<'static>,
    start: u64,
    end: u64,
    excluded: &[(PhysAddr, u64)],
) -> Result<(), vmem_core::Error> {
    let overlap = excluded
        .iter()
        .map(|&(base, size)| (base.as_u64(), size))
        .find(|&(base, size)| size > 0 && base < end && start < base + size);
    if let Some((base, size)) = overlap {
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
