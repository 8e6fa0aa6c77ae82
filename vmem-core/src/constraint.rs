//! Constraints on where an allocation may go (`xalloc`), their validation,
//! and the placement rule every policy shares.

use crate::error::{Error, ErrorKind, Result};

/// Where an `xalloc` result may lie.
///
/// The result `r` of a request of `size` satisfies `r % align == phase`;
/// `[r, r + size)` lies within one `nocross`-aligned block when `nocross` is
/// not zero; `r >= min`; and `r + size <= max` when `max` is not zero (`max`
/// is an exclusive end). `align` zero means the arena's quantum. `align`,
/// `phase` and `nocross` are multiples of the quantum; `min` and `max` may be
/// any values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    /// Alignment, a power of two (zero: the quantum).
    pub align: u64,
    /// Offset from the alignment, below `align`.
    pub phase: u64,
    /// A power-of-two boundary the allocation must not cross (zero: none).
    pub nocross: u64,
    /// Lowest acceptable start.
    pub min: u64,
    /// Exclusive end the allocation must stay below (zero: no limit).
    pub max: u64,
}

impl Constraints {
    /// No constraint beyond the quantum.
    pub const NONE: Constraints = Constraints {
        align: 0,
        phase: 0,
        nocross: 0,
        min: 0,
        max: 0,
    };

    /// Aligned to `align`.
    pub const fn aligned(align: u64) -> Self {
        Constraints {
            align,
            ..Constraints::NONE
        }
    }

    /// Exactly at `addr` for an allocation of `size`: `min`/`max` around the
    /// one address (an `Overflow` error if `addr + size` does not fit).
    pub fn exact(addr: u64, size: u64) -> Result<Self> {
        let max = addr.checked_add(size).ok_or(Error::new(
            ErrorKind::Overflow,
            "address plus size passes 2^64",
        ))?;
        Ok(Constraints {
            min: addr,
            max,
            ..Constraints::NONE
        })
    }
}

/// Validated constraints for one request, with its size rounded up to the
/// quantum.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fit {
    pub(crate) size: u64,
    align: u64,
    phase: u64,
    nocross: u64,
    min: u64,
    /// Exclusive end; `u64::MAX` when there is no limit (no segment ends
    /// past it, since spans never wrap).
    max: u64,
    /// Whether nothing but the size matters (the instant-fit fast path).
    pub(crate) plain: bool,
    /// A size such that every free segment at least this large surely holds
    /// a placement (`size + align - quantum` when only align and phase
    /// constrain the request), or 0 when only a search can tell.
    pub(crate) sure: u64,
}

/// `value` rounded up to a multiple of `quantum` (a power of two), or an
/// `Overflow` error.
pub(crate) fn round_up(value: u64, quantum: u64) -> Result<u64> {
    value
        .checked_add(quantum - 1)
        .map(|v| v & !(quantum - 1))
        .ok_or(Error::new(
            ErrorKind::Overflow,
            "size rounded up to the quantum passes 2^64",
        ))
}

impl Fit {
    /// A request of `size` with no constraint beyond the quantum.
    #[inline]
    pub(crate) fn plain(size: u64, quantum: u64) -> Result<Fit> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "allocation of size zero"));
        }
        Ok(Fit {
            size: round_up(size, quantum)?,
            align: quantum,
            phase: 0,
            nocross: 0,
            min: 0,
            max: u64::MAX,
            plain: true,
            sure: round_up(size, quantum)?,
        })
    }

    /// Checks a request of `size` under `c` in an arena of `quantum`.
    pub(crate) fn new(size: u64, c: &Constraints, quantum: u64) -> Result<Fit> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "allocation of size zero"));
        }
        if *c == Constraints::NONE {
            return Fit::plain(size, quantum);
        }
        let size = round_up(size, quantum)?;
        let align = if c.align == 0 { quantum } else { c.align };
        let off_quantum = |v: u64| v & (quantum - 1) != 0;
        if off_quantum(align) || off_quantum(c.phase) || off_quantum(c.nocross) {
            return Err(Error::new(
                ErrorKind::Misaligned,
                "align, phase and nocross must be multiples of the quantum",
            ));
        }
        if !align.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "align is not a power of two",
            ));
        }
        if c.nocross != 0 && !c.nocross.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "nocross is not a power of two",
            ));
        }
        if c.phase >= align {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "phase is not below align",
            ));
        }
        if c.max != 0 && c.min >= c.max {
            return Err(Error::new(ErrorKind::BadConstraint, "min is not below max"));
        }
        // `phase < align <= nocross` once the first test passes, so the
        // second cannot wrap (`phase + size` could).
        if c.nocross != 0 && (align > c.nocross || size > c.nocross - c.phase) {
            return Err(Error::new(
                ErrorKind::Overconstrained,
                "no placement fits inside one nocross block",
            ));
        }
        let fit = Fit {
            size,
            align,
            phase: c.phase,
            nocross: c.nocross,
            min: c.min,
            max: if c.max == 0 { u64::MAX } else { c.max },
            plain: align == quantum && c.phase == 0 && c.nocross == 0 && c.min == 0 && c.max == 0,
            // The phase is below align and both are multiples of the quantum,
            // so a placement lies within `align - quantum` of any start.
            sure: if c.nocross == 0 && c.min == 0 && c.max == 0 {
                size.checked_add(align - quantum).unwrap_or(0)
            } else {
                0
            },
        };
        if fit.place(fit.min, fit.max).is_none() {
            return Err(Error::new(
                ErrorKind::Overconstrained,
                "no placement between min and max meets the constraints",
            ));
        }
        Ok(fit)
    }

    /// Whether an importing arena may import for this request: only
    /// alignment and phase constrain it. A `nocross` boundary or a
    /// `[min, max)` window is about the child's address space, which a
    /// source cannot promise to meet, so such requests never import.
    pub(crate) fn may_import(&self) -> bool {
        self.nocross == 0 && self.min == 0 && self.max == u64::MAX
    }

    /// The span an import asks the source for, and the alignment it asks
    /// for, so that the span surely holds a placement: `size + phase`
    /// aligned to `align` (the placement is the span's start plus the
    /// phase), or just `size` when the alignment is the quantum's.
    pub(crate) fn import_request(&self, quantum: u64) -> Result<(u64, u64)> {
        if self.align <= quantum {
            return Ok((self.size, quantum));
        }
        let size = self
            .size
            .checked_add(self.phase)
            .ok_or(Error::new(ErrorKind::Overflow, "import size passes 2^64"))?;
        Ok((size, self.align))
    }

    /// The lowest placement inside the free range `[start, end)`, if any.
    #[inline]
    pub(crate) fn place_in(&self, start: u64, end: u64) -> Option<u64> {
        if self.plain {
            return (end - start >= self.size).then_some(start);
        }
        self.place(start.max(self.min), end.min(self.max))
    }

    /// The lowest placement inside the free range `[start, end)` at or above
    /// `floor` (the next-fit rotor).
    pub(crate) fn place_from(&self, start: u64, end: u64, floor: u64) -> Option<u64> {
        self.place(start.max(self.min).max(floor), end.min(self.max))
    }

    /// The lowest `r >= lo` meeting align, phase and nocross with
    /// `r + size <= hi`.
    fn place(&self, lo: u64, hi: u64) -> Option<u64> {
        let mask = self.align - 1;
        let mut r = if lo <= self.phase {
            self.phase
        } else {
            ((lo - self.phase).checked_add(mask)? & !mask).checked_add(self.phase)?
        };
        if self.nocross != 0 {
            let block = r & !(self.nocross - 1);
            if self.size > self.nocross - (r - block) {
                // The next block starts aligned (align divides nocross), so the
                // phase puts r there, and phase + size <= nocross was checked.
                r = block.checked_add(self.nocross)?.checked_add(self.phase)?;
            }
        }
        let end = r.checked_add(self.size)?;
        (end <= hi).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(size: u64, c: Constraints) -> Result<Fit> {
        Fit::new(size, &c, 0x1000)
    }

    fn kind(r: Result<Fit>) -> ErrorKind {
        r.map(|_| ()).unwrap_err().kind()
    }

    #[test]
    fn rejects_bad_parameters_with_the_spec_kinds() {
        assert_eq!(kind(fit(0, Constraints::NONE)), ErrorKind::ZeroSize);
        assert_eq!(kind(fit(u64::MAX, Constraints::NONE)), ErrorKind::Overflow);
        assert_eq!(
            kind(fit(1, Constraints::aligned(0x800))),
            ErrorKind::Misaligned
        );
        assert_eq!(
            kind(fit(1, Constraints::aligned(0x3000))),
            ErrorKind::BadConstraint
        );
        let phase = Constraints {
            align: 0x2000,
            phase: 0x2000,
            ..Constraints::NONE
        };
        assert_eq!(kind(fit(1, phase)), ErrorKind::BadConstraint);
        let window = Constraints {
            min: 0x5000,
            max: 0x5000,
            ..Constraints::NONE
        };
        assert_eq!(kind(fit(1, window)), ErrorKind::BadConstraint);
        let cross = Constraints {
            align: 0x4000,
            nocross: 0x2000,
            ..Constraints::NONE
        };
        assert_eq!(kind(fit(1, cross)), ErrorKind::Overconstrained);
        let big = Constraints {
            nocross: 0x2000,
            ..Constraints::NONE
        };
        assert_eq!(kind(fit(0x3000, big)), ErrorKind::Overconstrained);
        let narrow = Constraints {
            min: 0x1000,
            max: 0x2000,
            ..Constraints::NONE
        };
        assert_eq!(kind(fit(0x2000, narrow)), ErrorKind::Overconstrained);
    }

    #[test]
    fn places_at_the_lowest_address_meeting_everything() {
        let f = fit(
            0x1000,
            Constraints {
                align: 0x4000,
                phase: 0x1000,
                ..Constraints::NONE
            },
        )
        .unwrap();
        assert_eq!(f.place_in(0x2000, 0x10000), Some(0x5000));
        assert_eq!(f.place_in(0x0, 0x10000), Some(0x1000));
        assert_eq!(f.place_in(0x2000, 0x5fff), None);
        let f = fit(
            0x2000,
            Constraints {
                nocross: 0x4000,
                ..Constraints::NONE
            },
        )
        .unwrap();
        assert_eq!(f.place_in(0x3000, 0x10000), Some(0x4000));
        assert_eq!(f.place_in(0x2000, 0x10000), Some(0x2000));
        let f = fit(0x1000, Constraints::exact(0x7000, 0x1000).unwrap()).unwrap();
        assert_eq!(f.place_in(0x0, 0x10000), Some(0x7000));
        assert_eq!(f.place_in(0x8000, 0x10000), None);
        let f = fit(0x1000, Constraints::NONE).unwrap();
        assert_eq!(f.place_in(0x3000, 0x4000), Some(0x3000));
        assert_eq!(f.place_from(0x3000, 0x8000, 0x5000), Some(0x5000));
    }

    #[test]
    fn placement_near_the_top_of_the_space_does_not_wrap() {
        let top = 0xffff_ffff_ffff_f000;
        let f = fit(0x10000, Constraints::aligned(0x10000)).unwrap();
        assert_eq!(f.place_in(top - 0x1e000, top), None);
        let f = fit(0x2000, Constraints::aligned(0x10000)).unwrap();
        assert_eq!(f.place_in(top - 0x1e000, top), Some(0xffff_ffff_ffff_0000));
        let f = fit(
            0x2000,
            Constraints {
                nocross: 0x4000,
                ..Constraints::NONE
            },
        )
        .unwrap();
        assert_eq!(f.place_in(top - 0x4000, top), Some(0xffff_ffff_ffff_c000));
        assert_eq!(f.place_in(top - 0x3000, top), Some(0xffff_ffff_ffff_c000));
        assert_eq!(f.place_in(top - 0x1000, top), None);
    }
}
