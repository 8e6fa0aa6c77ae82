//! The reference model of placement: where a constrained allocation may go
//! in a free range, derived from the constraints' definition alone, so the
//! model tests and the fuzz targets can tell an arena's `NoSpace` from a
//! missed placement.

use vmem_core::Constraints;

/// The lowest `r` in `[lo, hi)` with `r % align == phase` whose
/// `[r, r + size)` ends by `hi` and stays inside one `nocross` block
/// (`nocross == 0`: no blocks).
///
/// Derived from the definition: within a block the candidates are
/// `block + phase + k * align`, so if the first candidate at or above `lo`
/// crosses, the first one of the next block is the answer (it fits, as
/// `phase + size <= nocross`). Computed in `u128`, so no argument
/// overflows; `align` must not be zero.
pub fn lowest_placement(
    lo: u64,
    hi: u64,
    size: u64,
    align: u64,
    phase: u64,
    nocross: u64,
) -> Option<u64> {
    let (lo, hi, size, align, phase, nocross) = (
        u128::from(lo),
        u128::from(hi),
        u128::from(size),
        u128::from(align),
        u128::from(phase),
        u128::from(nocross),
    );
    if phase >= align || (nocross != 0 && (align > nocross || phase + size > nocross)) {
        return None;
    }
    let mut r = lo + (phase + align - lo % align) % align;
    if nocross != 0 && r % nocross + size > nocross {
        r = (r / nocross + 1) * nocross + phase;
    }
    (r + size <= hi).then_some(r as u64)
}

/// A request as the model sees it: the size already rounded to the
/// quantum, the constraints resolved (no zero meaning "none").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Size, a multiple of the arena's quantum.
    pub size: u64,
    /// Alignment (the quantum when the constraints set none).
    pub align: u64,
    /// Offset from the alignment.
    pub phase: u64,
    /// Boundary the allocation may not cross (0: none).
    pub nocross: u64,
    /// Lowest start.
    pub min: u64,
    /// Exclusive end; `u64::MAX` for none (no segment ends past it).
    pub max: u64,
}

impl Request {
    /// `size` (already rounded) under `c` in an arena of `quantum`.
    pub fn new(size: u64, c: &Constraints, quantum: u64) -> Self {
        Request {
            size,
            align: if c.align == 0 { quantum } else { c.align },
            phase: c.phase,
            nocross: c.nocross,
            min: c.min,
            max: if c.max == 0 { u64::MAX } else { c.max },
        }
    }

    /// Whether an allocation at `r` meets every constraint.
    pub fn meets(&self, r: u64) -> bool {
        let end = u128::from(r) + u128::from(self.size);
        let crosses = self.nocross != 0
            && u128::from(r) / u128::from(self.nocross) != (end - 1) / u128::from(self.nocross);
        r % self.align == self.phase && !crosses && r >= self.min && end <= u128::from(self.max)
    }

    /// The lowest placement in the free range `[s, e)`.
    pub fn place_in(&self, s: u64, e: u64) -> Option<u64> {
        lowest_placement(
            s.max(self.min),
            e.min(self.max),
            self.size,
            self.align,
            self.phase,
            self.nocross,
        )
    }

    /// Whether any of the free ranges `[s, e)` holds a placement.
    pub fn fits_somewhere(&self, free: &[(u64, u64)]) -> bool {
        free.iter().any(|&(s, e)| self.place_in(s, e).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form against a search of every aligned start, over small
    /// ranges and every well-formed constraint there.
    #[test]
    fn lowest_placement_matches_a_search() {
        for align in [1u64, 2, 4, 8] {
            for nocross in [0u64, 8, 16] {
                if nocross != 0 && align > nocross {
                    continue;
                }
                for phase in 0..align {
                    for size in 1..12 {
                        for lo in 0..20 {
                            for hi in lo..40 {
                                let c = Constraints {
                                    align,
                                    phase,
                                    nocross,
                                    ..Constraints::NONE
                                };
                                let req = Request::new(size, &c, 1);
                                let search = (lo..hi).find(|&r| r + size <= hi && req.meets(r));
                                assert_eq!(
                                    req.place_in(lo, hi),
                                    search,
                                    "{lo}..{hi} size {size} {c:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn min_and_max_bound_the_placement() {
        let c = Constraints {
            min: 0x100,
            max: 0x200,
            ..Constraints::NONE
        };
        let req = Request::new(0x40, &c, 0x10);
        assert_eq!(req.place_in(0, 0x1000), Some(0x100));
        assert_eq!(req.place_in(0x1c0, 0x1000), Some(0x1c0));
        assert_eq!(req.place_in(0x1d0, 0x1000), None);
        assert!(req.fits_somewhere(&[(0, 0x10), (0x180, 0x1c0)]));
        assert!(!req.fits_somewhere(&[(0, 0x10), (0x190, 0x1c0)]));
    }
}
