//! The description of a guest machine's physical map: its regions, the
//! ranges reserved for fixed devices, and its ID pools.

use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, ErrorKind, Result};
use crate::owner::Label;

/// The 32-bit boundary, below which 32-bit BARs and legacy devices live.
pub const FOUR_GIB: u64 = 1 << 32;

/// A named part of the guest-physical map from which allocations are made:
/// RAM, a 32-bit MMIO window, a 64-bit one. A region may have several
/// ranges (RAM below and above the 32-bit hole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// The region's name.
    pub name: String,
    /// Its ranges, `(start, size)`, in any order.
    pub ranges: Vec<(u64, u64)>,
}

/// A range no allocation may use: the IOAPIC and LAPIC pages, the PCIe
/// configuration window, firmware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedSpec {
    /// What the range is.
    pub name: String,
    /// First address.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A pool of numbers: GSIs, MSI vectors, PCI slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPoolSpec {
    /// The pool's name.
    pub name: String,
    /// The first ID.
    pub base: u32,
    /// How many IDs, at least one.
    pub count: u32,
}

/// A guest machine's physical address space: its width, the quantum
/// allocations are rounded to, the regions, reserved ranges and ID pools.
/// Built with the methods below, checked by
/// [`GuestLayout::new`](crate::GuestLayout::new).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Physical address bits: the space is `[0, 2^phys_bits)` (12 to 63).
    pub phys_bits: u8,
    /// Every address and size is a multiple of this power of two (4096).
    pub quantum: u64,
    /// The regions, numbered by their order here ([`RegionId`](crate::RegionId)).
    pub regions: Vec<RegionSpec>,
    /// The reserved ranges.
    pub reserved: Vec<ReservedSpec>,
    /// The ID pools, numbered by their order here ([`PoolId`](crate::PoolId)).
    pub pools: Vec<IdPoolSpec>,
}

impl Machine {
    /// A machine with `phys_bits` address bits, a 4 KiB quantum, and nothing
    /// in it yet.
    pub fn new(phys_bits: u8) -> Self {
        Machine {
            phys_bits,
            quantum: 4096,
            regions: Vec::new(),
            reserved: Vec::new(),
            pools: Vec::new(),
        }
    }

    /// Adds a region named `name` made of `ranges` (`(start, size)`).
    pub fn region(mut self, name: &str, ranges: &[(u64, u64)]) -> Self {
        self.regions.push(RegionSpec {
            name: name.into(),
            ranges: ranges.to_vec(),
        });
        self
    }

    /// Reserves `[start, start + size)` for a fixed device named `name`.
    pub fn reserve(mut self, name: &str, start: u64, size: u64) -> Self {
        self.reserved.push(ReservedSpec {
            name: name.into(),
            start,
            size,
        });
        self
    }

    /// Adds a pool of `count` IDs from `base`, named `name`.
    pub fn id_pool(mut self, name: &str, base: u32, count: u32) -> Self {
        self.pools.push(IdPoolSpec {
            name: name.into(),
            base,
            count,
        });
        self
    }

    /// A q35-like x86-64 guest with `ram` bytes of RAM (a multiple of
    /// 4 KiB) and 40 address bits: RAM below 2 GiB and the rest from
    /// 4 GiB; the 32-bit hole `[2 GiB, 4 GiB)` holding the `mmio32` region
    /// around the PCIe configuration window (`ecam`, 256 MiB at
    /// 0xb000_0000) and below the IOAPIC, HPET, LAPIC/MSI and firmware
    /// ranges; the `mmio64` region `[512 GiB, 1 TiB)`; and the pools `gsi`
    /// (0 to 1023: the 24 IOAPIC pins, then MSI routes) and `pci-slot` (0
    /// to 255: bus * 32 + device).
    pub fn q35(ram: u64) -> Self {
        let low = ram.min(Q35_HOLE);
        let high = ram - low;
        let mut ram_ranges = Vec::new();
        if low > 0 {
            ram_ranges.push((0, low));
        }
        if high > 0 {
            ram_ranges.push((FOUR_GIB, high));
        }
        Machine::new(40)
            .region("ram", &ram_ranges)
            .region(
                "mmio32",
                &[
                    (Q35_HOLE, 0xb000_0000 - Q35_HOLE),
                    (0xc000_0000, 0xfec0_0000 - 0xc000_0000),
                ],
            )
            .region("mmio64", &[(512 << 30, 512 << 30)])
            .reserve("ecam", 0xb000_0000, 0x1000_0000)
            .reserve("ioapic", 0xfec0_0000, 0x1000)
            .reserve("hpet", 0xfed0_0000, 0x1000)
            .reserve("lapic-msi", 0xfee0_0000, 0x10_0000)
            .reserve("firmware", 0xff00_0000, 0x100_0000)
            .id_pool("gsi", 0, 1024)
            .id_pool("pci-slot", 0, 256)
    }

    /// Checks the description: address bits 12 to 63, a power-of-two
    /// quantum of at most 2^phys_bits, every range non-empty, on the
    /// quantum, inside the address space and overlapping no other,
    /// names of 1 to 31 bytes and unique among regions, reserved ranges
    /// and pools (each kind apart), pools non-empty and within `u32`.
    /// `BadMachine` names the first problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |what| Err(Error::new(ErrorKind::BadMachine, what));
        if !(12..=63).contains(&self.phys_bits) {
            return bad("phys_bits is not between 12 and 63");
        }
        let top = 1u64 << self.phys_bits;
        if !self.quantum.is_power_of_two() || self.quantum > top {
            return bad("the quantum is not a power of two within the address space");
        }
        if self.regions.len() > usize::from(u16::MAX)
            || self.reserved.len() > usize::from(u16::MAX)
            || self.pools.len() > usize::from(u16::MAX)
        {
            return bad("more than 65535 regions, reserved ranges or pools");
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for region in &self.regions {
            if region.ranges.is_empty() || region.ranges.len() > usize::from(u16::MAX) {
                return bad("a region has no range, or more than 65535");
            }
            ranges.extend(region.ranges.iter().copied());
        }
        ranges.extend(self.reserved.iter().map(|r| (r.start, r.size)));
        for &(start, size) in &ranges {
            let end = start.checked_add(size);
            if size == 0 || end.is_none_or(|end| end > top) {
                return Err(Error::new(
                    ErrorKind::BadMachine,
                    "a range is empty or leaves the address space",
                )
                .at(start));
            }
            if (start | size) & (self.quantum - 1) != 0 {
                return Err(
                    Error::new(ErrorKind::BadMachine, "a range is off the quantum").at(start),
                );
            }
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            if pair[0].0 + pair[0].1 > pair[1].0 {
                return Err(Error::new(ErrorKind::BadMachine, "two ranges overlap").at(pair[1].0));
            }
        }
        let names_ok = |names: &mut dyn Iterator<Item = &String>| {
            let mut seen: Vec<&str> = Vec::new();
            for name in names {
                if Label::new(name).is_err() || seen.contains(&name.as_str()) {
                    return false;
                }
                seen.push(name);
            }
            true
        };
        if !names_ok(&mut self.regions.iter().map(|r| &r.name))
            || !names_ok(&mut self.reserved.iter().map(|r| &r.name))
            || !names_ok(&mut self.pools.iter().map(|p| &p.name))
        {
            return bad("a name is empty, longer than 31 bytes, or used twice");
        }
        for pool in &self.pools {
            if pool.count == 0 || u64::from(pool.base) + u64::from(pool.count) > 1 << 32 {
                return bad("an ID pool is empty or passes 2^32");
            }
        }
        Ok(())
    }
}

/// Where q35's 32-bit hole starts when RAM reaches it.
const Q35_HOLE: u64 = 0x8000_0000;
