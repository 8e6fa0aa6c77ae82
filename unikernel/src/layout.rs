//! The kernel's address space in one place: where RAM, the kernel image,
//! the virtual arenas and MMIO lie, and the conversions between physical
//! and virtual addresses.
//!
//! Virtual, by PML4 slot:
//!
//! | slot | from             | what                                              |
//! |------|------------------|---------------------------------------------------|
//! | 0    | 1 MiB            | the kernel image, identity mapped where it loaded |
//! | 256  | `DIRECT_BASE`    | the direct map: all of RAM, at its address        |
//! | 384  | `KERNEL_VA_BASE` | `kernel_va` (64 GiB): `kmem_va`, the heap, stacks |
//! | 416  | `DEVICE_BASE`    | `device` (1 GiB): MMIO, mapped uncached           |
//!
//! Physical: page 0 (the real-mode interrupt table) is left alone, RAM
//! below `REAL_MODE_END` is where a starting CPU's first page must lie
//! (so `phys` keeps it, for the trampoline), the boot tables reach
//! only what lies below `BOOT_MAPPED_END`, and the local APIC and IOAPIC
//! sit at their fixed addresses.
//!
//! Everywhere outside the arenas an address is typed (`PhysAddr`,
//! `VirtAddr`, `PhysFrame`, `Page`), so a physical one cannot go where a
//! virtual one is wanted. The arenas stay sets of plain integers: a value
//! an arena hands out becomes typed at the call that took it, and a typed
//! one goes back with `as_u64` at the call that frees it.

use core::ops::Range;

use x86_64::structures::paging::{PageSize, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

/// The smallest page, and the quantum of every page-sized arena.
pub const PAGE: u64 = Size4KiB::SIZE;

/// Where all of RAM appears (PML4 slot 256).
pub const DIRECT_BASE: VirtAddr = VirtAddr::new(0xffff_8000_0000_0000);
/// The kernel's virtual range for `kernel_va` (PML4 slot 384).
pub const KERNEL_VA_BASE: VirtAddr = VirtAddr::new(0xffff_c000_0000_0000);
pub const KERNEL_VA_SIZE: u64 = 64 << 30;
/// MMIO mappings for the `device` arena (PML4 slot 416).
pub const DEVICE_BASE: VirtAddr = VirtAddr::new(0xffff_d000_0000_0000);
pub const DEVICE_SIZE: u64 = 1 << 30;

/// RAM below this is left alone (page 0: the real-mode interrupt table).
pub const LOW_MEMORY: PhysAddr = PhysAddr::new(PAGE);
/// A startup IPI names a page below this (its vector is the page number).
pub const REAL_MODE_END: PhysAddr = PhysAddr::new(1 << 20);
/// The boot tables map physical memory up to here (the low 4 GiB), at 0
/// and at `DIRECT_BASE`.
pub const BOOT_MAPPED_END: PhysAddr = PhysAddr::new(1 << 32);

/// The local APIC's registers.
pub const LAPIC: PhysAddr = PhysAddr::new(0xfee0_0000);
/// The IOAPIC's registers.
pub const IOAPIC: PhysAddr = PhysAddr::new(0xfec0_0000);

/// Pages of the main kernel stack (the heap's size classes, some 100 KiB,
/// are built on it by value and moved a few times) and of the
/// double-fault stack. Both come
/// from `kernel_va`, each above an unmapped guard page.
pub const MAIN_STACK_PAGES: u64 = 128;
pub const DOUBLE_FAULT_STACK_PAGES: u64 = 4;

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image (code, data, the boot tables and stack in `.bss`),
/// from the linker script's bounds; it runs at its physical address.
pub fn kernel_image() -> Range<PhysAddr> {
    let start = &raw const __kernel_start as u64;
    let end = &raw const __kernel_end as u64;
    PhysAddr::new(start)..PhysAddr::new(end)
}

/// The direct-map address of physical `addr`.
pub fn phys_to_virt(addr: PhysAddr) -> VirtAddr {
    DIRECT_BASE + addr.as_u64()
}

/// The physical address behind direct-map address `addr`, or `None` if
/// `addr` is not in the direct map.
pub fn virt_to_phys(addr: VirtAddr) -> Option<PhysAddr> {
    (DIRECT_BASE..KERNEL_VA_BASE)
        .contains(&addr)
        .then(|| PhysAddr::new(addr - DIRECT_BASE))
}
