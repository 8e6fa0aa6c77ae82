//! The kernel's page tables: a direct map of all RAM at `DIRECT_BASE`
//! (1 GiB pages where the CPU has them, else 2 MiB), the kernel image
//! identity mapped with 4 KiB pages (so page 0 stays unmapped), and
//! 4 KiB mappings made on demand for the virtual arenas.
//!
//! Page-table frames come from `phys` by `xalloc` through `TableFrames`,
//! never from the heap, so mapping a heap page never recurses into the
//! heap; `free_empty_tables` gives a table back when unmapping empties it. While the boot tables are live only the low 4 GiB are reachable
//! through the direct-map base, so frames are taken below 4 GiB until the
//! kernel's own tables are loaded.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vmem_core::{Constraints, Policy};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::mapper::{CleanUp, MapToError, Translate};
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Mapper, OffsetPageTable, Page, PageTable,
    PageTableFlags as Flags, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::boot::MemRange;
use crate::phys::phys;

/// Where all of RAM appears (PML4 slot 256).
pub const DIRECT_BASE: u64 = 0xffff_8000_0000_0000;
/// The kernel's virtual range for `kernel_va` (PML4 slot 384).
pub const KERNEL_VA_BASE: u64 = 0xffff_c000_0000_0000;
pub const KERNEL_VA_SIZE: u64 = 64 << 30;
/// MMIO mappings for the `device` arena (PML4 slot 416).
pub const DEVICE_BASE: u64 = 0xffff_d000_0000_0000;
pub const DEVICE_SIZE: u64 = 1 << 30;

pub const PAGE: u64 = 4096;

/// Bytes one last-level page table maps.
const TABLE_REACH: u64 = 2 << 20;

static BOOT_TABLES: AtomicBool = AtomicBool::new(true);
/// Page-table frames taken from `phys` and not given back.
pub static TABLE_FRAMES: AtomicU64 = AtomicU64::new(0);

/// The kernel's address space, once `build` has loaded it.
static KERNEL_MAP: spin::Mutex<Option<OffsetPageTable<'static>>> = spin::Mutex::new(None);

/// The direct-map address of physical `addr`.
pub fn phys_to_virt(addr: u64) -> u64 {
    DIRECT_BASE + addr
}

/// Where frames the kernel must reach at once may lie: anywhere once the
/// kernel's tables are live, below 4 GiB while the boot tables are.
pub fn reachable() -> Constraints {
    Constraints {
        max: if BOOT_TABLES.load(Ordering::Acquire) {
            1 << 32
        } else {
            0
        },
        ..Constraints::aligned(PAGE)
    }
}

/// Page-table frames, zeroed, from `phys`.
pub struct TableFrames;

// SAFETY: each frame is a fresh 4 KiB allocation from `phys`, used by
// nothing else until the page tables give it back (`free_empty_tables`).
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let addr = phys().xalloc(PAGE, &reachable(), Policy::InstantFit).ok()?;
        TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
        PhysFrame::from_start_address(PhysAddr::new(addr)).ok()
    }
}

/// Builds the kernel's page tables and loads them: the direct map of every
/// RAM range in `memmap`, and the kernel image `[image_start, image_end)`
/// at its physical address.
pub fn build(memmap: &[MemRange], image_start: u64, image_end: u64) -> Result<(), &'static str> {
    let pml4 = TableFrames
        .allocate_frame()
        .ok_or("no frame for the PML4")?;
    let pml4_ptr = phys_to_virt(pml4.start_address().as_u64()) as *mut PageTable;
    // SAFETY: a fresh frame below 4 GiB, reached through the boot tables'
    // direct-map alias, owned by the page tables from now on.
    let table = unsafe {
        pml4_ptr.write(PageTable::new());
        &mut *pml4_ptr
    };
    // SAFETY: every table frame is reached at DIRECT_BASE + its address.
    let mut map = unsafe { OffsetPageTable::new(table, VirtAddr::new(DIRECT_BASE)) };
    let rw = Flags::PRESENT | Flags::WRITABLE;
    let huge = crate::cpu::has_1g_pages();
    for range in memmap
        .iter()
        .filter(|r| r.kind == MemRange::RAM && r.size > 0)
    {
        let unit = if huge { 1 << 30 } else { 2 << 20 };
        let mut addr = range.base & !(unit - 1);
        while addr < range.end() {
            let virt = VirtAddr::new(phys_to_virt(addr));
            // Neighbouring ranges may share a unit.
            if map.translate_addr(virt).is_none() {
                // SAFETY: the direct map aliases RAM nothing else maps at
                // these addresses; the frames are not handed out by this.
                let result = unsafe {
                    if huge {
                        map.map_to(
                            Page::<Size1GiB>::containing_address(virt),
                            PhysFrame::containing_address(PhysAddr::new(addr)),
                            rw,
                            &mut TableFrames,
                        )
                        .map(|f| f.ignore())
                        .map_err(|_| ())
                    } else {
                        map.map_to(
                            Page::<Size2MiB>::containing_address(virt),
                            PhysFrame::containing_address(PhysAddr::new(addr)),
                            rw,
                            &mut TableFrames,
                        )
                        .map(|f| f.ignore())
                        .map_err(|_| ())
                    }
                };
                result.map_err(|()| "direct map: mapping failed")?;
            }
            addr += unit;
        }
    }
    let mut addr = image_start;
    while addr < image_end {
        let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(addr));
        // SAFETY: the kernel image, mapped where it runs now.
        unsafe { map.identity_map(frame, rw, &mut TableFrames) }
            .map_err(|_| "kernel image: mapping failed")?
            .ignore();
        addr += PAGE;
    }
    // SAFETY: the new tables map the kernel image where it runs (code,
    // stack, statics) and the direct map, which is all the kernel uses.
    unsafe { Cr3::write(pml4, Cr3Flags::empty()) };
    BOOT_TABLES.store(false, Ordering::Release);
    *KERNEL_MAP.lock() = Some(map);
    Ok(())
}

/// Maps the 4 KiB page at `virt` to the frame at `phys` with `flags` (plus
/// present).
pub fn map(virt: u64, phys: u64, flags: Flags) -> Result<(), MapToError<Size4KiB>> {
    let mut guard = KERNEL_MAP.lock();
    let map = guard.as_mut().ok_or(MapToError::FrameAllocationFailed)?;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    // SAFETY: callers map virtual ranges their arena handed them, which
    // nothing else maps, to frames they own.
    unsafe { map.map_to(page, frame, flags | Flags::PRESENT, &mut TableFrames) }?.flush();
    Ok(())
}

/// Unmaps the 4 KiB page at `virt`, flushes it from the TLB, and returns
/// the frame it mapped.
pub fn unmap(virt: u64) -> Option<u64> {
    let mut guard = KERNEL_MAP.lock();
    let map = guard.as_mut()?;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
    let (frame, flush) = map.unmap(page).ok()?;
    flush.flush();
    Some(frame.start_address().as_u64())
}

/// The physical address `virt` maps to, if any.
pub fn translate(virt: u64) -> Option<u64> {
    let guard = KERNEL_MAP.lock();
    let map = guard.as_ref()?;
    map.translate_addr(VirtAddr::try_new(virt).ok()?)
        .map(|p| p.as_u64())
}

/// Table frames one clean-up of a `TABLE_REACH` range can empty: its last-level
/// table and the two above it. They go back to `phys` after the TLB flush.
#[derive(Default)]
struct EmptiedTables {
    frames: [u64; 3],
    count: usize,
}

/// Only remembers the frames: `free_empty_tables` frees them once no paging
/// structure or cache refers to them.
impl FrameDeallocator<Size4KiB> for EmptiedTables {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        if let Some(slot) = self.frames.get_mut(self.count) {
            *slot = frame.start_address().as_u64();
            self.count += 1;
        }
    }
}

/// Gives back to `phys` the page-table frames (last-level tables and the
/// two levels above) that `[virt, virt + size)`, now unmapped, left with no
/// entry in use. A table is freed the moment it empties, so the tables
/// held are those the mapped pages need, and `TABLE_FRAMES` comes back to
/// what it was once the same pages are mapped again.
pub fn free_empty_tables(virt: u64, size: u64) {
    let end = virt + size;
    let mut chunk = virt & !(TABLE_REACH - 1);
    while chunk < end {
        let first = chunk.max(virt);
        let last = (chunk + TABLE_REACH).min(end) - PAGE;
        let range = Page::range_inclusive(
            Page::<Size4KiB>::containing_address(VirtAddr::new(first)),
            Page::containing_address(VirtAddr::new(last)),
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
                x86_64::instructions::tlb::flush(VirtAddr::new(first));
            }
        }
        for &frame in &emptied.frames[..emptied.count] {
            // The frame came from `phys` by xalloc in `TableFrames`.
            let _ = phys().xfree(frame, PAGE);
            TABLE_FRAMES.fetch_sub(1, Ordering::Relaxed);
        }
        chunk += TABLE_REACH;
    }
}
