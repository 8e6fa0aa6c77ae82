//! Saving a layout and restoring it, in a compact, versioned binary
//! format of this crate's own (the crate documentation specifies it).
//!
//! A restore reads and checks the whole snapshot before it builds
//! anything, and builds a new layout rather than changing one: malformed
//! input is a `BadSnapshot` naming what is wrong and where, never a panic.

use alloc::string::String;
use alloc::vec::Vec;

use vmem_core::Policy;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Allocation, GuestLayout, RegionId, exact};
use crate::machine::{IdPoolSpec, Machine, RegionSpec, ReservedSpec};
use crate::owner::{DeviceId, Label, Owner};

/// The first eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"VMEMVMM\0";

/// The format version [`GuestLayout::save`] writes and
/// [`GuestLayout::restore`] reads.
pub const VERSION: u16 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn name(&mut self, name: &str) {
        // Names are 1 to 31 bytes (the machine was validated).
        self.u8(name.len() as u8);
        self.0.extend_from_slice(name.as_bytes());
    }
    fn owner(&mut self, owner: &Owner) {
        match owner {
            Owner::Bar { device, bar } => {
                self.u8(0);
                self.u32(device.0);
                self.u8(*bar);
            }
            Owner::Device(device) => {
                self.u8(1);
                self.u32(device.0);
            }
            Owner::Label(label) => {
                self.u8(2);
                self.name(label.as_str());
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn bad(what: &'static str, at: usize) -> Error {
    Error::new(ErrorKind::BadSnapshot, what).at(at as u64)
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(bad("the snapshot ends early", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn label(&mut self) -> Result<Label> {
        let at = self.at;
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        Label::from_bytes(bytes).ok_or(bad("a name is empty, too long or not UTF-8", at))
    }
    fn name(&mut self) -> Result<String> {
        self.label().map(|l| l.as_str().into())
    }
    fn owner(&mut self) -> Result<Owner> {
        let at = self.at;
        match self.u8()? {
            0 => Ok(Owner::Bar {
                device: DeviceId(self.u32()?),
                bar: self.u8()?,
            }),
            1 => Ok(Owner::Device(DeviceId(self.u32()?))),
            2 => Ok(Owner::Label(self.label()?)),
            _ => Err(bad("an owner has an unknown kind", at)),
        }
    }
    /// A count of records each at least `min_record` bytes long, refused
    /// when the rest of the snapshot cannot hold them (so a forged count
    /// reserves no memory).
    fn count(&mut self, n: usize, min_record: usize) -> Result<usize> {
        let at = self.at;
        let left = self.bytes.len() - self.at;
        if n.saturating_mul(min_record) > left {
            return Err(bad("a count is larger than the snapshot can hold", at));
        }
        Ok(n)
    }
}

/// A pool as a snapshot records it.
struct PoolState {
    rotor: u32,
    ids: Vec<(u32, Owner)>,
}

impl GuestLayout {
    /// The layout as bytes: the machine description, every allocation with
    /// its owner and rules, and each ID pool's next-fit rotor and taken IDs
    /// with their owners (format in the crate documentation).
    pub fn save(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + self.allocs.len() * 62));
        w.0.extend_from_slice(&MAGIC);
        w.u16(VERSION);
        let m = &self.machine;
        w.u8(m.phys_bits);
        w.u64(m.quantum);
        w.u16(m.regions.len() as u16);
        for r in &m.regions {
            w.name(&r.name);
            w.u16(r.ranges.len() as u16);
            for &(start, size) in &r.ranges {
                w.u64(start);
                w.u64(size);
            }
        }
        w.u16(m.reserved.len() as u16);
        for r in &m.reserved {
            w.name(&r.name);
            w.u64(r.start);
            w.u64(r.size);
        }
        w.u16(m.pools.len() as u16);
        for p in &m.pools {
            w.name(&p.name);
            w.u32(p.base);
            w.u32(p.count);
        }
        w.u32(self.allocs.len() as u32);
        for a in self.allocs.values() {
            w.u16(a.region.0);
            for v in [a.start, a.size, a.align, a.phase, a.boundary, a.min, a.max] {
                w.u64(v);
            }
            w.owner(&a.owner);
        }
        for p in &self.pools {
            w.u32(p.rotor);
            w.u32(p.owners.len() as u32);
            for (&id, owner) in &p.owners {
                w.u32(id);
                w.owner(owner);
            }
        }
        w.0
    }

    /// The layout `bytes` describe, as [`GuestLayout::save`] wrote it.
    ///
    /// Everything is checked before anything is built: the magic and
    /// version; the machine ([`Machine::validate`]: ranges on the quantum,
    /// inside the address space, not overlapping, so the regions and
    /// reserved ranges tile the root as described); each allocation's
    /// region, its bounds (inside one range of its region), its rules
    /// (valid, and met by its start), that allocations come in address
    /// order and do not overlap; owners (known kinds, valid labels); each
    /// pool's rotor and IDs (inside the pool, in order, each once); and
    /// that no byte is left over. The first problem is a `BadSnapshot`
    /// naming it, with the offset where it was found.
    pub fn restore(bytes: &[u8]) -> Result<GuestLayout> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(bad("not a vmem-vmm snapshot (bad magic)", 0));
        }
        let at = r.at;
        if r.u16()? != VERSION {
            return Err(bad("unsupported snapshot version", at));
        }
        let machine = read_machine(&mut r)?;
        let machine_end = r.at;
        machine
            .validate()
            .map_err(|e| Error::new(ErrorKind::BadSnapshot, e.what()).at(machine_end as u64))?;
        let allocs = read_allocations(&mut r, &machine)?;
        let mut pools = Vec::with_capacity(machine.pools.len());
        for spec in &machine.pools {
            pools.push(read_pool(&mut r, spec)?);
        }
        if r.at != bytes.len() {
            return Err(bad("bytes are left after the snapshot", r.at));
        }
        // Everything checked: build. Nothing below can meet a conflict; an
        // arena out of boundary tags is the only failure left.
        let mut layout = GuestLayout::new(machine)?;
        for a in &allocs {
            layout.regions[usize::from(a.region.0)]
                .arena
                .xalloc(a.size, &exact(a.start, a.size)?, Policy::InstantFit)
                .map_err(Error::from_arena)?;
            layout.allocs.insert(a.start, *a);
            layout.by_owner.insert((a.owner, a.start));
        }
        for (index, (pool, state)) in layout.pools.iter_mut().zip(pools).enumerate() {
            for &(id, owner) in &state.ids {
                pool.arena
                    .xalloc(1, &exact(u64::from(id), 1)?, Policy::InstantFit)
                    .map_err(Error::from_arena)?;
                pool.owners.insert(id, owner);
                layout.ids_by_owner.insert((owner, index as u16, id));
            }
            pool.rotor = state.rotor;
        }
        Ok(layout)
    }

    /// As [`GuestLayout::restore`], and also `BadSnapshot` unless the
    /// snapshot's machine is `machine` (a VMM restoring onto the machine it
    /// configured).
    pub fn restore_for(machine: &Machine, bytes: &[u8]) -> Result<GuestLayout> {
        let layout = GuestLayout::restore(bytes)?;
        if layout.machine != *machine {
            return Err(Error::new(
                ErrorKind::BadSnapshot,
                "the snapshot is of another machine",
            ));
        }
        Ok(layout)
    }
}

#[cfg(feature = "std")]
impl GuestLayout {
    /// Writes [`GuestLayout::save`]'s bytes to `out`.
    pub fn save_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.save())
    }

    /// Reads `input` to its end and restores the layout it holds, as
    /// [`GuestLayout::restore`]: an I/O error is `std::io::Error`'s, a bad
    /// snapshot an `InvalidData` error wrapping the [`Error`].
    pub fn restore_from(input: &mut impl std::io::Read) -> std::io::Result<GuestLayout> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        GuestLayout::restore(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

fn read_machine(r: &mut Reader<'_>) -> Result<Machine> {
    let phys_bits = r.u8()?;
    let quantum = r.u64()?;
    let n = r.u16()?;
    let n = r.count(usize::from(n), 4)?;
    let mut regions = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.name()?;
        let m = r.u16()?;
        let m = r.count(usize::from(m), 16)?;
        let mut ranges = Vec::with_capacity(m);
        for _ in 0..m {
            ranges.push((r.u64()?, r.u64()?));
        }
        regions.push(RegionSpec { name, ranges });
    }
    let n = r.u16()?;
    let n = r.count(usize::from(n), 18)?;
    let mut reserved = Vec::with_capacity(n);
    for _ in 0..n {
        reserved.push(ReservedSpec {
            name: r.name()?,
            start: r.u64()?,
            size: r.u64()?,
        });
    }
    let n = r.u16()?;
    let n = r.count(usize::from(n), 10)?;
    let mut pools = Vec::with_capacity(n);
    for _ in 0..n {
        pools.push(IdPoolSpec {
            name: r.name()?,
            base: r.u32()?,
            count: r.u32()?,
        });
    }
    Ok(Machine {
        phys_bits,
        quantum,
        regions,
        reserved,
        pools,
    })
}

fn read_allocations(r: &mut Reader<'_>, machine: &Machine) -> Result<Vec<Allocation>> {
    let q = machine.quantum;
    let n = r.u32()?;
    let n = r.count(n as usize, 2 + 7 * 8 + 3)?;
    let mut allocs: Vec<Allocation> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.at;
        let region = r.u16()?;
        let [start, size, align, phase, boundary, min, max] = [
            r.u64()?,
            r.u64()?,
            r.u64()?,
            r.u64()?,
            r.u64()?,
            r.u64()?,
            r.u64()?,
        ];
        let owner = r.owner()?;
        let spec = machine
            .regions
            .get(usize::from(region))
            .ok_or(bad("an allocation names no region", at))?;
        let Some(end) = start.checked_add(size).filter(|_| size != 0) else {
            return Err(bad("an allocation is empty or passes 2^64", at));
        };
        if (start | size) % q != 0 {
            return Err(bad("an allocation is off the quantum", at));
        }
        if !spec.ranges.iter().any(|&(s, z)| s <= start && end <= s + z) {
            return Err(bad(
                "an allocation is not inside one range of its region",
                at,
            ));
        }
        let rules_valid = align.is_power_of_two()
            && align >= q
            && phase < align
            && phase % q == 0
            && (boundary == 0 || (boundary.is_power_of_two() && boundary >= align))
            && min < max;
        let a = Allocation {
            start,
            size,
            region: RegionId(region),
            owner,
            align,
            phase,
            boundary,
            min,
            max,
        };
        if !rules_valid || !a.rule().admits(start) {
            return Err(bad("an allocation's constraints are invalid or unmet", at));
        }
        if allocs.last().is_some_and(|prev| prev.end() > start) {
            return Err(bad("allocations overlap or are out of address order", at));
        }
        allocs.push(a);
    }
    Ok(allocs)
}

fn read_pool(r: &mut Reader<'_>, spec: &IdPoolSpec) -> Result<PoolState> {
    let (base, end) = (
        u64::from(spec.base),
        u64::from(spec.base) + u64::from(spec.count),
    );
    let at = r.at;
    let rotor = r.u32()?;
    if !(base..end).contains(&u64::from(rotor)) {
        return Err(bad("a pool's rotor is outside the pool", at));
    }
    let n = r.u32()?;
    let n = r.count(n as usize, 7)?;
    let mut ids: Vec<(u32, Owner)> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.at;
        let id = r.u32()?;
        let owner = r.owner()?;
        if !(base..end).contains(&u64::from(id)) {
            return Err(bad("an ID is outside its pool", at));
        }
        if ids.last().is_some_and(|&(prev, _)| prev >= id) {
            return Err(bad("IDs repeat or are out of order", at));
        }
        ids.push((id, owner));
    }
    Ok(PoolState { rotor, ids })
}
