//! The CPUs the firmware lists: ACPI's MADT, found from the RSDP that
//! `hvm_start_info` points at (or, failing that, the one the BIOS area
//! holds), through the XSDT (or the RSDT). Only the few structures needed
//! are read, by hand, while the boot tables still identity map the low
//! 4 GiB where QEMU puts its tables; what is kept is copied out, so the
//! tables may be overwritten afterwards.

use vmem_core::MAX_CPUS;

/// What the MADT says: the local APIC's address and the enabled CPUs'
/// APIC IDs (the first `MAX_CPUS`), in table order; the first is the
/// boot CPU on QEMU's machines, but `smp` checks by ID.
#[derive(Clone, Copy, Debug)]
pub struct Madt {
    /// Physical address of the local APIC's registers.
    pub lapic: u64,
    apic_ids: [u32; MAX_CPUS],
    kept: usize,
    /// Enabled CPUs listed, even those beyond `MAX_CPUS`.
    pub listed: usize,
    /// Where the RSDP was found, and how (`hvm_start_info` or a scan).
    pub rsdp: u64,
    pub rsdp_from: &'static str,
    /// Whether the root table was the XSDT (else the RSDT).
    pub xsdt: bool,
}

impl Madt {
    /// APIC IDs of the enabled CPUs kept (at most `MAX_CPUS`).
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.kept]
    }
}

/// Reads a `T` at physical `addr`.
///
/// # Safety
/// `addr..addr + size_of::<T>()` is identity mapped and readable.
unsafe fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    let sum = (0..len).fold(0u8, |s, i| {
        // SAFETY: inside a table whose length its header gave.
        s.wrapping_add(unsafe { read::<u8>(addr + i) })
    });
    sum == 0
}

fn is_rsdp(addr: u64) -> bool {
    // SAFETY: the caller passes an address in the low 4 GiB, identity mapped.
    let sig: [u8; 8] = unsafe { read(addr) };
    sig == *b"RSD PTR " && checksum_ok(addr, 20)
}

/// The RSDP in the BIOS read-only area, where SeaBIOS and QEMU put it
/// when the loader does not say.
fn scan_bios_area() -> Option<u64> {
    (0xe_0000u64..0x10_0000).step_by(16).find(|&a| is_rsdp(a))
}

/// Finds the MADT and reads it. `rsdp_paddr` is `hvm_start_info`'s (0 if
/// the loader gave none).
///
/// # Safety
/// The boot tables' identity map of the low 4 GiB is live.
pub unsafe fn madt(rsdp_paddr: u64) -> Result<Madt, &'static str> {
    let (rsdp, rsdp_from) = if rsdp_paddr != 0 && rsdp_paddr < 1 << 32 && is_rsdp(rsdp_paddr) {
        (rsdp_paddr, "hvm_start_info")
    } else {
        let found = scan_bios_area()
            .ok_or("no ACPI RSDP (none in hvm_start_info, none in the BIOS area)")?;
        (found, "a scan of the BIOS area")
    };
    // SAFETY: the RSDP was found and checked above; its fields lie within it.
    let (revision, rsdt, xsdt) = unsafe {
        (
            read::<u8>(rsdp + 15),
            u64::from(read::<u32>(rsdp + 16)),
            read::<u64>(rsdp + 24),
        )
    };
    let (root, entry_size) = if revision >= 2 && xsdt != 0 && xsdt < 1 << 32 {
        (xsdt, 8)
    } else {
        (rsdt, 4)
    };
    if root == 0 || root >= 1 << 32 {
        return Err("the RSDP points at no root table below 4 GiB");
    }
    // SAFETY: the root table's header, below 4 GiB.
    let root_len = u64::from(unsafe { read::<u32>(root + 4) });
    if root_len < 36 || !checksum_ok(root, root_len) {
        return Err("the ACPI root table is too short or fails its checksum");
    }
    let entries = (root_len - 36) / entry_size;
    let madt = (0..entries)
        .map(|i| {
            let at = root + 36 + i * entry_size;
            // SAFETY: an entry of the root table, within its length.
            unsafe {
                if entry_size == 8 {
                    read::<u64>(at)
                } else {
                    u64::from(read::<u32>(at))
                }
            }
        })
        .filter(|&t| t != 0 && t < 1 << 32)
        // SAFETY: a table the root lists; its signature is its first bytes.
        .find(|&t| unsafe { read::<[u8; 4]>(t) } == *b"APIC")
        .ok_or("the ACPI root table lists no MADT")?;
    // SAFETY: the MADT's header.
    let len = u64::from(unsafe { read::<u32>(madt + 4) });
    if len < 44 || !checksum_ok(madt, len) {
        return Err("the MADT is too short or fails its checksum");
    }
    let mut out = Madt {
        // SAFETY: the MADT's local APIC address field.
        lapic: u64::from(unsafe { read::<u32>(madt + 36) }),
        apic_ids: [0; MAX_CPUS],
        kept: 0,
        listed: 0,
        rsdp,
        rsdp_from,
        xsdt: entry_size == 8,
    };
    let mut at = madt + 44;
    while at + 2 <= madt + len {
        // SAFETY: an entry header inside the MADT.
        let (kind, entry_len) = unsafe { (read::<u8>(at), u64::from(read::<u8>(at + 1))) };
        if entry_len < 2 || at + entry_len > madt + len {
            return Err("a MADT entry runs past the table");
        }
        // Processor local APIC (0) and local x2APIC (9); flags bit 0 is
        // "enabled" (bit 1, "online capable", is a CPU one could hot-add).
        // SAFETY: the fields lie inside the entry, whose length was checked.
        let cpu = unsafe {
            match kind {
                0 if entry_len >= 8 => Some((u32::from(read::<u8>(at + 3)), read::<u32>(at + 4))),
                9 if entry_len >= 16 => Some((read::<u32>(at + 4), read::<u32>(at + 8))),
                5 if entry_len >= 12 => {
                    out.lapic = read::<u64>(at + 4);
                    None
                }
                _ => None,
            }
        };
        if let Some((id, flags)) = cpu
            && flags & 1 != 0
        {
            if let Some(slot) = out.apic_ids.get_mut(out.kept) {
                *slot = id;
                out.kept += 1;
            }
            out.listed += 1;
        }
        at += entry_len;
    }
    if out.listed == 0 {
        return Err("the MADT lists no enabled CPU");
    }
    Ok(out)
}
