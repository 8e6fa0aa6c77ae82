//! Drop-in adapters for rust-vmm's `vm-allocator` 0.1: [`AddressAllocator`]
//! and [`IdAllocator`] with the same method signatures, error variants and
//! results, on vmem arenas. A VMM written against `vm_allocator` switches
//! by changing its `use` lines to `vmem_vmm::compat`.
//!
//! Where the two differ: an [`AddressAllocator`] cannot manage a range that
//! ends at `u64::MAX` (an arena's span must end below 2^64: `new` is
//! `Overflow`); an `ExactMatch` or `free` of a range that is not free or
//! not allocated is always refused (`vm-allocator` 0.1.4 does not check
//! the state of the node it finds); and an [`IdAllocator`] whose range ends
//! at `u32::MAX` answers `ResourceNotAvailable`, not `Overflow`, once every
//! ID is out.

use core::fmt;

use vmem_core::{Arena, ArenaConfig, HeapMeta, Policy, SegmentKind};

use crate::layout::exact;

/// The errors of `vm-allocator` 0.1, variant for variant.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Error {
    /// An operation overflowed.
    Overflow,
    /// The ID is not in the managed range.
    OutOfRange(u32),
    /// The ID was already released.
    AlreadyReleased(u32),
    /// The ID was never handed out.
    NeverAllocated(u32),
    /// No free range or ID meets the request, or the range to free is not
    /// allocated.
    ResourceNotAvailable,
    /// The range to manage is invalid.
    InvalidRange(u64, u64),
    /// The alignment is zero or not a power of two.
    InvalidAlignment,
    /// Two ranges overlap.
    Overlap(RangeInclusive, RangeInclusive),
    /// The address is not aligned.
    UnalignedAddress,
    /// An operation underflowed.
    Underflow,
    /// The size is invalid.
    InvalidSize(u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for Error {}

/// `vm-allocator`'s result.
pub type Result<T> = core::result::Result<T, Error>;

/// A closed range `[start, end]`, as `vm-allocator` names ranges.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Hash, Ord, Debug)]
pub struct RangeInclusive {
    start: u64,
    end: u64,
}

#[allow(clippy::len_without_is_empty)]
impl RangeInclusive {
    /// `[start, end]`; `InvalidRange` if `start > end` or it is all of `u64`.
    pub fn new(start: u64, end: u64) -> Result<Self> {
        if start > end || (start == 0 && end == u64::MAX) {
            return Err(Error::InvalidRange(start, end));
        }
        Ok(RangeInclusive { start, end })
    }

    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Whether the ranges share an address.
    pub fn overlaps(&self, other: &RangeInclusive) -> bool {
        self.start.max(other.start) <= self.end.min(other.end)
    }

    /// Whether `other` lies inside this range.
    pub fn contains(&self, other: &RangeInclusive) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address.
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// Where [`AddressAllocator::allocate`] places a range.
#[derive(Copy, Clone, Debug, Eq, PartialEq, Default)]
pub enum AllocPolicy {
    /// The lowest aligned placement.
    #[default]
    FirstMatch,
    /// The highest aligned placement.
    LastMatch,
    /// At this address, which must be aligned.
    ExactMatch(u64),
}

/// An arena of quantum 1 over the heap's meta pages.
fn arena(name: &str, base: u64, size: u64) -> core::result::Result<Arena<'static>, Error> {
    let arena =
        Arena::create(ArenaConfig::new(name, 1).meta(&HeapMeta)).map_err(|_| Error::Overflow)?;
    arena.add_span(base, size).map_err(|_| Error::Overflow)?;
    Ok(arena)
}

/// `vm-allocator`'s address allocator on a vmem arena.
pub struct AddressAllocator {
    arena: Arena<'static>,
    base: u64,
    end: u64,
}

impl fmt::Debug for AddressAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressAllocator")
            .field("base", &self.base)
            .field("end", &self.end)
            .finish()
    }
}

impl AddressAllocator {
    /// Manages `[base, base + size)`: `Underflow` for size zero,
    /// `Overflow` when the range passes 2^64 or reaches its last address.
    pub fn new(base: u64, size: u64) -> core::result::Result<Self, Error> {
        let last = size.checked_sub(1).ok_or(Error::Underflow)?;
        let end = base.checked_add(last).ok_or(Error::Overflow)?;
        RangeInclusive::new(base, end)?;
        Ok(AddressAllocator {
            arena: arena("address", base, size)?,
            base,
            end,
        })
    }

    /// Allocates `size` bytes aligned to `alignment` by `policy`.
    /// `InvalidSize(0)`, `InvalidAlignment` (zero or not a power of two),
    /// `UnalignedAddress` (an `ExactMatch` off the alignment),
    /// `ResourceNotAvailable` (no free range holds it).
    pub fn allocate(
        &mut self,
        size: u64,
        alignment: u64,
        policy: AllocPolicy,
    ) -> Result<RangeInclusive> {
        if size == 0 {
            return Err(Error::InvalidSize(size));
        }
        if !alignment.is_power_of_two() {
            return Err(Error::InvalidAlignment);
        }
        let start = match policy {
            AllocPolicy::ExactMatch(start) => {
                if start % alignment != 0 {
                    return Err(Error::UnalignedAddress);
                }
                start.checked_add(size - 1).ok_or(Error::Overflow)?;
                start
            }
            AllocPolicy::FirstMatch | AllocPolicy::LastMatch => {
                let last = policy == AllocPolicy::LastMatch;
                let mut found = None;
                self.arena.walk(|s| {
                    if s.kind != SegmentKind::Free || s.size < size || (!last && found.is_some()) {
                        return;
                    }
                    let end = s.start + s.size;
                    let placed = if last {
                        Some((end - size) & !(alignment - 1)).filter(|&r| r >= s.start)
                    } else {
                        s.start
                            .checked_next_multiple_of(alignment)
                            .filter(|&r| r.checked_add(size).is_some_and(|e| e <= end))
                    };
                    if placed.is_some() {
                        found = placed;
                    }
                });
                found.ok_or(Error::ResourceNotAvailable)?
            }
        };
        let c = exact(start, size).map_err(|_| Error::Overflow)?;
        self.arena
            .xalloc(size, &c, Policy::InstantFit)
            .map_err(|_| Error::ResourceNotAvailable)?;
        RangeInclusive::new(start, start + (size - 1))
    }

    /// Frees the range [`AddressAllocator::allocate`] returned;
    /// `ResourceNotAvailable` for any other range.
    pub fn free(&mut self, key: &RangeInclusive) -> Result<()> {
        self.arena
            .xfree(key.start(), key.len())
            .map_err(|_| Error::ResourceNotAvailable)
    }

    /// First address managed.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Last address managed.
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// `vm-allocator`'s ID allocator on a vmem arena: the lowest free ID first.
pub struct IdAllocator {
    arena: Arena<'static>,
    range_base: u32,
    range_end: u32,
    /// One past the highest ID ever handed out: IDs at or above it were
    /// never allocated.
    high_water: u64,
}

impl fmt::Debug for IdAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdAllocator")
            .field("range_base", &self.range_base)
            .field("range_end", &self.range_end)
            .finish()
    }
}

impl IdAllocator {
    /// Manages the IDs `range_base..=range_end`; `InvalidRange` if the end
    /// is below the base.
    pub fn new(range_base: u32, range_end: u32) -> Result<Self> {
        if range_end < range_base {
            return Err(Error::InvalidRange(range_base.into(), range_end.into()));
        }
        let count = u64::from(range_end) - u64::from(range_base) + 1;
        Ok(IdAllocator {
            arena: arena("ids", range_base.into(), count)?,
            range_base,
            range_end,
            high_water: range_base.into(),
        })
    }

    /// The lowest free ID; `ResourceNotAvailable` when none is.
    pub fn allocate_id(&mut self) -> Result<u32> {
        let mut found = None;
        self.arena.walk(|s| {
            if found.is_none() && s.kind == SegmentKind::Free {
                found = Some(s.start);
            }
        });
        let id = found.ok_or(Error::ResourceNotAvailable)?;
        let c = exact(id, 1).map_err(|_| Error::Overflow)?;
        self.arena
            .xalloc(1, &c, Policy::InstantFit)
            .map_err(|_| Error::ResourceNotAvailable)?;
        self.high_water = self.high_water.max(id + 1);
        // IDs lie in `range_base..=range_end`.
        Ok(id as u32)
    }

    /// Whether `id` is handed out and not freed since.
    pub fn is_allocated(&self, id: u32) -> bool {
        let id = u64::from(id);
        let mut allocated = false;
        if (u64::from(self.range_base)..=u64::from(self.range_end)).contains(&id)
            && id < self.high_water
        {
            self.arena.walk(|s| {
                if s.kind == SegmentKind::Alloc && s.start <= id && id < s.start + s.size {
                    allocated = true;
                }
            });
        }
        allocated
    }

    /// Frees `id`: `OutOfRange` outside the range, `NeverAllocated` if it
    /// was never handed out, `AlreadyReleased` if it is free.
    pub fn free_id(&mut self, id: u32) -> Result<u32> {
        if id < self.range_base || id > self.range_end {
            return Err(Error::OutOfRange(id));
        }
        if u64::from(id) >= self.high_water {
            return Err(Error::NeverAllocated(id));
        }
        self.arena
            .xfree(id.into(), 1)
            .map(|()| id)
            .map_err(|_| Error::AlreadyReleased(id))
    }
}
