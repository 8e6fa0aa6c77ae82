//! The kernel's page tables: a direct map of all RAM at `DIRECT_BASE`
//! (1 GiB pages where the CPU has them, else 2 MiB), the kernel image
//! identity mapped with 4 KiB pages (so page 0 stays unmapped), and
//! 4 KiB mappings made on demand for the virtual arenas.
//!
//! Page-table frames come by `xalloc` from the arena `build` is handed
//! (`phys`) through `TableFrames`, never from the heap, so mapping a heap
//! page never recurses into the heap; `free_empty_tables` gives a table
//! back when unmapping empties it. While the boot tables are live only
//! the low 4 GiB are reachable through the direct-map base, so frames are
//! taken below 4 GiB until the kernel's own tables are loaded.
//!
//! The page tables sit below the arenas: they name none of them, and
//! reach `phys` only through the reference `build` keeps.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmem_core::{Arena, Constraints, Policy};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::{CleanUp, Translate};
use x86_64::structures::paging::page::PageRange;
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, OffsetPageTable, Page, PageSize, PageTable,
    PageTableFlags as Flags, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::boot::MemRange;
use crate::cpu;
use crate::error::MemError;
use crate::layout::{BOOT_MAPPED_END, DIRECT_BASE, PAGE, phys_to_virt};

/// Bytes one last-level page table maps.
const TABLE_REACH: u64 = Size2MiB::SIZE;

static BOOT_TABLES: AtomicBool = AtomicBool::new(true);
/// Page-table frames taken from `phys` and not given back.
pub static TABLE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// The kernel's address space, once `build` has loaded it.
static KERNEL_MAP: spin::Mutex<Option<OffsetPageTable<'static>>> = spin::Mutex::new(None);

/// Where page-table frames come from (`phys`), set by `build`.
static TABLE_SOURCE: spin::Once<&'static Arena<'static>> = spin::Once::new();

/// Where frames the kernel must reach at once may lie: anywhere once the
/// kernel's tables are live, below 4 GiB while the boot tables are.
pub fn reachable() -> Constraints {
    Constraints {
        max: if BOOT_TABLES.load(Ordering::Acquire) {
            BOOT_MAPPED_END.as_u64()
        } else {
            0
        },
        ..Constraints::aligned(PAGE)
    }
}

/// Page-table frames, zeroed, from the arena `build` was handed.
pub struct TableFrames;

// SAFETY: each frame is a fresh 4 KiB allocation from `phys`, used by
// nothing else until the page tables give it back (`free_empty_tables`).
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let source = TABLE_SOURCE.get()?;
        let addr = source.xalloc(PAGE, &reachable(), Policy::InstantFit).ok()?;
        TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
        PhysFrame::from_start_address(PhysAddr::new(addr)).ok()
    }
}

/// Builds the kernel's page tables and loads them: the direct map of every
/// RAM range in `memmap`, and the kernel image at its physical address.
/// Page-table frames come from `frames` (`phys`), now and from then on.
pub fn build(
    memmap: &[MemRange],
    image: Range<PhysAddr>,
    frames: &'static Arena<'static>,
) -> Result<(), MemError> {
    TABLE_SOURCE.call_once(|| frames);
    let pml4 = TableFrames.allocate_frame().ok_or(MemError::NoTableFrame)?;
    let pml4_ptr = phys_to_virt(pml4.start_address()).as_mut_ptr::<PageTable>();
    // SAFETY: a fresh frame below 4 GiB, reached through the boot tables'
    // direct-map alias, owned by the page tables from now on.
    let table = unsafe {
        pml4_ptr.write(PageTable::new());
        &mut *pml4_ptr
    };
    // SAFETY: every table frame is reached at DIRECT_BASE + its address.
    let mut map = unsafe { OffsetPageTable::new(table, DIRECT_BASE) };
    let rw = Flags::PRESENT | Flags::WRITABLE;
    let huge = cpu::has_1g_pages();
    for range in memmap
        .iter()
        .filter(|r| r.kind == MemRange::RAM && r.size > 0)
    {
        let unit = if huge { Size1GiB::SIZE } else { Size2MiB::SIZE };
        let mut addr = PhysAddr::new(range.base).align_down(unit);
        while addr.as_u64() < range.end() {
            // Neighbouring ranges may share a unit.
            if map.translate_addr(phys_to_virt(addr)).is_none() {
                if huge {
                    map_direct::<Size1GiB>(&mut map, addr, rw)?;
                } else {
                    map_direct::<Size2MiB>(&mut map, addr, rw)?;
                }
            }
            addr += unit;
        }
    }
    let first = PhysFrame::<Size4KiB>::containing_address(image.start);
    let last = PhysFrame::containing_address(image.end - 1u64);
    for frame in PhysFrame::range_inclusive(first, last) {
        // SAFETY: the kernel image, mapped where it runs now.
        unsafe { map.identity_map(frame, rw, &mut TableFrames) }?.ignore();
    }
    // SAFETY: the new tables map the kernel image where it runs (code,
    // stack, statics) and the direct map, which is all the kernel uses.
    unsafe { Cr3::write(pml4, Cr3Flags::empty()) };
    BOOT_TABLES.store(false, Ordering::Release);
    *KERNEL_MAP.lock() = Some(map);
    Ok(())
}

/// Maps the `S`-sized page of the direct map that holds physical `addr`.
fn map_direct<S: PageSize>(
    map: &mut OffsetPageTable<'static>,
    addr: PhysAddr,
    flags: Flags,
) -> Result<(), MemError>
where
    OffsetPageTable<'static>: Mapper<S>,
{
    let frame = PhysFrame::<S>::containing_address(addr);
    let page = Page::<S>::containing_address(phys_to_virt(frame.start_address()));
    // SAFETY: the direct map aliases RAM nothing else maps at these
    // addresses; the frames are not handed out by this.
    unsafe { map.map_to(page, frame, flags, &mut TableFrames) }?.ignore();
    Ok(())
}

/// Maps `page` to `frame` with `flags` (plus present).
pub fn map(page: Page<Size4KiB>, frame: PhysFrame<Size4KiB>, flags: Flags) -> Result<(), MemError> {
    let mut guard = KERNEL_MAP.lock();
    let map = guard.as_mut().ok_or(MemError::NoTableFrame)?;
    // SAFETY: callers map virtual ranges their arena handed them, which
    // nothing else maps, to frames they own.
    unsafe { map.map_to(page, frame, flags | Flags::PRESENT, &mut TableFrames) }?.flush();
    Ok(())
}

/// Unmaps `page`, flushes it from the TLB, and returns the frame it
/// mapped.
pub fn unmap(page: Page<Size4KiB>) -> Option<PhysFrame<Size4KiB>> {
    let mut guard = KERNEL_MAP.lock();
    let map = guard.as_mut()?;
    let (frame, flush) = map.unmap(page).ok()?;
    flush.flush();
    Some(frame)
}

/// The physical address `virt` maps to, if any.
pub fn translate(virt: VirtAddr) -> Option<PhysAddr> {
    let guard = KERNEL_MAP.lock();
    guard.as_ref()?.translate_addr(virt)
}

/// Table frames one clean-up of a `TABLE_REACH` range can empty: its last-level
/// table and the two above it. They go back to `phys` after the TLB flush.
#[derive(Default)]
struct EmptiedTables {
    frames: [Option<PhysFrame>; 3],
    count: usize,
}

/// Only remembers the frames: `free_empty_tables` frees them once no paging
/// structure or cache refers to them.
impl FrameDeallocator<Size4KiB> for EmptiedTables {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        if let Some(slot) = self.frames.get_mut(self.count) {
            *slot = Some(frame);
            self.count += 1;
        }
    }
}

/// Page-table frames emptied but not yet free: other CPUs' paging-structure
/// caches may still point at them until a shootdown round has run. Kept
/// as a list threaded through the frames themselves (first word: the
/// next frame), so holding them needs no memory.
#[derive(Default)]
pub struct DeferredTables {
    head: Option<PhysFrame>,
    pub count: u64,
}

impl DeferredTables {
    pub const fn new() -> DeferredTables {
        DeferredTables {
            head: None,
            count: 0,
        }
    }

    fn push(&mut self, frame: PhysFrame) {
        let next = self.head.map_or(0, |f| f.start_address().as_u64());
        // SAFETY: an emptied table frame nothing refers to any more, ours
        // until freed, reached through the direct map.
        unsafe {
            phys_to_virt(frame.start_address())
                .as_mut_ptr::<u64>()
                .write(next)
        };
        self.head = Some(frame);
        self.count += 1;
    }

    /// Gives every frame back to `phys` (after the shootdown).
    pub fn free(&mut self) {
        while let Some(frame) = self.head.take() {
            // SAFETY: written by `push`.
            let next = unsafe { phys_to_virt(frame.start_address()).as_ptr::<u64>().read() };
            self.head = (next != 0).then(|| PhysFrame::containing_address(PhysAddr::new(next)));
            free_table_frame(frame);
        }
        self.count = 0;
    }
}

fn free_table_frame(frame: PhysFrame) {
    if let Some(source) = TABLE_SOURCE.get() {
        // The frame came from the source by xalloc in `TableFrames`.
        let _ = source.xfree(frame.start_address().as_u64(), PAGE);
    }
    TABLE_FRAMES.fetch_sub(1, Ordering::Relaxed);
}

/// Gives back to `phys` the page-table frames (last-level tables and the
/// two levels above) that `pages`, now unmapped, left with no entry in
/// use. A table is freed the moment it empties (or, with `defer`, put on
/// that list until a shootdown round), so the tables held are those the
/// mapped pages need, and `TABLE_FRAMES` comes back to what it was once
/// the same pages are mapped again.
pub fn free_empty_tables(pages: PageRange<Size4KiB>, mut defer: Option<&mut DeferredTables>) {
    if pages.is_empty() {
        return;
    }
    let end = pages.end.start_address();
    let mut chunk = pages.start.start_address().align_down(TABLE_REACH);
    while chunk < end {
        let first = chunk.max(pages.start.start_address());
        let last = (chunk + TABLE_REACH).min(end) - PAGE;
        let range = Page::range_inclusive(
            Page::<Size4KiB>::containing_address(first),
            Page::containing_address(last),
        );
        let mut emptied = EmptiedTables::default();
        {
            let mut guard = KERNEL_MAP.lock();
            let Some(map) = guard.as_mut() else { return };
            // SAFETY: every table frame below the direct map's huge pages
            // came from `TableFrames` for this one address space and
            // is used by no other table.
            unsafe { map.clean_up_addr_range(range, &mut emptied) };
            if emptied.count > 0 {
                // INVLPG drops every paging-structure cache entry too, so no
                // walk reaches the emptied tables once their frames are reused.
                x86_64::instructions::tlb::flush(first);
            }
        }
        for frame in emptied.frames.iter().flatten() {
            match defer.as_deref_mut() {
                Some(list) => list.push(*frame),
                None => free_table_frame(*frame),
            }
        }
        chunk += TABLE_REACH;
    }
}
