//! The local APIC, as each CPU sees its own: in x2APIC mode (registers
//! as MSRs) when CPUID says the CPU has it, else in xAPIC mode through the
//! page `devices` mapped uncached. Each CPU enables its own; the
//! inter-processor interrupts (INIT, SIPI, fixed) go through the
//! interrupt command register.

use x86_64::VirtAddr;
use x86_64::registers::model_specific::Msr;

use crate::cpu::{SPURIOUS_VECTOR, cpuid};

const IA32_APIC_BASE: u32 = 0x1b;
/// xAPIC register offsets; the x2APIC MSR is `0x800 + offset / 16`.
const ID: u32 = 0x20;
const EOI: u32 = 0xb0;
const SVR: u32 = 0xf0;
const ICR_LOW: u32 = 0x300;
const ICR_HIGH: u32 = 0x310;

/// ICR delivery modes and flags.
const INIT: u32 = 0x500;
const STARTUP: u32 = 0x600;
const ASSERT: u32 = 1 << 14;
const PENDING: u32 = 1 << 12;
const ALL_BUT_SELF: u32 = 0b11 << 18;

/// How this kernel reaches the local APIC.
#[derive(Clone, Copy, Debug)]
pub enum Lapic {
    X2apic,
    Xapic(VirtAddr),
}

static LAPIC: spin::Once<Lapic> = spin::Once::new();

/// Picks the mode: x2APIC when the CPU has it, else xAPIC at `mmio` (the
/// page `devices` mapped). None when neither is possible.
pub fn init(mmio: Option<VirtAddr>) -> Option<Lapic> {
    let has_x2apic = cpuid(1)[2] & (1 << 21) != 0;
    let mode = if has_x2apic {
        Lapic::X2apic
    } else {
        Lapic::Xapic(mmio?)
    };
    Some(*LAPIC.call_once(|| mode))
}

/// The mode `init` chose.
pub fn mode() -> Option<Lapic> {
    LAPIC.get().copied()
}

fn read(reg: u32) -> u32 {
    match mode() {
        // SAFETY: the CPU is in x2APIC mode (`enable`), so the MSR exists.
        Some(Lapic::X2apic) => unsafe { Msr::new(0x800 + reg / 16).read() as u32 },
        // SAFETY: the xAPIC page is mapped uncached; reading has no effect.
        Some(Lapic::Xapic(base)) => unsafe {
            core::ptr::read_volatile((base + u64::from(reg)).as_ptr::<u32>())
        },
        None => 0,
    }
}

fn write(reg: u32, value: u32) {
    match mode() {
        // SAFETY: as in `read`; the registers written are ours to program.
        Some(Lapic::X2apic) => unsafe { Msr::new(0x800 + reg / 16).write(u64::from(value)) },
        // SAFETY: as in `read`.
        Some(Lapic::Xapic(base)) => unsafe {
            core::ptr::write_volatile((base + u64::from(reg)).as_mut_ptr::<u32>(), value)
        },
        None => {}
    }
}

/// Enables the running CPU's local APIC (in x2APIC mode if chosen), with
/// spurious interrupts on `SPURIOUS_VECTOR`, so it accepts fixed IPIs.
pub fn enable() {
    if let Some(Lapic::X2apic) = mode() {
        let mut base = Msr::new(IA32_APIC_BASE);
        // SAFETY: the CPU has x2APIC (CPUID); setting EN and EXTD moves it
        // from xAPIC to x2APIC mode, a transition the SDM allows.
        unsafe { base.write(base.read() | (1 << 11) | (1 << 10)) };
    }
    write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// The running CPU's APIC ID.
pub fn id() -> u32 {
    match mode() {
        Some(Lapic::X2apic) => read(ID),
        _ => read(ID) >> 24,
    }
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(EOI, 0);
}

/// Sends an IPI: `low` (vector, mode, shorthand) to APIC ID `dest`.
fn send(dest: u32, low: u32) {
    match mode() {
        Some(Lapic::X2apic) => {
            // SAFETY: x2APIC mode; one 64-bit write sends the IPI.
            unsafe { Msr::new(0x830).write((u64::from(dest) << 32) | u64::from(low)) };
        }
        Some(Lapic::Xapic(_)) => {
            write(ICR_HIGH, dest << 24);
            write(ICR_LOW, low);
            while read(ICR_LOW) & PENDING != 0 {
                core::hint::spin_loop();
            }
        }
        None => {}
    }
}

/// INIT to the CPU with APIC ID `dest`: it waits for a startup IPI.
pub fn send_init(dest: u32) {
    send(dest, INIT | ASSERT);
}

/// Startup IPI: the CPU `dest`, waiting after INIT, starts in real mode at
/// physical `page` (below 1 MiB, page aligned).
pub fn send_startup(dest: u32, page: u64) {
    send(dest, STARTUP | ASSERT | ((page >> 12) as u32 & 0xff));
}

/// A fixed interrupt on `vector` to every CPU but this one.
pub fn send_all_others(vector: u8) {
    send(0, ALL_BUT_SELF | ASSERT | u32::from(vector));
}

/// A fixed interrupt on `vector` to the CPU with APIC ID `dest`.
pub fn send_to(dest: u32, vector: u8) {
    send(dest, ASSERT | u32::from(vector));
}
