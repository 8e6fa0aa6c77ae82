//! The CPU's own tables: a GDT with a TSS whose first IST stack takes
//! double faults, and an IDT whose 32 exception vectors enter through
//! stubs in `global_asm!` (the `x86-interrupt` ABI is nightly-only). The
//! stubs save the registers as an `ExceptionFrame` and call
//! `exception_report`, which `exception` defines (by symbol, so this
//! module, below the memory layer, imports nothing above it); CPUID, the
//! TSC and the MTRRs.

use core::cell::UnsafeCell;

use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::{DescriptorTablePointer, lidt, load_tss};
use x86_64::registers::model_specific::Msr;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// The double fault's IST slot (IST1).
const DOUBLE_FAULT_IST: u16 = 1;

#[repr(C, align(4096))]
struct EarlyStack([u8; 16 * 1024]);

/// The double-fault stack until a guarded one from `kernel_va` replaces it.
static EARLY_DF_STACK: Shared<EarlyStack> = Shared(UnsafeCell::new(EarlyStack([0; 16 * 1024])));

/// A static the CPU reads behind our back (the TSS, the IDT).
struct Shared<T>(UnsafeCell<T>);
// SAFETY: one CPU; the tables are written before they are loaded, and the
// TSS's IST slot afterwards only with interrupts off.
unsafe impl<T> Sync for Shared<T> {}

static TSS: Shared<TaskStateSegment> = Shared(UnsafeCell::new(TaskStateSegment::new()));
static GDT: spin::Once<(
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
)> = spin::Once::new();

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

static IDT: Shared<[Gate; 32]> = Shared(UnsafeCell::new(
    [Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    }; 32],
));

unsafe extern "C" {
    /// The 32 entry stubs, in vector order.
    static exception_stubs: [u64; 32];
}

macro_rules! stubs {
    ($($vector:literal $err:literal)*) => {
        core::arch::global_asm!(
            ".text",
            $(
                concat!(".balign 16\nexception_stub_", $vector, ":"),
                concat!(".if ", $err, " == 0\npush $0\n.endif"),
                concat!("push $", $vector),
                "jmp exception_common",
            )*
            ".section .rodata.exception_stubs, \"a\"",
            ".balign 8",
            ".global exception_stubs",
            "exception_stubs:",
            $( concat!(".quad exception_stub_", $vector), )*
            ".text",
            options(att_syntax)
        );
    };
}

// Vector, and whether the CPU pushes an error code for it.
stubs!(
    0 0 1 0 2 0 3 0 4 0 5 0 6 0 7 0 8 1 9 0 10 1 11 1 12 1 13 1 14 1 15 0
    16 0 17 1 18 0 19 0 20 0 21 1 22 0 23 0 24 0 25 0 26 0 27 0 28 0 29 1 30 1 31 0
);

// Saves every general register under the vector and error code, and hands
// the frame to Rust. The CPU aligned the stack to 16 bytes before its
// five-word frame; with the error code, the vector and 15 registers the
// stack is aligned again at the call.
core::arch::global_asm!(
    r#"
    .text
exception_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call exception_report
    ud2
"#,
    options(att_syntax)
);

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Loads the kernel's GDT (code, data, TSS), its segments and the IDT.
pub fn init() {
    // SAFETY: the TSS is written before the GDT that points to it is loaded.
    unsafe {
        let tss = &mut *TSS.0.get();
        let top = EARLY_DF_STACK.0.get() as u64 + size_of::<EarlyStack>() as u64;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] = VirtAddr::new(top);
    }
    let (gdt, code, data, tss) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        // SAFETY: the TSS is a static, valid for as long as the GDT is loaded.
        let tss = gdt.append(unsafe { Descriptor::tss_segment_unchecked(TSS.0.get()) });
        (gdt, code, data, tss)
    });
    gdt.load();
    // SAFETY: the selectors name the descriptors of the GDT just loaded.
    unsafe {
        CS::set_reg(*code);
        SS::set_reg(*data);
        DS::set_reg(*data);
        ES::set_reg(*data);
        load_tss(*tss);
    }

    // SAFETY: the IDT is filled before it is loaded, on one CPU.
    let idt = unsafe { &mut *IDT.0.get() };
    for (vector, gate) in idt.iter_mut().enumerate() {
        // SAFETY: the stubs table is static data the assembler filled.
        let handler = unsafe { exception_stubs[vector] };
        *gate = Gate {
            offset_low: handler as u16,
            selector: code.0,
            ist: if vector == 8 {
                DOUBLE_FAULT_IST as u8
            } else {
                0
            },
            attributes: 0x8e, // present, ring 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
    }
    let pointer = DescriptorTablePointer {
        limit: (size_of::<[Gate; 32]>() - 1) as u16,
        base: VirtAddr::new(IDT.0.get() as u64),
    };
    // SAFETY: the IDT is static and every gate points to a stub.
    unsafe { lidt(&pointer) };
}

/// Moves the double fault onto the stack whose top is `top`.
pub fn set_double_fault_stack(top: VirtAddr) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: one CPU with interrupts off; the CPU reads the slot only
        // when a double fault arrives.
        unsafe { (*TSS.0.get()).interrupt_stack_table[0] = top };
    });
}

/// `cpuid` leaf `leaf`, subleaf 0.
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The hypervisor's CPUID signature (leaf 0x4000_0000), if the CPU says it
/// runs under one.
pub fn hypervisor() -> Option<([u8; 12], u32)> {
    if cpuid(1)[2] & (1 << 31) == 0 {
        return None;
    }
    let [max, b, c, d] = cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    Some((sig, max))
}

/// Whether the CPU maps 1 GiB pages.
pub fn has_1g_pages() -> bool {
    cpuid(0x8000_0000)[0] >= 0x8000_0001 && cpuid(0x8000_0001)[3] & (1 << 26) != 0
}

/// The CPU's brand string.
pub fn brand(buf: &mut [u8; 48]) -> &str {
    if cpuid(0x8000_0000)[0] < 0x8000_0004 {
        return "unknown CPU";
    }
    for (i, leaf) in (0x8000_0002..=0x8000_0004).enumerate() {
        for (j, word) in cpuid(leaf).iter().enumerate() {
            buf[i * 16 + j * 4..][..4].copy_from_slice(&word.to_le_bytes());
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(48);
    core::str::from_utf8(&buf[..end])
        .unwrap_or("unknown CPU")
        .trim()
}

#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Makes RAM write-back when no firmware set up the MTRRs (microvm's does
/// not): with MTRRs off all memory is uncached, which under KVM makes the
/// kernel a thousand times slower. Default type write-back with no
/// variable ranges leaves MMIO to the page tables, whose PCD/PWT bits
/// select uncached through the PAT.
pub fn enable_write_back() {
    const MTRR_DEF_TYPE: u32 = 0x2ff;
    const ENABLE: u64 = 1 << 11;
    const WRITE_BACK: u64 = 6;
    if cpuid(1)[3] & (1 << 12) == 0 {
        return;
    }
    let mut def_type = Msr::new(MTRR_DEF_TYPE);
    // SAFETY: the CPU has MTRRs (CPUID.1:EDX.MTRR), so the MSR exists.
    unsafe {
        if def_type.read() & ENABLE == 0 {
            def_type.write(ENABLE | WRITE_BACK);
        }
    }
}
