//! The CPUs' own tables and data: per CPU a GDT with a TSS whose first IST
//! stack takes double faults, and a `PerCpu` block reached through the GS
//! base (its index, which `CurrentCpu` gives vmem-core's caches, its APIC
//! ID and its counters); one IDT for all, whose 32 exception vectors enter
//! through stubs in `global_asm!` (the `x86-interrupt` ABI is
//! nightly-only), as do the two inter-processor interrupts. The stubs save
//! the registers and call `exception_report` or `cpu_interrupt`, which
//! upper modules define (by symbol, so this module, below the memory
//! layer, imports nothing above it); CPUID, the TSC and the MTRRs.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use vmem_core::{CpuId, MAX_CPUS};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::{DescriptorTablePointer, lidt, load_tss};
use x86_64::registers::model_specific::Msr;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// The double fault's IST slot (IST1).
const DOUBLE_FAULT_IST: u16 = 1;

/// The vector of the TLB shootdown IPI, and of the wake-up IPI that gets
/// an idle CPU out of `hlt` to look for work.
pub const SHOOTDOWN_VECTOR: u8 = 0xf0;
pub const WAKE_VECTOR: u8 = 0xf1;
/// The local APIC's spurious-interrupt vector (its handler only returns).
pub const SPURIOUS_VECTOR: u8 = 0xff;
// The IPI stubs push these vectors as literals.
const _: () = assert!(SHOOTDOWN_VECTOR == 0xf0 && WAKE_VECTOR == 0xf1);

const IA32_GS_BASE: u32 = 0xc000_0101;

#[repr(C, align(4096))]
struct EarlyStack([u8; 16 * 1024]);

/// The boot CPU's double-fault stack until a guarded one from `kernel_va`
/// replaces it.
static EARLY_DF_STACK: Shared<EarlyStack> = Shared(UnsafeCell::new(EarlyStack([0; 16 * 1024])));

/// A static the CPU uses behind our back (the IDT, the early stack).
struct Shared<T>(UnsafeCell<T>);
// SAFETY: the IDT is written once, on the boot CPU before any other runs;
// the early stack is only ever the boot CPU's.
unsafe impl<T> Sync for Shared<T> {}

type Gdt = (
    GlobalDescriptorTable,
    SegmentSelector,
    SegmentSelector,
    SegmentSelector,
);

/// Counters a CPU keeps about itself (it alone writes them).
#[derive(Default)]
pub struct CpuCounters {
    /// Objects this CPU freed that another CPU allocated.
    pub remote_frees: AtomicU64,
    /// Shootdown rounds this CPU started, and shootdown IPIs it handled.
    pub shootdowns_sent: AtomicU64,
    pub shootdowns_received: AtomicU64,
    /// Cross-calls this CPU posted to others (`local`: a reap asking a
    /// CPU that holds magazines to give them back).
    pub calls_sent: AtomicU64,
    /// Allocations this CPU made in the `smp` test (heap, caches, IDs).
    pub allocs: AtomicU64,
}

/// One CPU's data, at its GS base: `index` at offset 0 and the block's
/// own address at offset 8, which `current_index` and `this` read. On
/// 128-byte lines of its own: the fast path writes `held` twice per call,
/// and no other CPU's data may share its line (or the adjacent one the
/// prefetcher pairs with it).
#[repr(C, align(128))]
pub struct PerCpu {
    index: usize,
    this: AtomicU64,
    /// The local APIC ID, as the CPU reads it for itself once it runs.
    pub apic_id: AtomicU32,
    /// TSC when the CPU reached its Rust entry (0 for the boot CPU).
    pub online_tsc: AtomicU64,
    /// Set while `phys`'s meta source allocates on this CPU.
    pub in_meta: AtomicBool,
    /// Set while a context on this CPU holds it for vmem-core's fast path
    /// (`hold`); only this CPU reads or writes it.
    held: AtomicBool,
    /// Cross-calls posted to this CPU (by any CPU), and how many of them it
    /// had seen when it last finished answering (`local`).
    pub calls_posted: AtomicU64,
    pub calls_answered: AtomicU64,
    pub counters: CpuCounters,
    tss: UnsafeCell<TaskStateSegment>,
    gdt: spin::Once<Gdt>,
}

// SAFETY: the TSS is written only by its own CPU (with interrupts off)
// or before that CPU runs; everything else is atomic or set once.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    /// CPU `index`'s block, with its double fault taken on the stack whose
    /// top is `df_stack` (0: set later by `set_double_fault_stack`).
    pub const fn new(index: usize, df_stack: u64) -> PerCpu {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[(DOUBLE_FAULT_IST - 1) as usize] =
            VirtAddr::new_truncate(df_stack);
        PerCpu {
            index,
            this: AtomicU64::new(0),
            apic_id: AtomicU32::new(0),
            online_tsc: AtomicU64::new(0),
            in_meta: AtomicBool::new(false),
            held: AtomicBool::new(false),
            calls_posted: AtomicU64::new(0),
            calls_answered: AtomicU64::new(0),
            counters: CpuCounters {
                remote_frees: AtomicU64::new(0),
                shootdowns_sent: AtomicU64::new(0),
                shootdowns_received: AtomicU64::new(0),
                calls_sent: AtomicU64::new(0),
                allocs: AtomicU64::new(0),
            },
            tss: UnsafeCell::new(tss),
            gdt: spin::Once::new(),
        }
    }

    /// The CPU's index: 0 for the boot CPU, then in the order the APs
    /// reached long mode.
    pub fn index(&self) -> usize {
        self.index
    }
}

static BSP: PerCpu = PerCpu::new(0, 0);

/// Every CPU's block by index, as they are registered.
static CPUS: [AtomicPtr<PerCpu>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// CPUs that are online (their APIC and interrupts enabled), one bit per
/// index; the boot CPU's from `init`.
static ONLINE: AtomicU64 = AtomicU64::new(0);

/// Marks the running CPU online: it takes IPIs from now on.
pub fn mark_online() {
    ONLINE.fetch_or(1 << current_index(), Ordering::AcqRel);
}

/// The CPUs online, one bit per index.
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// How many CPUs are online.
pub fn online() -> usize {
    online_mask().count_ones() as usize
}

/// Registers `cpu` under its index (before it starts).
pub fn register(cpu: &'static PerCpu) {
    if let Some(slot) = CPUS.get(cpu.index) {
        slot.store(core::ptr::from_ref(cpu).cast_mut(), Ordering::Release);
    }
}

/// CPU `index`'s block, if registered.
pub fn cpu(index: usize) -> Option<&'static PerCpu> {
    let p = CPUS.get(index)?.load(Ordering::Acquire);
    // SAFETY: only `register` stores here, from a `&'static PerCpu`.
    unsafe { p.as_ref() }
}

/// The index of the CPU running this, from its GS base.
#[inline]
pub fn current_index() -> usize {
    let index: usize;
    // SAFETY: every CPU sets its GS base to its `PerCpu` before running
    // anything that calls this; `index` is at offset 0.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index
}

/// The running CPU's block.
pub fn this() -> &'static PerCpu {
    let addr: u64;
    // SAFETY: as in `current_index`; offset 8 holds the block's address.
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) addr, options(nostack, readonly, preserves_flags))
    };
    // SAFETY: `install` stored the address of a `&'static PerCpu` there.
    unsafe { &*(addr as *const PerCpu) }
}

/// vmem-core's caches ask this which CPU runs: the index in the running
/// CPU's `PerCpu`, so each CPU uses its own magazine pair.
pub struct CurrentCpu;

impl CpuId for CurrentCpu {
    #[inline]
    fn current(&self) -> usize {
        current_index()
    }
}

pub static CURRENT: CurrentCpu = CurrentCpu;

/// Holds the running CPU for vmem-core's fast path (`local::LOCAL`): its
/// index, or `None` when a context on it holds it already (an interrupt
/// handler that interrupted a holder).
#[inline(always)]
pub fn hold() -> Option<usize> {
    let me = this();
    if me.held.load(Ordering::Acquire) {
        return None;
    }
    me.held.store(true, Ordering::Relaxed);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    Some(me.index)
}

/// Ends the running CPU's hold.
#[inline(always)]
pub fn unhold() {
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    this().held.store(false, Ordering::Release);
}

/// Points this CPU's GS base at `cpu` and loads its GDT, TSS and the IDT.
fn install(cpu: &'static PerCpu) {
    cpu.this
        .store(core::ptr::from_ref(cpu) as u64, Ordering::Relaxed);
    // SAFETY: the GS base MSR exists on every x86_64 CPU; the block is
    // 'static.
    unsafe { Msr::new(IA32_GS_BASE).write(core::ptr::from_ref(cpu) as u64) };
    let (gdt, code, data, tss) = cpu.gdt.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        // SAFETY: the TSS lives in the 'static block, as long as the GDT.
        let tss = gdt.append(unsafe { Descriptor::tss_segment_unchecked(cpu.tss.get()) });
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
    let pointer = DescriptorTablePointer {
        limit: (size_of::<[Gate; 256]>() - 1) as u16,
        base: VirtAddr::new(IDT.0.get() as u64),
    };
    // SAFETY: the IDT is static and filled by `init` before any CPU loads it.
    unsafe { lidt(&pointer) };
}

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

static IDT: Shared<[Gate; 256]> = Shared(UnsafeCell::new(
    [Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    }; 256],
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

/// On the boot CPU, first thing: fills the IDT, registers the boot CPU's
/// block as CPU 0 and installs it (GS base, GDT, TSS, IDT).
pub fn init() {
    // SAFETY: the boot CPU's TSS, before the GDT that points to it is loaded.
    unsafe {
        let top = EARLY_DF_STACK.0.get() as u64 + size_of::<EarlyStack>() as u64;
        (*BSP.tss.get()).interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] =
            VirtAddr::new(top);
    }
    // SAFETY: the IDT is filled before any CPU loads it, on the boot CPU.
    let idt = unsafe { &mut *IDT.0.get() };
    let gate = |handler: u64, ist: u8| Gate {
        offset_low: handler as u16,
        // The kernel code segment: the second descriptor of every CPU's GDT.
        selector: 0x08,
        ist,
        attributes: 0x8e, // present, ring 0, 64-bit interrupt gate
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    };
    for (vector, slot) in idt.iter_mut().enumerate().take(32) {
        // SAFETY: the stubs table is static data the assembler filled.
        let handler = unsafe { exception_stubs[vector] };
        let ist = if vector == 8 {
            DOUBLE_FAULT_IST as u8
        } else {
            0
        };
        *slot = gate(handler, ist);
    }
    // Other vectors stay not present: an interrupt there is a #GP whose
    // error code names the vector, and the exception report ends the run.
    // SAFETY: as above.
    let [shootdown, wake, spurious] = unsafe { interrupt_stubs };
    idt[usize::from(SHOOTDOWN_VECTOR)] = gate(shootdown, 0);
    idt[usize::from(WAKE_VECTOR)] = gate(wake, 0);
    idt[usize::from(SPURIOUS_VECTOR)] = gate(spurious, 0);
    register(&BSP);
    install(&BSP);
}

/// On an application processor, first thing: installs its block.
pub fn init_ap(cpu: &'static PerCpu) {
    install(cpu);
}

/// Moves this CPU's double fault onto the stack whose top is `top`.
pub fn set_double_fault_stack(top: VirtAddr) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // SAFETY: this CPU's own TSS, with interrupts off; the CPU reads
        // the slot only when a double fault arrives.
        unsafe { (*this().tss.get()).interrupt_stack_table[0] = top };
    });
}

unsafe extern "C" {
    /// The IPI entry stubs: shootdown, wake, spurious.
    static interrupt_stubs: [u64; 3];
}

// The IPI stubs save the registers a call may clobber and call
// `cpu_interrupt(vector)` (defined above this module), which sends the
// EOI. The CPU aligned the stack before its five-word frame, so with nine
// registers pushed it is aligned at the call. The kernel is soft-float:
// no vector register needs saving. The spurious vector takes no EOI.
core::arch::global_asm!(
    r#"
    .text
    .balign 16
interrupt_shootdown:
    push $0xf0
    jmp interrupt_common
    .balign 16
interrupt_wake:
    push $0xf1
    jmp interrupt_common
    .balign 16
interrupt_spurious:
    iretq
interrupt_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov 72(%rsp), %rdi
    sub $8, %rsp
    cld
    call cpu_interrupt
    add $8, %rsp
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $8, %rsp
    iretq

    .section .rodata.interrupt_stubs, "a"
    .balign 8
    .global interrupt_stubs
interrupt_stubs:
    .quad interrupt_shootdown
    .quad interrupt_wake
    .quad interrupt_spurious
    .text
"#,
    options(att_syntax)
);

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
