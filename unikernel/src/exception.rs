//! The exception report: what the CPU's exception stubs (`cpu`) call. Every
//! exception is fatal: the report names the exception, the registers and,
//! for a page fault, the faulting address and who owns it, says whether a
//! kernel stack overflowed into its guard page, and fails the run.
//!
//! It sits on top of the memory layer and asks it, through the functions
//! `kmem` exports (`overflowed`, `Owner`), which stack or arena an
//! address belongs to.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;

use crate::console::{Verdict, exit, print_unlocked};
use crate::cpu::{self, ExceptionFrame};
use crate::kmem::{self, Owner};

const NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "non-maskable interrupt",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection fault (#GP)",
    "page fault (#PF)",
    "reserved vector 15",
    "x87 floating-point error (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point error (#XM)",
    "virtualization exception (#VE)",
    "control protection (#CP)",
    "reserved vector 22",
    "reserved vector 23",
    "reserved vector 24",
    "reserved vector 25",
    "reserved vector 26",
    "reserved vector 27",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security exception (#SX)",
    "reserved vector 31",
];

/// The CPU reporting an exception, plus one (0: none is).
static REPORTING: AtomicUsize = AtomicUsize::new(0);

/// Set by the `fault-in-report` boot word: the report then overflows the
/// stack it runs on, to show that a fault while reporting one still ends
/// in a report and a failing verdict.
pub static FAULT_IN_REPORT: AtomicBool = AtomicBool::new(false);

const DOUBLE_FAULT: usize = 8;
const PAGE_FAULT: usize = 14;

/// Prints the stack-overflow line if the exception is one, and says so.
fn report_overflow(vector: usize, name: &str, frame: &ExceptionFrame) -> bool {
    if vector != DOUBLE_FAULT && vector != PAGE_FAULT {
        return false;
    }
    let cr2 = Cr2::read_raw();
    let (Ok(addr), Ok(rsp)) = (VirtAddr::try_new(cr2), VirtAddr::try_new(frame.rsp)) else {
        return false;
    };
    let Some(stack) = kmem::overflowed(addr, rsp) else {
        return false;
    };
    print_unlocked(format_args!(
        "\n!!! kernel stack overflow: guard page hit at {cr2:#x} below kernel stack '{}' ({:#x}..{:#x})\n    {name} at rip {:#x} with rsp {:#x}\n",
        stack.name,
        stack.bottom(),
        stack.top,
        frame.rip,
        frame.rsp
    ));
    if vector == DOUBLE_FAULT {
        print_unlocked(format_args!(
            "    (the page fault could not push its frame on the full stack, so it became a double fault, taken on the double-fault stack)\n"
        ));
    }
    true
}

/// Recurses until the stack runs out (for `FAULT_IN_REPORT`).
#[inline(never)]
fn overflow_here(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    overflow_here(depth + 1) + frame[depth as usize % frame.len()]
}

/// Called by the stubs' common path in `cpu` with the registers they
/// saved; never returns.
#[unsafe(no_mangle)]
extern "C" fn exception_report(frame: &ExceptionFrame) -> ! {
    let vector = frame.vector as usize;
    let name = NAMES.get(vector).copied().unwrap_or("unknown vector");
    let cpu = cpu::current_index();
    let reporter = REPORTING
        .compare_exchange(0, cpu + 1, Ordering::SeqCst, Ordering::SeqCst)
        .err();
    if reporter.is_some_and(|r| r != cpu + 1) {
        // Another CPU is reporting and will end the run: stop here.
        loop {
            x86_64::instructions::interrupts::disable();
            x86_64::instructions::hlt();
        }
    }
    if reporter.is_some() {
        let overflow = report_overflow(vector, name, frame);
        print_unlocked(format_args!(
            "\n!!! {name} on CPU {cpu} at rip {:#x} rsp {:#x} while reporting an exception\nverdict: FAIL ({})\n",
            frame.rip,
            frame.rsp,
            if overflow {
                "kernel stack overflow while reporting an exception"
            } else {
                "CPU exception while reporting one"
            }
        ));
        exit(Verdict::Fail);
    }
    let overflow = report_overflow(vector, name, frame);
    print_unlocked(format_args!(
        "\n!!! CPU exception {vector} on CPU {cpu}: {name}, error code {:#x}\n    rip {:#018x}  rsp {:#018x}  rflags {:#x}  cs {:#x}\n",
        frame.error, frame.rip, frame.rsp, frame.rflags, frame.cs
    ));
    const GENERAL_PROTECTION: usize = 13;
    if vector == GENERAL_PROTECTION && frame.error & 2 != 0 {
        print_unlocked(format_args!(
            "    an interrupt arrived on vector {:#x}, which has no gate in the IDT\n",
            frame.error >> 3
        ));
    }
    if FAULT_IN_REPORT.load(Ordering::Relaxed) {
        print_unlocked(format_args!(
            "    fault-in-report: overflowing the stack this report runs on\n"
        ));
        overflow_here(0);
    }
    print_unlocked(format_args!(
        "    rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x}\n    rsi {:#x} rdi {:#x} rbp {:#x}\n    r8 {:#x} r9 {:#x} r10 {:#x} r11 {:#x}\n    r12 {:#x} r13 {:#x} r14 {:#x} r15 {:#x}\n",
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15
    ));
    if vector == PAGE_FAULT || vector == DOUBLE_FAULT {
        let addr = Cr2::read_raw();
        let e = frame.error;
        if vector == PAGE_FAULT {
            print_unlocked(format_args!(
                "    faulting address (cr2) {addr:#018x}: {} {} in {} mode{}\n",
                if e & 1 != 0 {
                    "protection violation on"
                } else {
                    "not-present page on"
                },
                if e & 0x10 != 0 {
                    "instruction fetch"
                } else if e & 2 != 0 {
                    "write"
                } else {
                    "read"
                },
                if e & 4 != 0 { "user" } else { "kernel" },
                if e & 8 != 0 {
                    " (reserved bit set)"
                } else {
                    ""
                },
            ));
        } else {
            print_unlocked(format_args!(
                "    cr2 {addr:#018x} (the last page fault's address)\n"
            ));
        }
        // Last: finding the owner takes arena locks, which the code that
        // faulted may hold.
        match VirtAddr::try_new(addr) {
            Ok(addr) => print_unlocked(format_args!("    owner: {}\n", Owner::of(addr))),
            Err(_) => print_unlocked(format_args!(
                "    owner: nothing: not a canonical address\n"
            )),
        }
    }
    print_unlocked(format_args!(
        "verdict: FAIL ({})\n",
        if overflow {
            "kernel stack overflow"
        } else {
            "CPU exception"
        }
    ));
    exit(Verdict::Fail)
}
