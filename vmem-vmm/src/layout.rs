//! The guest layout: the root arena over the whole physical address space,
//! one arena per region, the allocations with their owners, and the ID
//! pools.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use vmem_core::{Arena, ArenaConfig, Constraints, HeapMeta, Policy, SegmentKind};

use crate::error::{Error, ErrorKind, Result};
use crate::machine::Machine;
use crate::owner::{DeviceId, Label, Owner};
use crate::request::{Placement, Request, Rule};

/// A region, by its index in [`Machine::regions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u16);

/// An ID pool, by its index in [`Machine::pools`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(pub u16);

/// One allocation: where, who holds it, and the rules it was placed by (a
/// move and a restore check them again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allocation {
    /// First address.
    pub start: u64,
    /// Size in bytes (a multiple of the quantum).
    pub size: u64,
    /// The region it lies in.
    pub region: RegionId,
    /// Who holds it.
    pub owner: Owner,
    /// Alignment it keeps (the quantum when none was asked).
    pub align: u64,
    /// Phase past the alignment.
    pub phase: u64,
    /// Boundary it does not cross (0: none).
    pub boundary: u64,
    /// Lowest start it accepts.
    pub min: u64,
    /// Exclusive end it stays below (`u64::MAX`: none).
    pub max: u64,
}

impl Allocation {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    pub(crate) fn rule(&self) -> Rule {
        Rule {
            size: self.size,
            align: self.align,
            phase: self.phase,
            boundary: self.boundary,
            min: self.min,
            max: self.max,
        }
    }
}

/// What a walk of the root reports: the machine's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapEntry {
    /// A range of a region.
    Region(RegionId),
    /// A reserved range, by its index in [`Machine::reserved`].
    Reserved(u16),
    /// Address space that belongs to nothing.
    Unassigned,
}

/// How a pool hands out IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdPick {
    /// The first free ID at or after the one after the last handed out by
    /// next fit, wrapping around (reuses an ID as late as possible).
    Next,
    /// The lowest free ID.
    Lowest,
    /// This ID.
    Exactly(u32),
}

pub(crate) struct Region {
    pub(crate) arena: Arena<'static>,
}

pub(crate) struct Pool {
    pub(crate) arena: Arena<'static>,
    pub(crate) owners: BTreeMap<u32, Owner>,
    /// Where next fit looks first.
    pub(crate) rotor: u32,
}

/// A guest's physical address space and its numbers, laid out by a
/// [`Machine`] description.
///
/// The root arena spans `[0, 2^phys_bits)` and holds one segment for each
/// region range and reserved range, so a walk of it ([`GuestLayout::map`])
/// is the machine's map. Each region is an arena over its ranges; every
/// allocation is a segment of one, with its [`Owner`] and the rules it was
/// placed by. Each ID pool is an arena of quantum 1. All state is owned:
/// the layout is one value, saved by [`GuestLayout::save`] and rebuilt by
/// [`GuestLayout::restore`].
pub struct GuestLayout {
    pub(crate) machine: Machine,
    pub(crate) root: Arena<'static>,
    pub(crate) regions: Vec<Region>,
    pub(crate) allocs: BTreeMap<u64, Allocation>,
    /// Every allocation's `(owner, start)`: one ordered set, so an owner's
    /// allocations are a range of it and recording one allocates no set.
    pub(crate) by_owner: BTreeSet<(Owner, u64)>,
    pub(crate) pools: Vec<Pool>,
    /// Every taken ID's `(owner, pool, id)`, so an owner's IDs are a range.
    pub(crate) ids_by_owner: BTreeSet<(Owner, u16, u32)>,
}

fn arena(name: &str, quantum: u64) -> Result<Arena<'static>> {
    Arena::create(ArenaConfig::new(name, quantum).meta(&HeapMeta)).map_err(Error::from_arena)
}

impl GuestLayout {
    /// The layout of `machine`, empty of allocations; `BadMachine` if
    /// [`Machine::validate`] refuses it.
    pub fn new(machine: Machine) -> Result<Self> {
        machine.validate()?;
        let q = machine.quantum;
        let root = arena("guest", q)?;
        root.add_span(0, 1 << machine.phys_bits)
            .map_err(Error::from_arena)?;
        let mut regions = Vec::with_capacity(machine.regions.len());
        for spec in &machine.regions {
            let region = arena(&spec.name, q)?;
            for &(start, size) in &spec.ranges {
                root.xalloc(size, &exact(start, size)?, Policy::InstantFit)
                    .map_err(Error::from_arena)?;
                region.add_span(start, size).map_err(Error::from_arena)?;
            }
            regions.push(Region { arena: region });
        }
        for spec in &machine.reserved {
            root.xalloc(
                spec.size,
                &exact(spec.start, spec.size)?,
                Policy::InstantFit,
            )
            .map_err(Error::from_arena)?;
        }
        let mut pools = Vec::with_capacity(machine.pools.len());
        for spec in &machine.pools {
            let pool = arena(&spec.name, 1)?;
            pool.add_span(u64::from(spec.base), u64::from(spec.count))
                .map_err(Error::from_arena)?;
            pools.push(Pool {
                arena: pool,
                owners: BTreeMap::new(),
                rotor: spec.base,
            });
        }
        Ok(GuestLayout {
            machine,
            root,
            regions,
            allocs: BTreeMap::new(),
            by_owner: BTreeSet::new(),
            pools,
            ids_by_owner: BTreeSet::new(),
        })
    }

    /// The machine description the layout was built from.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Result<RegionId> {
        self.machine
            .regions
            .iter()
            .position(|r| r.name == name)
            .map(|i| RegionId(i as u16))
            .ok_or(Error::new(
                ErrorKind::NoSuchRegion,
                "no region has that name",
            ))
    }

    /// The ID pool named `name`.
    pub fn pool(&self, name: &str) -> Result<PoolId> {
        self.machine
            .pools
            .iter()
            .position(|p| p.name == name)
            .map(|i| PoolId(i as u16))
            .ok_or(Error::new(
                ErrorKind::NoSuchRegion,
                "no ID pool has that name",
            ))
    }

    fn region_arena(&self, region: RegionId) -> Result<&Arena<'static>> {
        self.regions
            .get(usize::from(region.0))
            .map(|r| &r.arena)
            .ok_or(Error::new(
                ErrorKind::NoSuchRegion,
                "no region has that number",
            ))
    }

    /// Allocates `request` in `region` for `owner`. `BadRequest` for bad
    /// parameters, `NoSpace` when no free range of the region meets it;
    /// either way nothing changes.
    pub fn allocate(
        &mut self,
        region: RegionId,
        request: &Request,
        owner: Owner,
    ) -> Result<Allocation> {
        let arena = self.region_arena(region)?;
        let rule = request.check(self.machine.quantum)?;
        let start = match request.placement {
            Placement::Fit | Placement::Instant => {
                let policy = if request.placement == Placement::Fit {
                    Policy::BestFit
                } else {
                    Policy::InstantFit
                };
                arena
                    .xalloc(rule.size, &constraints(&rule), policy)
                    .map_err(Error::from_arena)?
            }
            Placement::Lowest | Placement::Highest => {
                let top = request.placement == Placement::Highest;
                let start = extreme(arena, &rule, top).ok_or(Error::new(
                    ErrorKind::NoSpace,
                    "no free range of the region meets the request",
                ))?;
                arena
                    .xalloc(rule.size, &exact(start, rule.size)?, Policy::InstantFit)
                    .map_err(Error::from_arena)?
            }
        };
        Ok(self.record(region, start, &rule, owner))
    }

    /// Allocates exactly `[start, start + size)` in `region` for `owner`
    /// (a fixed device, a BAR the firmware placed). `InUse` when any of it
    /// is taken, `NoSpace` when it is not inside one range of the region.
    pub fn allocate_at(
        &mut self,
        region: RegionId,
        start: u64,
        size: u64,
        owner: Owner,
    ) -> Result<Allocation> {
        let arena = self.region_arena(region)?;
        let q = self.machine.quantum;
        if size == 0 || !(start | size).is_multiple_of(q) {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "start and size must be non-zero multiples of the quantum",
            )
            .at(start));
        }
        let rule = Request::new(size).check(q)?;
        if !arena.contains(start, size).map_err(Error::from_arena)? {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "the range is not inside one range of the region",
            )
            .at(start));
        }
        arena
            .xalloc(size, &exact(start, size)?, Policy::InstantFit)
            .map_err(|_| {
                Error::new(ErrorKind::InUse, "part of the range is allocated").at(start)
            })?;
        Ok(self.record(region, start, &rule, owner))
    }

    fn record(&mut self, region: RegionId, start: u64, rule: &Rule, owner: Owner) -> Allocation {
        let a = Allocation {
            start,
            size: rule.size,
            region,
            owner,
            align: rule.align,
            phase: rule.phase,
            boundary: rule.boundary,
            min: rule.min,
            max: rule.max,
        };
        self.allocs.insert(start, a);
        self.by_owner.insert((owner, start));
        a
    }

    fn forget(&mut self, start: u64) -> Option<Allocation> {
        let a = self.allocs.remove(&start)?;
        self.by_owner.remove(&(a.owner, start));
        Some(a)
    }

    fn release(&mut self, a: &Allocation) {
        // The segment is the allocation's own, so the free cannot be refused.
        let _ = self.regions[usize::from(a.region.0)]
            .arena
            .xfree(a.start, a.size);
        self.forget(a.start);
    }

    /// Frees the allocation that is exactly `[start, start + size)`;
    /// `NotAllocated` otherwise (a size that differs included).
    pub fn free(&mut self, start: u64, size: u64) -> Result<Allocation> {
        let a = *self
            .allocs
            .get(&start)
            .ok_or(Error::new(ErrorKind::NotAllocated, "no allocation starts there").at(start))?;
        if size.checked_next_multiple_of(self.machine.quantum) != Some(a.size) {
            return Err(Error::new(
                ErrorKind::NotAllocated,
                "the size differs from the allocation's",
            )
            .at(start));
        }
        self.release(&a);
        Ok(a)
    }

    /// Frees the allocation holding `addr` (crosvm's
    /// `release_containing`); `NotAllocated` when none does.
    pub fn free_containing(&mut self, addr: u64) -> Result<Allocation> {
        let a = *self.find(addr).ok_or(
            Error::new(ErrorKind::NotAllocated, "no allocation holds the address").at(addr),
        )?;
        self.release(&a);
        Ok(a)
    }

    /// Frees every allocation `owner` holds and every ID it holds,
    /// returning the allocations; `NotAllocated` when it holds nothing.
    pub fn free_owner(&mut self, owner: Owner) -> Result<Vec<Allocation>> {
        let starts: Vec<u64> = self.starts_of(owner).collect();
        let ids = self.release_ids(owner..=owner);
        if starts.is_empty() && ids == 0 {
            return Err(Error::new(
                ErrorKind::NotAllocated,
                "the owner holds nothing",
            ));
        }
        Ok(self.release_all(&starts))
    }

    /// Frees everything `device` holds (its BARs, other ranges and IDs), as
    /// on hot-unplug, returning the allocations; `NotAllocated` when it
    /// holds nothing.
    pub fn free_device(&mut self, device: DeviceId) -> Result<Vec<Allocation>> {
        let bars = (Owner::Bar { device, bar: 0 }, 0)
            ..=(
                Owner::Bar {
                    device,
                    bar: u8::MAX,
                },
                u64::MAX,
            );
        let starts: Vec<u64> = self
            .by_owner
            .range(bars)
            .map(|&(_, start)| start)
            .chain(self.starts_of(Owner::Device(device)))
            .collect();
        let ids = self.release_ids(
            Owner::Bar { device, bar: 0 }..=Owner::Bar {
                device,
                bar: u8::MAX,
            },
        ) + self.release_ids(Owner::Device(device)..=Owner::Device(device));
        if starts.is_empty() && ids == 0 {
            return Err(Error::new(
                ErrorKind::NotAllocated,
                "the device holds nothing",
            ));
        }
        Ok(self.release_all(&starts))
    }

    fn release_all(&mut self, starts: &[u64]) -> Vec<Allocation> {
        let mut freed = Vec::with_capacity(starts.len());
        for start in starts {
            if let Some(a) = self.allocs.get(start).copied() {
                self.release(&a);
                freed.push(a);
            }
        }
        freed
    }

    /// The allocation holding `addr`, if any.
    pub fn find(&self, addr: u64) -> Option<&Allocation> {
        self.allocs
            .range(..=addr)
            .next_back()
            .map(|(_, a)| a)
            .filter(|a| addr < a.end())
    }

    /// Every allocation in address order.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.values()
    }

    /// The allocations `owner` holds, in address order.
    pub fn owned_by(&self, owner: Owner) -> impl Iterator<Item = &Allocation> {
        self.starts_of(owner).filter_map(|s| self.allocs.get(&s))
    }

    /// The starts of `owner`'s allocations, in address order.
    fn starts_of(&self, owner: Owner) -> impl Iterator<Item = u64> + '_ {
        self.by_owner
            .range((owner, 0)..=(owner, u64::MAX))
            .map(|&(_, start)| start)
    }

    /// Moves the allocation starting at `start` to `to` (a guest
    /// reprogramming a BAR), keeping its size, owner and rules. The target
    /// may overlap the allocation's own range. `Constraint` when `to`
    /// breaks its alignment, phase, boundary or window, `InUse` or
    /// `NoSpace` when the target is taken or leaves the region; on any
    /// failure nothing changes.
    pub fn relocate(&mut self, start: u64, to: u64) -> Result<Allocation> {
        let a = *self
            .allocs
            .get(&start)
            .ok_or(Error::new(ErrorKind::NotAllocated, "no allocation starts there").at(start))?;
        if to == start {
            return Ok(a);
        }
        if !a.rule().admits(to) {
            return Err(Error::new(
                ErrorKind::Constraint,
                "the target breaks the allocation's constraints",
            )
            .at(to));
        }
        let arena = &self.regions[usize::from(a.region.0)].arena;
        if !arena.contains(to, a.size).map_err(Error::from_arena)? {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "the target is not inside one range of the region",
            )
            .at(to));
        }
        let target = exact(to, a.size)?;
        let overlaps = to < a.end() && start < to + a.size;
        if overlaps {
            // Give the old range back first so the target may reuse it; if
            // the target is refused, the old range (free and coalesced, and
            // no one else can have taken it under `&mut self`) comes back:
            // the refused call reserved the tags that takes and used none.
            let _ = arena.xfree(start, a.size);
            if arena.xalloc(a.size, &target, Policy::InstantFit).is_err() {
                arena
                    .xalloc(a.size, &exact(start, a.size)?, Policy::InstantFit)
                    .map_err(Error::from_arena)?;
                return Err(Error::new(ErrorKind::InUse, "the target is taken").at(to));
            }
        } else {
            arena
                .xalloc(a.size, &target, Policy::InstantFit)
                .map_err(|_| Error::new(ErrorKind::InUse, "the target is taken").at(to))?;
            // The old segment is the allocation's own: the free cannot fail.
            let _ = arena.xfree(start, a.size);
        }
        self.forget(start);
        let moved = Allocation { start: to, ..a };
        self.allocs.insert(to, moved);
        self.by_owner.insert((a.owner, to));
        Ok(moved)
    }

    /// Takes an ID from `pool` for `owner`, by `pick`. `NoSpace` when the
    /// pool is full, `InUse` when an exact ID is taken, `BadRequest` when
    /// it is outside the pool.
    pub fn allocate_id(&mut self, pool: PoolId, pick: IdPick, owner: Owner) -> Result<u32> {
        let spec = self
            .machine
            .pools
            .get(usize::from(pool.0))
            .ok_or(Error::new(
                ErrorKind::NoSuchRegion,
                "no ID pool has that number",
            ))?;
        let (base, end) = (
            u64::from(spec.base),
            u64::from(spec.base) + u64::from(spec.count),
        );
        let p = &mut self.pools[usize::from(pool.0)];
        let id = match pick {
            IdPick::Exactly(id) => {
                if !(base..end).contains(&u64::from(id)) {
                    return Err(
                        Error::new(ErrorKind::BadRequest, "the ID is outside the pool")
                            .at(id.into()),
                    );
                }
                if p.owners.contains_key(&id) {
                    return Err(Error::new(ErrorKind::InUse, "the ID is taken").at(id.into()));
                }
                u64::from(id)
            }
            IdPick::Lowest => first_free(&p.arena, base).ok_or(Error::new(
                ErrorKind::NoSpace,
                "every ID of the pool is taken",
            ))?,
            IdPick::Next => first_free(&p.arena, u64::from(p.rotor))
                .or_else(|| first_free(&p.arena, base))
                .ok_or(Error::new(
                    ErrorKind::NoSpace,
                    "every ID of the pool is taken",
                ))?,
        };
        p.arena
            .xalloc(1, &exact(id, 1)?, Policy::InstantFit)
            .map_err(Error::from_arena)?;
        // `id` is below `end`, which is at most 2^32.
        let id = id as u32;
        if pick == IdPick::Next {
            p.rotor = if u64::from(id) + 1 >= end {
                spec.base
            } else {
                id + 1
            };
        }
        p.owners.insert(id, owner);
        self.ids_by_owner.insert((owner, pool.0, id));
        Ok(id)
    }

    /// Gives back `id` to `pool`; `NotAllocated` if it is not taken.
    pub fn free_id(&mut self, pool: PoolId, id: u32) -> Result<Owner> {
        let p = self.pools.get_mut(usize::from(pool.0)).ok_or(Error::new(
            ErrorKind::NoSuchRegion,
            "no ID pool has that number",
        ))?;
        let owner = p
            .owners
            .remove(&id)
            .ok_or(Error::new(ErrorKind::NotAllocated, "the ID is not taken").at(id.into()))?;
        // Taken IDs are allocated in the arena one by one.
        let _ = p.arena.xfree(u64::from(id), 1);
        self.ids_by_owner.remove(&(owner, pool.0, id));
        Ok(owner)
    }

    /// Who holds `id` of `pool`, if anyone.
    pub fn id_owner(&self, pool: PoolId, id: u32) -> Option<Owner> {
        self.pools
            .get(usize::from(pool.0))?
            .owners
            .get(&id)
            .copied()
    }

    /// The IDs of `pool` that are taken, with their owners, in order.
    pub fn ids(&self, pool: PoolId) -> impl Iterator<Item = (u32, Owner)> + '_ {
        self.pools
            .get(usize::from(pool.0))
            .into_iter()
            .flat_map(|p| p.owners.iter().map(|(&id, &o)| (id, o)))
    }

    /// Frees the IDs of the owners in `owners` (a range of the index).
    fn release_ids(&mut self, owners: core::ops::RangeInclusive<Owner>) -> usize {
        let (low, high) = owners.into_inner();
        let taken: Vec<(Owner, u16, u32)> = self
            .ids_by_owner
            .range((low, 0, 0)..=(high, u16::MAX, u32::MAX))
            .copied()
            .collect();
        for &(owner, pool, id) in &taken {
            self.ids_by_owner.remove(&(owner, pool, id));
            let p = &mut self.pools[usize::from(pool)];
            p.owners.remove(&id);
            // Taken IDs are allocated in the arena one by one.
            let _ = p.arena.xfree(u64::from(id), 1);
        }
        taken.len()
    }

    /// The machine's map in address order: each region range, reserved
    /// range and unassigned gap of the root, as `(start, size, entry)`.
    pub fn map(&self) -> Vec<(u64, u64, MapEntry)> {
        let mut owners: BTreeMap<u64, MapEntry> = BTreeMap::new();
        for (i, spec) in self.machine.regions.iter().enumerate() {
            for &(start, _) in &spec.ranges {
                owners.insert(start, MapEntry::Region(RegionId(i as u16)));
            }
        }
        for (i, spec) in self.machine.reserved.iter().enumerate() {
            owners.insert(spec.start, MapEntry::Reserved(i as u16));
        }
        let mut map = Vec::new();
        self.root.walk(|s| match s.kind {
            SegmentKind::Alloc => map.push((
                s.start,
                s.size,
                owners
                    .get(&s.start)
                    .copied()
                    .unwrap_or(MapEntry::Unassigned),
            )),
            SegmentKind::Free => map.push((s.start, s.size, MapEntry::Unassigned)),
            SegmentKind::Span { .. } => {}
        });
        map
    }

    /// Every span marker and segment of the root, each region and each
    /// pool, in that order: what two layouts that walk identically share.
    pub fn walk(&self, mut visit: impl FnMut(vmem_core::Segment)) {
        self.root.walk(&mut visit);
        for r in &self.regions {
            r.arena.walk(&mut visit);
        }
        for p in &self.pools {
            p.arena.walk(&mut visit);
        }
    }

    /// Checks every arena's invariants and that the records agree with
    /// them: each allocation is a segment of its region meeting its rules,
    /// each taken ID a segment of its pool.
    pub fn check(&self) -> Result<()> {
        let corrupt = |what| Err(Error::new(ErrorKind::Arena, what));
        self.root.check().map_err(Error::from_arena)?;
        let mut allocated = 0u64;
        for r in &self.regions {
            r.arena.check().map_err(Error::from_arena)?;
            allocated += r.arena.size().alloc;
        }
        if allocated != self.allocs.values().map(|a| a.size).sum::<u64>()
            || self.by_owner.len() != self.allocs.len()
        {
            return corrupt("the regions' allocated bytes differ from the records");
        }
        for a in self.allocs.values() {
            if !a.rule().admits(a.start) || !self.by_owner.contains(&(a.owner, a.start)) {
                return corrupt(
                    "an allocation breaks its rules or is missing from its owner's index",
                );
            }
        }
        for p in &self.pools {
            p.arena.check().map_err(Error::from_arena)?;
            if p.arena.size().alloc != p.owners.len() as u64 {
                return corrupt("a pool's taken IDs differ from the records");
            }
        }
        let taken: usize = self.pools.iter().map(|p| p.owners.len()).sum();
        if taken != self.ids_by_owner.len()
            || self.ids_by_owner.iter().any(|&(owner, pool, id)| {
                self.pools[usize::from(pool)].owners.get(&id) != Some(&owner)
            })
        {
            return corrupt("the owners' index of IDs differs from the pools");
        }
        Ok(())
    }

    /// The label of region `region`.
    pub fn region_name(&self, region: RegionId) -> Option<&str> {
        self.machine
            .regions
            .get(usize::from(region.0))
            .map(|r| r.name.as_str())
    }

    /// Bytes allocated in `region`, and bytes it has in all.
    pub fn usage(&self, region: RegionId) -> Result<(u64, u64)> {
        let s = self.region_arena(region)?.size();
        Ok((s.alloc, s.total))
    }

    /// A label for a reserved range (for maps and reports).
    pub fn reserved_name(&self, index: u16) -> Option<Label> {
        self.machine
            .reserved
            .get(usize::from(index))
            .and_then(|r| Label::new(&r.name).ok())
    }
}

impl core::fmt::Debug for GuestLayout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GuestLayout")
            .field("phys_bits", &self.machine.phys_bits)
            .field("regions", &self.regions.len())
            .field("allocations", &self.allocs.len())
            .field("pools", &self.pools.len())
            .finish()
    }
}

/// Constraints placing `size` exactly at `start`.
pub(crate) fn exact(start: u64, size: u64) -> Result<Constraints> {
    Constraints::exact(start, size).map_err(Error::from_arena)
}

fn constraints(rule: &Rule) -> Constraints {
    Constraints {
        align: rule.align,
        phase: rule.phase,
        nocross: rule.boundary,
        min: rule.min,
        max: if rule.max == u64::MAX { 0 } else { rule.max },
    }
}

/// The lowest or highest placement of `rule` in `arena`'s free segments.
fn extreme(arena: &Arena<'static>, rule: &Rule, top: bool) -> Option<u64> {
    let mut found = None;
    arena.walk(|s| {
        if s.kind != SegmentKind::Free || (!top && found.is_some()) {
            return;
        }
        let end = s.start + s.size;
        let r = if top {
            rule.highest_in(s.start, end)
        } else {
            rule.lowest_in(s.start, end)
        };
        if r.is_some() {
            found = r;
        }
    });
    found
}

/// The first free integer of `arena` at or above `from`.
fn first_free(arena: &Arena<'static>, from: u64) -> Option<u64> {
    let mut found = None;
    arena.walk(|s| {
        if found.is_none() && s.kind == SegmentKind::Free && s.start + s.size > from {
            found = Some(s.start.max(from));
        }
    });
    found
}
