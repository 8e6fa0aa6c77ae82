//! What the machine has: the local APIC and IOAPIC, mapped uncached
//! through the `device` arena, and a PCI host bridge (q35) or none
//! (microvm).

use x86_64::VirtAddr;
use x86_64::instructions::port::Port;

use crate::kmem::map_device;
use crate::layout::{IOAPIC, LAPIC, PAGE};

#[derive(Clone, Copy, Debug, Default)]
pub struct Devices {
    /// Virtual address of the LAPIC's registers, if mapped.
    pub lapic: Option<VirtAddr>,
    pub ioapic: Option<VirtAddr>,
    /// Vendor and device of PCI 00:00.0, if there is a PCI bus.
    pub host_bridge: Option<(u16, u16)>,
}

impl Devices {
    pub fn machine(&self) -> &'static str {
        match self.host_bridge {
            Some((0x8086, 0x29c0)) => "q35 (PCI host bridge 8086:29c0)",
            Some((0x8086, 0x1237)) => "pc (PCI host bridge 8086:1237)",
            Some(_) => "a PC with an unknown PCI host bridge",
            None => "microvm (no PCI bus)",
        }
    }

    /// LAPIC ID and version registers.
    pub fn lapic_regs(&self) -> Option<(u32, u32)> {
        let base = self.lapic?;
        // SAFETY: the LAPIC page is mapped uncached at `base`; ID and
        // version are read-only registers.
        Some(unsafe {
            (
                core::ptr::read_volatile((base + 0x20u64).as_ptr::<u32>()),
                core::ptr::read_volatile((base + 0x30u64).as_ptr::<u32>()),
            )
        })
    }

    /// IOAPIC ID and version registers (through IOREGSEL/IOWIN).
    pub fn ioapic_regs(&self) -> Option<(u32, u32)> {
        let base = self.ioapic?;
        let read = |reg: u32| {
            // SAFETY: the IOAPIC page is mapped uncached at `base`; selecting
            // and reading a register has no other effect.
            unsafe {
                core::ptr::write_volatile(base.as_mut_ptr::<u32>(), reg);
                core::ptr::read_volatile((base + 0x10u64).as_ptr::<u32>())
            }
        };
        Some((read(0), read(1)))
    }
}

pub fn probe() -> Devices {
    // SAFETY: PCI configuration mechanism 1; reading 00:00.0's first
    // register has no side effects, and without PCI the ports float high.
    let id = unsafe {
        Port::<u32>::new(0xcf8).write(0x8000_0000);
        Port::<u32>::new(0xcfc).read()
    };
    Devices {
        lapic: map_device(LAPIC, PAGE).ok(),
        ioapic: map_device(IOAPIC, PAGE).ok(),
        host_bridge: (id != u32::MAX).then_some((id as u16, (id >> 16) as u16)),
    }
}

/// Remaps the legacy PICs to vectors 0x20..0x30 and masks every line:
/// the kernel takes no device interrupts, and with interrupts enabled
/// (for IPIs) a PIC line left at the BIOS's vectors 8..16 would look like
/// an exception.
pub fn mask_pic() {
    let writes: [(u16, u8); 10] = [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xff),
        (0xa1, 0xff),
    ];
    for (port, value) in writes {
        // SAFETY: the PICs' command and data ports; without PICs they float.
        unsafe { Port::<u8>::new(port).write(value) };
    }
}
