//! An x86_64 PVH unikernel whose memory is vmem arenas and caches: it
//! boots under QEMU (KVM or TCG), builds `phys`, the direct map, the
//! virtual arenas and the heap, starts every other CPU (`smp`), prints a
//! report, runs the in-kernel tests when the command line says `test` (or
//! runs every CPU at once with `smp`, exhausts every arena with
//! `pressure`, or faults on purpose with `fault`, `fault-ap` and
//! `overflow`), and exits with a verdict through isa-debug-exit. See
//! `boot` for the entry, `layout` for the address space, `phys`, `paging`,
//! `kmem` and `shootdown` for the memory subsystem, `cpu` and `exception`
//! for the exception reports.
//!
//! The modules' floors, each importing only from those below it:
//!
//! 1. `layout`, `error`, `console`, `cpu`, `boot`, `acpi`: the address
//!    space, the memory layer's error, the serial port, each CPU's tables
//!    and data, the loader's data, the firmware's CPUs;
//! 2. `paging`: the page tables (frames from the arena `build` is handed);
//!    `apic`; `shootdown`: the IPI round that flushes every CPU's TLB;
//!    `local`: vmem-core's per-CPU fast path and its cross-call;
//! 3. `phys`, then `kmem`: the arenas, the heap and the kernel stacks;
//! 4. `devices`, `time`, `trace`, `smp`: starting the other CPUs;
//! 5. `exception`, `report`, `tests`, `pressure`, `smptest`: reports and
//!    tests.

#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod apic;
mod boot;
mod console;
mod cpu;
mod devices;
mod error;
mod exception;
mod kmem;
mod layout;
mod local;
mod paging;
mod phys;
mod pressure;
mod report;
mod shootdown;
mod smp;
mod smptest;
mod tests;
mod time;
mod trace;

use core::fmt::Display;
use core::sync::atomic::Ordering;

use boot::BootInfo;
use console::{Verdict, exit};
use kmem::{MAIN_STACK, Stack};
use layout::{DOUBLE_FAULT_STACK_PAGES, MAIN_STACK_PAGES};
use x86_64::PhysAddr;

static BOOT: spin::Once<BootInfo> = spin::Once::new();
/// Bytes of the boot stack still unused after the arenas were built.
static BOOT_STACK_UNUSED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// The MADT's CPUs, or why there is no MADT (then the boot CPU runs alone).
static MADT: spin::Once<Result<acpi::Madt, &'static str>> = spin::Once::new();

fn fail(what: impl Display) -> ! {
    println!("boot failed: {what}");
    println!("verdict: FAIL");
    exit(Verdict::Fail)
}

/// Entered from the 32-bit stub on the boot stack, with the boot tables
/// live, with the physical address of `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn kmain(start_info: u32) -> ! {
    console::init();
    cpu::init();
    cpu::enable_write_back();
    // SAFETY: the loader passed this address in ebx, and the boot tables
    // identity map the low 4 GiB.
    let boot = match unsafe { BootInfo::copy_from(PhysAddr::new(u64::from(start_info))) } {
        Ok(boot) => BOOT.call_once(|| boot),
        Err(e) => fail(e),
    };
    // SAFETY: the boot tables still identity map the low 4 GiB.
    MADT.call_once(|| unsafe { acpi::madt(boot.rsdp_paddr) });
    let image = layout::kernel_image();
    let [a, b, c] = boot.loader_ranges;
    let excluded = [(image.start, image.end - image.start), a, b, c];
    if let Err(e) = phys::init(boot.memmap(), &excluded) {
        fail(e);
    }
    smp::reserve_trampoline();
    if let Err(e) = paging::build(boot.memmap(), image, phys::phys()) {
        fail(e);
    }
    if let Err(e) = kmem::init() {
        fail(e);
    }
    // The boot stack has no guard page: an overflow would have written
    // over the statics below it. Keep a margin.
    let unused = boot::boot_stack_unused();
    BOOT_STACK_UNUSED.store(unused, Ordering::Relaxed);
    if unused < 64 * 1024 {
        fail("the boot stack came within 64 KiB of overflowing while the arenas were built");
    }
    let Ok(df) = Stack::new("double fault", DOUBLE_FAULT_STACK_PAGES) else {
        fail("no double-fault stack")
    };
    cpu::set_double_fault_stack(df.top);
    let Ok(stack) = Stack::new("kmain", MAIN_STACK_PAGES) else {
        fail("no kernel stack")
    };
    let stack = MAIN_STACK.call_once(|| stack);
    // SAFETY: the new stack is mapped and unused; `kmain_on_stack` never
    // returns, so nothing on the boot stack is needed again.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {next}",
            "ud2",
            top = in(reg) stack.top.as_u64(),
            next = sym kmain_on_stack,
            options(noreturn)
        )
    }
}

/// The rest of the boot, on a kernel stack with a guard page below it.
extern "C" fn kmain_on_stack() -> ! {
    let boot = BOOT.get().expect("set by kmain");
    if let Err(e) = kmem::init_heap() {
        fail(e);
    }
    println!(
        "boot stack: {} of {} KiB used while the arenas were built (it has no guard page)",
        (boot::BOOT_STACK - BOOT_STACK_UNUSED.load(Ordering::Relaxed)) / 1024,
        boot::BOOT_STACK / 1024
    );
    trace::init(boot.has_word("trace"));
    if boot.value_of("shootdown") == Some("off") {
        shootdown::disable();
    }
    exception::FAULT_IN_REPORT.store(boot.has_word("fault-in-report"), Ordering::Relaxed);
    // ci/boot says which accelerator it chose; every timing printed names it.
    let clock = time::Clock::calibrate(time::Accel::from_word(boot.value_of("accel")));
    let devices = devices::probe();
    start_cpus(&devices, &clock);
    if boot.has_word("fault") {
        let guard = MAIN_STACK
            .get()
            .expect("set by kmain")
            .guard
            .start_address();
        println!("fault: reading the guard page below the kernel stack at {guard:#x}");
        // SAFETY: deliberately not safe: the page is unmapped, and the
        // page-fault handler ends the run with its report.
        let value = unsafe { core::ptr::read_volatile(guard.as_ptr::<u64>()) };
        println!("fault: the read returned {value:#x}: the guard page is mapped");
        exit(Verdict::Fail);
    }
    if boot.has_word("fault-ap") {
        let last = smp::online() - 1;
        println!(
            "fault-ap: CPU {last} reads through a dangling pointer into page 0, which nothing maps"
        );
        smp::run_on_all(&|cpu| {
            if cpu == last {
                // SAFETY: deliberately not safe: page 0 is unmapped, and the
                // page-fault handler ends the run with its report.
                unsafe { core::ptr::read_volatile(core::ptr::dangling::<u64>()) };
            }
        });
        println!("fault-ap: the read returned: page 0 is mapped");
        exit(Verdict::Fail);
    }
    if boot.has_word("overflow") {
        let stack = MAIN_STACK.get().expect("set by kmain");
        println!(
            "overflow: recursing on kernel stack '{}' ({:#x}..{:#x}) toward its guard page at {:#x}",
            stack.name,
            stack.bottom(),
            stack.top,
            stack.guard.start_address()
        );
        let depth = recurse(0);
        println!("overflow: the recursion came back ({depth}): no guard page stopped it");
        exit(Verdict::Fail);
    }
    let verdict = if boot.has_word("pressure") {
        println!(
            "pressure: {} of RAM in the PVH map, {}",
            report::Bytes(boot.ram_bytes()),
            devices.machine()
        );
        match boot.value_of("rounds").map(str::parse) {
            None => pressure::run(&clock, pressure::ROUNDS),
            Some(Ok(rounds)) if rounds >= 2 => pressure::run(&clock, rounds),
            Some(_) => {
                println!("pressure: rounds=N needs a whole number of at least 2");
                Verdict::Fail
            }
        }
    } else {
        report::print(boot, &clock, &devices);
        if boot.has_word("test") {
            tests::run(&devices)
        } else if boot.has_word("smp") {
            smptest::run(&clock, boot.value_of("pairs").and_then(|p| p.parse().ok()))
        } else {
            Verdict::Pass
        }
    };
    let entry = boot::ENTRY_TSC.load(Ordering::Relaxed);
    println!(
        "verdict: {} ({} ms after entry {})",
        if verdict == Verdict::Pass {
            "PASS"
        } else {
            "FAIL"
        },
        clock.ns(cpu::rdtsc() - entry) / 1_000_000,
        clock.mark()
    );
    exit(verdict)
}

/// Enables this CPU's local APIC and interrupts (the PICs masked), and
/// starts every other CPU the MADT lists.
fn start_cpus(devices: &devices::Devices, clock: &time::Clock) {
    devices::mask_pic();
    if apic::init(devices.lapic).is_none() {
        fail("no local APIC to start other CPUs with");
    }
    apic::enable();
    x86_64::instructions::interrupts::enable();
    cpu::mark_online();
    let madt = match MADT.get() {
        Some(Ok(madt)) => madt,
        Some(Err(e)) => {
            println!("smp: {e}: the boot CPU runs alone");
            return;
        }
        None => return,
    };
    if madt.listed > vmem_core::MAX_CPUS {
        println!(
            "smp: the MADT lists {} CPUs, more than vmem-core's MAX_CPUS ({}): starting the first {}",
            madt.listed,
            vmem_core::MAX_CPUS,
            vmem_core::MAX_CPUS
        );
    }
    match smp::start(madt, clock) {
        Ok(up) => smp::record(up),
        Err(e) => fail(format_args!("smp: {e}")),
    }
}

/// Calls itself until the stack runs out, each frame writing a buffer it
/// reads after the call, so neither the frames nor the recursion can be
/// optimised away.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 512];
    frame[depth as usize % frame.len()] = depth as u8;
    let frame = core::hint::black_box(&mut frame);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + u64::from(frame[depth as usize % frame.len()])
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::print_unlocked(format_args!(
        "\n!!! kernel panic: {info}\nverdict: FAIL (panic)\n"
    ));
    exit(Verdict::Fail)
}
