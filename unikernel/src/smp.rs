//! Every CPU the MADT lists, started at once: the boot CPU prepares each
//! application processor's block (`PerCpu`), kernel stack and double-fault
//! stack (from `kernel_va`, guarded), copies a real-mode trampoline into a
//! page that `phys` gives by `xalloc` below 1 MiB, sends INIT to every AP,
//! then two startup IPIs to every AP, and waits for all to come online.
//! The trampoline takes an AP from real mode through protected mode to
//! long mode on the kernel's page tables, and `ap_start64` gives each its
//! stack by ticket. An AP then installs its block (GS base, GDT, TSS),
//! enables its local APIC and interrupts, and waits in `hlt` for work
//! (`run_on_all`) or a shootdown (`shootdown`).

use alloc::boxed::Box;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use vmem_core::{Constraints, MAX_CPUS, Policy};
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{Page, PageTableFlags as Flags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::acpi::Madt;
use crate::apic;
use crate::cpu::{self, PerCpu, WAKE_VECTOR, rdtsc};
use crate::kmem::Stack;
use crate::layout::{PAGE, REAL_MODE_END, phys_to_virt};
use crate::local;
use crate::paging;
use crate::phys::phys;
use crate::shootdown;
use crate::time::Clock;

/// Pages of an application processor's kernel stack.
const AP_STACK_PAGES: u64 = 32;
const AP_DOUBLE_FAULT_PAGES: u64 = 4;

/// Tickets, one per AP in the order they reach long mode, and the kernel
/// stack top for each ticket (`ap_start64` reads both).
#[unsafe(no_mangle)]
static AP_TICKET: AtomicU32 = AtomicU32::new(0);
#[unsafe(no_mangle)]
static AP_STACKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

unsafe extern "C" {
    static ap_trampoline: u8;
    static ap_trampoline_end: u8;
    static ap_tramp_gdt: u8;
    static ap_tramp_gdtr: u8;
    static ap_tramp_far32: u8;
    static ap_tramp_far64: u8;
    static ap_tramp_cr3: u8;
    static ap_tramp_pm: u8;
    static ap_tramp_lm: u8;
}

// The trampoline, copied to a page below 1 MiB. A startup IPI starts the
// AP in real mode at that page (CS = page / 16, IP = 0); `ebx` keeps the
// page's address. The fields after the code are filled by `start`: the
// GDT's address, the far pointers to the protected- and long-mode parts,
// and the kernel's page-table root (below 4 GiB: `paging` took it while
// the boot tables were live).
core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline, ap_trampoline_end, ap_tramp_gdt, ap_tramp_gdtr
    .global ap_tramp_far32, ap_tramp_far64, ap_tramp_cr3, ap_tramp_pm, ap_tramp_lm
ap_trampoline:
    .code16
    cli
    cld
    mov %cs, %bx
    mov %bx, %ds
    movzwl %bx, %ebx
    shll $4, %ebx
    lgdtl (ap_tramp_gdtr - ap_trampoline)
    mov %cr0, %eax
    orl $1, %eax
    mov %eax, %cr0
    ljmpl *(ap_tramp_far32 - ap_trampoline)

    .code32
ap_tramp_pm:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x620, %eax             /* PAE, OSFXSR, OSXMMEXCPT */
    mov %eax, %cr4
    mov (ap_tramp_cr3 - ap_trampoline)(%ebx), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER: long mode enable */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0x9ffffff3, %eax
    or $0x80000023, %eax        /* paging, NE, MP, protection */
    mov %eax, %cr0
    ljmp *(ap_tramp_far64 - ap_trampoline)(%ebx)

    .code64
ap_tramp_lm:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %ebx, %ebx
    jmp *(ap_tramp_entry - ap_trampoline)(%rbx)

    .balign 8
ap_tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0x00af9a000000ffff    /* 0x18: 64-bit code */
ap_tramp_gdtr:
    .word 31
    .long 0
    .balign 4
ap_tramp_far32:
    .long 0
    .word 0x08
    .balign 4
ap_tramp_far64:
    .long 0
    .word 0x18
    .balign 4
ap_tramp_cr3:
    .long 0
    .balign 8
ap_tramp_entry:
    .quad ap_start64
ap_trampoline_end:

    .text
    .code64
ap_start64:
    mov $1, %eax
    lock xadd %eax, AP_TICKET
    mov AP_STACKS(,%rax,8), %rsp
    xor %ebp, %ebp
    mov %eax, %edi
    call ap_main
    ud2
"#,
    options(att_syntax)
);

/// The trampoline's page, taken from `phys` right after `phys` is made:
/// instant fit serves small requests from the smallest free segment that
/// fits, which is low RAM, so it would be gone by the time the CPUs start.
static TRAMPOLINE: spin::Mutex<Option<u64>> = spin::Mutex::new(None);

/// Takes a page below 1 MiB, page aligned, from `phys` for the trampoline.
pub fn reserve_trampoline() {
    let within = Constraints {
        max: REAL_MODE_END.as_u64(),
        ..Constraints::aligned(PAGE)
    };
    *TRAMPOLINE.lock() = phys().xalloc(PAGE, &within, Policy::InstantFit).ok();
}

/// Gives the trampoline's page back to `phys`.
fn release_trampoline() {
    if let Some(page) = TRAMPOLINE.lock().take() {
        let _ = phys().xfree(page, PAGE);
    }
}

/// What bringing up the CPUs found and took.
pub struct BringUp {
    /// CPUs online, the boot CPU included.
    pub online: usize,
    /// TSC cycles from the first INIT to the last AP online (0: no AP).
    pub cycles: u64,
    /// Where the trampoline was.
    pub trampoline: PhysAddr,
    /// The MADT the CPUs came from.
    pub madt: Madt,
}

/// Waits `ns` nanoseconds by the TSC.
fn delay(clock: &Clock, ns: u64) {
    let start = rdtsc();
    while clock.ns(rdtsc() - start) < ns {
        core::hint::spin_loop();
    }
}

/// Starts every CPU the MADT lists but this one, all at once, and waits
/// for all to come online.
pub fn start(madt: &Madt, clock: &Clock) -> Result<BringUp, &'static str> {
    let me = apic::id();
    cpu::this().apic_id.store(me, Ordering::Relaxed);
    let aps: alloc::vec::Vec<u32> = madt
        .apic_ids()
        .iter()
        .copied()
        .filter(|&id| id != me)
        .collect();
    if aps.len() + 1 != madt.apic_ids().len() {
        return Err("the boot CPU's APIC ID is not in the MADT");
    }
    for (ticket, top) in AP_STACKS.iter().enumerate().take(aps.len()) {
        let index = ticket + 1;
        let stack = Stack::new("AP kernel", AP_STACK_PAGES).map_err(|_| "no AP kernel stack")?;
        let df = Stack::new("AP double fault", AP_DOUBLE_FAULT_PAGES)
            .map_err(|_| "no AP double-fault stack")?;
        let block: &'static PerCpu = Box::leak(Box::new(PerCpu::new(index, df.top.as_u64())));
        cpu::register(block);
        top.store(stack.top.as_u64(), Ordering::Release);
    }
    let page = (*TRAMPOLINE.lock()).ok_or("no page below 1 MiB for the trampoline")?;
    let trampoline = PhysAddr::new(page);
    install_trampoline(trampoline);
    let identity = Page::containing_address(VirtAddr::new(page));
    paging::map(
        identity,
        PhysFrame::containing_address(trampoline),
        Flags::WRITABLE,
    )
    .map_err(|_| "cannot map the trampoline where it runs")?;

    let first_init = rdtsc();
    for &id in &aps {
        apic::send_init(id);
    }
    delay(clock, 10_000);
    for _ in 0..2 {
        for &id in &aps {
            apic::send_startup(id, page);
        }
        delay(clock, 200_000);
        if cpu::online() == aps.len() + 1 {
            break;
        }
    }
    let wait_from = rdtsc();
    while cpu::online() < aps.len() + 1 && clock.ns(rdtsc() - wait_from) < 5_000_000_000 {
        core::hint::spin_loop();
    }
    let online = cpu::online();
    paging::unmap(identity);
    release_trampoline();
    if online < aps.len() + 1 {
        return Err("not every CPU came online within 5 s");
    }
    let last = (1..online)
        .filter_map(cpu::cpu)
        .map(|c| c.online_tsc.load(Ordering::Acquire))
        .max()
        .unwrap_or(first_init);
    Ok(BringUp {
        online,
        cycles: if aps.is_empty() { 0 } else { last - first_init },
        trampoline,
        madt: *madt,
    })
}

/// Copies the trampoline to `page` (through the direct map) and fills its
/// fields.
fn install_trampoline(page: PhysAddr) {
    let start = &raw const ap_trampoline as u64;
    let end = &raw const ap_trampoline_end as u64;
    let off = |sym: *const u8| sym as u64 - start;
    let dst = phys_to_virt(page).as_mut_ptr::<u8>();
    let base = page.as_u64() as u32;
    // SAFETY: the page is ours (xalloc), mapped by the direct map; the blob
    // is shorter than a page; the fields lie inside the copy.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, dst, (end - start) as usize);
        let put = |at: u64, value: u32| dst.add(at as usize).cast::<u32>().write_unaligned(value);
        put(
            off(&raw const ap_tramp_gdtr) + 2,
            base + off(&raw const ap_tramp_gdt) as u32,
        );
        put(
            off(&raw const ap_tramp_far32),
            base + off(&raw const ap_tramp_pm) as u32,
        );
        put(
            off(&raw const ap_tramp_far64),
            base + off(&raw const ap_tramp_lm) as u32,
        );
        put(
            off(&raw const ap_tramp_cr3),
            Cr3::read().0.start_address().as_u64() as u32,
        );
    }
}

static BRING_UP: spin::Once<BringUp> = spin::Once::new();

/// Keeps what `start` found, for the report.
pub fn record(up: BringUp) {
    BRING_UP.call_once(|| up);
}

/// What `start` found, if it ran.
pub fn bring_up() -> Option<&'static BringUp> {
    BRING_UP.get()
}

/// CPUs online, the boot CPU included.
pub fn online() -> usize {
    cpu::online()
}

/// Where an AP arrives from `ap_start64`, on its own kernel stack, with
/// its ticket.
#[unsafe(no_mangle)]
extern "C" fn ap_main(ticket: u32) -> ! {
    let Some(block) = cpu::cpu(ticket as usize + 1) else {
        loop {
            x86_64::instructions::hlt();
        }
    };
    cpu::init_ap(block);
    cpu::enable_write_back();
    apic::enable();
    block.apic_id.store(apic::id(), Ordering::Relaxed);
    block.online_tsc.store(rdtsc(), Ordering::Release);
    x86_64::instructions::interrupts::enable();
    cpu::mark_online();
    idle()
}

/// Work for every CPU: a function of the CPU index, its generation, and
/// how many CPUs finished it.
type Job = dyn Fn(usize) + Sync;
static JOB: AtomicPtr<&'static Job> = AtomicPtr::new(core::ptr::null_mut());
static JOB_GENERATION: AtomicU64 = AtomicU64::new(0);
static JOB_DONE: AtomicUsize = AtomicUsize::new(0);

/// An AP's life after it came online: run each new job, else sleep
/// until an IPI.
fn idle() -> ! {
    let mut seen = 0;
    loop {
        // A safe point: no lock, no hold. Cross-calls posted here are
        // answered before the CPU sleeps again.
        local::answer();
        x86_64::instructions::interrupts::disable();
        let generation = JOB_GENERATION.load(Ordering::Acquire);
        if generation == seen && local::pending() {
            x86_64::instructions::interrupts::enable();
            continue;
        }
        if generation == seen {
            // `sti` takes effect after `hlt` starts, so an IPI sent after
            // the check wakes it.
            x86_64::instructions::interrupts::enable_and_hlt();
            continue;
        }
        x86_64::instructions::interrupts::enable();
        seen = generation;
        let job = JOB.load(Ordering::Acquire);
        // SAFETY: `run_on_all` keeps the job alive until every CPU is done.
        if let Some(job) = unsafe { job.as_ref() } {
            job(cpu::current_index());
        }
        JOB_DONE.fetch_add(1, Ordering::AcqRel);
    }
}

/// Runs `job(cpu index)` on every CPU online at once, this one included,
/// and returns when all have finished.
pub fn run_on_all<'a>(job: &'a (dyn Fn(usize) + Sync + 'a)) {
    // SAFETY: the reference outlives every use: this function waits until
    // every CPU has finished the job before returning.
    let job: &'static Job =
        unsafe { core::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(job) };
    let holder = &job as *const &'static Job as *mut &'static Job;
    JOB_DONE.store(0, Ordering::Release);
    JOB.store(holder, Ordering::Release);
    JOB_GENERATION.fetch_add(1, Ordering::AcqRel);
    let others = online() - 1;
    if others > 0 {
        apic::send_all_others(WAKE_VECTOR);
    }
    job(cpu::current_index());
    // The end of a job is a safe point: answer what other CPUs asked.
    local::answer();
    while JOB_DONE.load(Ordering::Acquire) < others {
        core::hint::spin_loop();
    }
    JOB.store(core::ptr::null_mut(), Ordering::Release);
}

/// Called by `cpu`'s IPI stubs with the vector.
#[unsafe(no_mangle)]
extern "C" fn cpu_interrupt(vector: u64) {
    if vector == u64::from(cpu::SHOOTDOWN_VECTOR) {
        shootdown::handle();
    }
    apic::eoi();
}
