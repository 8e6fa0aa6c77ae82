//! What an allocation must meet: size, alignment, phase, a boundary not to
//! cross, an address window, and where in the free space to place it.

use crate::error::{Error, ErrorKind, Result};
use crate::machine::FOUR_GIB;

/// Where among the placements that meet a request the layout puts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The smallest free range that holds it, the lowest such range among
    /// equals (vmem's best fit). It depends only on what is free, so a
    /// restored layout places exactly as the original.
    #[default]
    Fit,
    /// vmem's instant fit: O(1) for requests constrained by alignment and
    /// phase alone, taking the head of the first freelist whose every
    /// member holds it. The freelists' order is not saved, so a restored
    /// layout may place these differently from the original.
    Instant,
    /// The lowest address (bottom-up first fit), found by walking the
    /// region: O(segments).
    Lowest,
    /// The highest address (top-down), found by walking the region:
    /// O(segments).
    Highest,
}

/// A request for guest-physical space. Zero `align` means the quantum,
/// zero `boundary` no boundary, zero `max` no upper limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// Bytes, rounded up to the quantum.
    pub size: u64,
    /// A power of two: the start is `phase` modulo `align`.
    pub align: u64,
    /// Offset from the alignment, below `align`.
    pub phase: u64,
    /// A power of two the range must not cross (DMA engines' 4 GiB).
    pub boundary: u64,
    /// The lowest acceptable start.
    pub min: u64,
    /// Exclusive end the range must stay below.
    pub max: u64,
    /// Where to place it.
    pub placement: Placement,
}

impl Request {
    /// `size` bytes anywhere in the region.
    pub const fn new(size: u64) -> Self {
        Request {
            size,
            align: 0,
            phase: 0,
            boundary: 0,
            min: 0,
            max: 0,
            placement: Placement::Fit,
        }
    }

    /// A PCI BAR of `size` bytes (a power of two): aligned to its size.
    pub const fn bar(size: u64) -> Self {
        Request::new(size).align(size)
    }

    /// Aligned to `align`.
    pub const fn align(mut self, align: u64) -> Self {
        self.align = align;
        self
    }

    /// At `phase` past the alignment.
    pub const fn phase(mut self, phase: u64) -> Self {
        self.phase = phase;
        self
    }

    /// Not crossing a multiple of `boundary`.
    pub const fn boundary(mut self, boundary: u64) -> Self {
        self.boundary = boundary;
        self
    }

    /// Inside `[min, max)`.
    pub const fn window(mut self, min: u64, max: u64) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Below 4 GiB (keeping any lower `max` already set).
    pub const fn below_4g(mut self) -> Self {
        if self.max == 0 || self.max > FOUR_GIB {
            self.max = FOUR_GIB;
        }
        self
    }

    /// Placed at the highest address that meets it.
    pub const fn top_down(mut self) -> Self {
        self.placement = Placement::Highest;
        self
    }

    /// Placed at the lowest address that meets it.
    pub const fn bottom_up(mut self) -> Self {
        self.placement = Placement::Lowest;
        self
    }

    /// Placed by [`Placement`].
    pub const fn placed(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// The request checked and normalised for `quantum`.
    pub(crate) fn check(&self, quantum: u64) -> Result<Rule> {
        let bad = |what| Err(Error::new(ErrorKind::BadRequest, what));
        if self.size == 0 {
            return bad("size is zero");
        }
        let Some(size) = self.size.checked_next_multiple_of(quantum) else {
            return bad("size rounded up to the quantum passes 2^64");
        };
        let align = if self.align == 0 { quantum } else { self.align };
        if !align.is_power_of_two() || align < quantum {
            return bad("align is not a power of two at least the quantum");
        }
        if self.phase >= align || !self.phase.is_multiple_of(quantum) {
            return bad("phase is not a multiple of the quantum below align");
        }
        if self.boundary != 0
            && (!self.boundary.is_power_of_two()
                || self.boundary < align
                || size > self.boundary - self.phase)
        {
            return bad("boundary is not a power of two that holds the aligned range");
        }
        let max = if self.max == 0 { u64::MAX } else { self.max };
        if self.min >= max {
            return bad("min is not below max");
        }
        Ok(Rule {
            size,
            align,
            phase: self.phase,
            boundary: self.boundary,
            min: self.min,
            max,
        })
    }
}

/// A checked request: the rules a placement must meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) size: u64,
    pub(crate) align: u64,
    pub(crate) phase: u64,
    pub(crate) boundary: u64,
    pub(crate) min: u64,
    /// Exclusive; `u64::MAX` for none.
    pub(crate) max: u64,
}

impl Rule {
    /// Whether `[start, start + size)` meets every rule.
    pub(crate) fn admits(&self, start: u64) -> bool {
        let Some(end) = start.checked_add(self.size) else {
            return false;
        };
        start % self.align == self.phase
            && start >= self.min
            && end <= self.max
            && (self.boundary == 0 || start / self.boundary == (end - 1) / self.boundary)
    }

    /// The lowest placement in the free range `[lo, hi)`.
    pub(crate) fn lowest_in(&self, lo: u64, hi: u64) -> Option<u64> {
        let (lo, hi) = (lo.max(self.min), hi.min(self.max));
        let mut r = self.up(lo)?;
        if r.checked_add(self.size)? > hi {
            return None;
        }
        if self.boundary != 0 && !self.admits_boundary(r) {
            // The next block starts on the alignment, so its phase fits.
            r = self.up((r / self.boundary + 1).checked_mul(self.boundary)?)?;
        }
        (r.checked_add(self.size)? <= hi && r >= lo).then_some(r)
    }

    /// The highest placement in the free range `[lo, hi)`.
    pub(crate) fn highest_in(&self, lo: u64, hi: u64) -> Option<u64> {
        let (lo, hi) = (lo.max(self.min), hi.min(self.max));
        let mut r = self.down(hi.checked_sub(self.size)?)?;
        if self.boundary != 0 && !self.admits_boundary(r) {
            // End at the block the range would cross into.
            let block = (r + self.size - 1) / self.boundary * self.boundary;
            r = self.down(block.checked_sub(self.size)?)?;
        }
        (r >= lo).then_some(r)
    }

    /// Whether `[r, r + size)` stays in one boundary block (`r + size`
    /// fits in a `u64`: the callers checked).
    fn admits_boundary(&self, r: u64) -> bool {
        r / self.boundary == (r + self.size - 1) / self.boundary
    }

    /// The lowest `r >= v` with `r % align == phase`.
    fn up(&self, v: u64) -> Option<u64> {
        if v <= self.phase {
            return Some(self.phase);
        }
        (v - self.phase)
            .checked_next_multiple_of(self.align)?
            .checked_add(self.phase)
    }

    /// The highest `r <= v` with `r % align == phase`.
    fn down(&self, v: u64) -> Option<u64> {
        let r = v.checked_sub(self.phase)? / self.align * self.align;
        Some(r + self.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_placements_meet_every_rule() {
        let q = 0x1000;
        let rule = Request::new(0x3000)
            .align(0x4000)
            .phase(0x1000)
            .boundary(0x8000)
            .check(q)
            .unwrap();
        for lo in (0..0x20000).step_by(0x1000) {
            for hi in (lo..0x20000).step_by(0x3000) {
                let all: Vec<u64> = (lo..hi)
                    .step_by(0x1000)
                    .filter(|&r| r + 0x3000 <= hi && rule.admits(r))
                    .collect();
                assert_eq!(
                    rule.lowest_in(lo, hi),
                    all.first().copied(),
                    "{lo:#x} {hi:#x}"
                );
                assert_eq!(
                    rule.highest_in(lo, hi),
                    all.last().copied(),
                    "{lo:#x} {hi:#x}"
                );
            }
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let q = 0x1000;
        for r in [
            Request::new(0),
            Request::new(q).align(0x3000),
            Request::new(q).align(0x800),
            Request::new(q).align(0x2000).phase(0x2000),
            Request::new(0x3000).boundary(0x2000),
            Request::new(q).window(5 << 12, 5 << 12),
            Request::new(u64::MAX),
        ] {
            assert_eq!(
                r.check(q).unwrap_err().kind(),
                ErrorKind::BadRequest,
                "{r:?}"
            );
        }
    }
}
