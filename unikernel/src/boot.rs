//! PVH boot: the ELF note that tells QEMU where to enter, the 32-bit stub
//! that reaches long mode, and a copy of what the loader handed over
//! (`hvm_start_info`, the memory map and the command line).
//!
//! At the PVH entry the CPU is in 32-bit protected mode with paging off and
//! `ebx` holding the physical address of `hvm_start_info`; there is no
//! stack, GDT or IDT. The stub zeroes `.bss` (its page tables and stack live
//! there), builds page tables that map the low 4 GiB twice, at 0 (the
//! kernel runs where it was loaded) and at the direct-map base (so Rust
//! code reaches low RAM the way it will once the real direct map exists),
//! enables PAE, long mode, paging and SSE, and calls `kmain`.

use core::sync::atomic::AtomicU64;

use x86_64::PhysAddr;

use crate::layout::DIRECT_BASE;

/// The boot stack's size (`.skip` in the stub below).
pub const BOOT_STACK: usize = 512 * 1024;

unsafe extern "C" {
    /// The lowest byte of the boot stack.
    static boot_stack_bottom: u8;
}

/// Bytes at the bottom of the boot stack that are still zero, as the stub
/// left them (it zeroes `.bss`): how far the deepest call stayed from
/// overflowing it. The stack has no guard page, so `kmain` checks this
/// after building the arenas, the deepest thing it does there.
pub fn boot_stack_unused() -> usize {
    // SAFETY: the symbol is the first of BOOT_STACK bytes of .bss that only
    // the boot CPU's stack uses; reading its unused bottom races nothing.
    let bottom = core::ptr::addr_of!(boot_stack_bottom).cast::<u64>();
    let words = BOOT_STACK / 8;
    let mut zero = 0;
    while zero < words {
        // SAFETY: within the stack, as above.
        if unsafe { bottom.add(zero).read_volatile() } != 0 {
            break;
        }
        zero += 1;
    }
    zero * 8
}

/// TSC at the first instruction after `.bss` was zeroed.
#[unsafe(no_mangle)]
pub static ENTRY_TSC: AtomicU64 = AtomicU64::new(0);

// The boot page tables: one PML4, one PDPT and four page directories of
// 2 MiB pages for 0..4 GiB; PML4 slots 0 and 256 share the PDPT.
const _: () = assert!(DIRECT_BASE.as_u64() == 0xffff_8000_0000_0000);

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long 4                 /* name size: "Xen\0" */
    .long 4                 /* descriptor size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:      .skip 4096
boot_pdpt:      .skip 4096
boot_pd:        .skip 4 * 4096
    /* Large: vmem-core's quantum caches are built by value (some 75 KiB)
       and moved a few times on their way into their static. It has no
       guard page: `boot_stack_unused` tells kmain how much stayed zero. */
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 512 * 1024
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .text.boot32, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi              /* hvm_start_info, kept for kmain */

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    rdtsc
    mov %eax, ENTRY_TSC
    mov %edx, ENTRY_TSC + 4

    mov $boot_pdpt, %eax
    or $0x3, %eax               /* present, writable */
    mov %eax, boot_pml4
    mov %eax, boot_pml4 + 256 * 8

    mov $boot_pd, %eax
    or $0x3, %eax
    xor %ecx, %ecx
.Lpdpt:
    mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jb .Lpdpt

    mov $0x83, %eax             /* present, writable, 2 MiB page */
    xor %ecx, %ecx
.Lpd:
    mov %eax, boot_pd(,%ecx,8)
    add $0x200000, %eax
    inc %ecx
    cmp $2048, %ecx
    jb .Lpd

    mov %cr4, %eax
    or $0x620, %eax             /* PAE, OSFXSR, OSXMMEXCPT */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* long mode enable */
    wrmsr
    mov %cr0, %eax
    and $0x9ffffff3, %eax       /* caches on (CD, NW off); EM and TS off */
    or $0x80000023, %eax        /* paging, NE, MP, protection */
    mov %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $.Llong_mode

    .code64
.Llong_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov %esi, %edi
    call kmain
    ud2
"#,
    options(att_syntax)
);

/// `hvm_start_info` magic.
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Memory map entries kept.
pub const MEMMAP_MAX: usize = 64;
/// Command-line bytes kept.
const CMDLINE_MAX: usize = 512;

/// One range of the PVH memory map.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemRange {
    pub base: u64,
    pub size: u64,
    pub kind: u32,
}

impl MemRange {
    pub const RAM: u32 = 1;

    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "RAM",
            2 => "reserved",
            3 => "ACPI",
            4 => "ACPI NVS",
            5 => "unusable",
            6 => "disabled",
            7 => "PMEM",
            _ => "other",
        }
    }
}

/// What the loader handed over, copied out of guest RAM before any of it
/// is handed out.
pub struct BootInfo {
    pub start_info: PhysAddr,
    /// Where the loader says ACPI's RSDP is (0: it does not say).
    pub rsdp_paddr: u64,
    pub memmap: [MemRange; MEMMAP_MAX],
    pub memmap_len: usize,
    /// Where the loader put its data (start info, map, command line), to
    /// keep out of `phys` along with the kernel image.
    pub loader_ranges: [(PhysAddr, u64); 3],
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
}

impl BootInfo {
    /// Copies the start info at physical `start_info`, reached through the
    /// boot tables' low identity map.
    ///
    /// # Safety
    /// `start_info` is the address the loader passed in `ebx`, and the low
    /// 4 GiB are identity mapped.
    pub unsafe fn copy_from(start_info: PhysAddr) -> Result<BootInfo, &'static str> {
        let start_info = start_info.as_u64();
        let read32 = |off: u64| {
            // SAFETY: inside the 56-byte start info the caller vouched for.
            unsafe { core::ptr::read_unaligned((start_info + off) as *const u32) }
        };
        let read64 = |off: u64| {
            // SAFETY: as above.
            unsafe { core::ptr::read_unaligned((start_info + off) as *const u64) }
        };
        if read32(0) != START_INFO_MAGIC {
            return Err("hvm_start_info magic is wrong");
        }
        let version = read32(4);
        let cmdline_paddr = read64(24);
        let rsdp_paddr = read64(32);
        let (memmap_paddr, memmap_entries) = if version >= 1 {
            (read64(40), read32(48) as usize)
        } else {
            (0, 0)
        };
        if memmap_entries == 0 {
            return Err("no memory map in hvm_start_info (version 0 loader)");
        }
        let mut info = BootInfo {
            start_info: PhysAddr::new(start_info),
            rsdp_paddr,
            memmap: [MemRange::default(); MEMMAP_MAX],
            memmap_len: memmap_entries.min(MEMMAP_MAX),
            loader_ranges: [
                (PhysAddr::new(start_info), 56),
                (PhysAddr::new(memmap_paddr), memmap_entries as u64 * 24),
                (PhysAddr::zero(), 0),
            ],
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
        };
        // Empty entries (microvm's loader leaves one) are dropped.
        info.memmap_len = 0;
        for i in 0..memmap_entries {
            let entry = memmap_paddr + i as u64 * 24;
            // SAFETY: the loader's map holds `memmap_entries` 24-byte entries.
            let range = unsafe {
                MemRange {
                    base: core::ptr::read_unaligned(entry as *const u64),
                    size: core::ptr::read_unaligned((entry + 8) as *const u64),
                    kind: core::ptr::read_unaligned((entry + 16) as *const u32),
                }
            };
            if range.size > 0 && info.memmap_len < MEMMAP_MAX {
                info.memmap[info.memmap_len] = range;
                info.memmap_len += 1;
            }
        }
        info.memmap[..info.memmap_len].sort_unstable_by_key(|r| r.base);
        if cmdline_paddr != 0 {
            while info.cmdline_len < CMDLINE_MAX {
                // SAFETY: the command line is NUL-terminated in guest memory.
                let byte = unsafe { *((cmdline_paddr + info.cmdline_len as u64) as *const u8) };
                if byte == 0 {
                    break;
                }
                info.cmdline[info.cmdline_len] = byte;
                info.cmdline_len += 1;
            }
            info.loader_ranges[2] = (PhysAddr::new(cmdline_paddr), info.cmdline_len as u64 + 1);
        }
        Ok(info)
    }

    pub fn memmap(&self) -> &[MemRange] {
        &self.memmap[..self.memmap_len]
    }

    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("<not UTF-8>")
    }

    /// Whether the command line has `word` as one of its words.
    pub fn has_word(&self, word: &str) -> bool {
        self.cmdline().split_ascii_whitespace().any(|w| w == word)
    }

    /// The value of the first `key=value` word of the command line.
    pub fn value_of(&self, key: &str) -> Option<&str> {
        self.cmdline()
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }

    /// Bytes of RAM in the map.
    pub fn ram_bytes(&self) -> u64 {
        self.memmap()
            .iter()
            .filter(|r| r.kind == MemRange::RAM)
            .map(|r| r.size)
            .sum()
    }
}
