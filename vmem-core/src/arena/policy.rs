//! The allocation policies: instant fit, best fit and next fit, each a way
//! of picking a free segment for a request (see the crate documentation),
//! and the rotor next fit leaves after each allocation.

use crate::constraint::Fit;
use crate::tag::{AllocBy, TagPtr};

use super::segment::Inner;

/// How an allocation picks among the free segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// O(1): the head of the first freelist whose every member is large
    /// enough (freelists split each power of two into eight size classes),
    /// else the first fit on the lists from the one that might hold it.
    #[default]
    InstantFit,
    /// The smallest free segment that holds the request.
    BestFit,
    /// The first fit at or after the end of the previous next-fit
    /// allocation, wrapping around (as for process IDs).
    NextFit,
}

impl Inner {
    /// Allocates `[addr, addr + size)` out of the free segment `seg` that
    /// [`Inner::find`] chose under `policy`: next fit resumes after it.
    #[inline]
    pub(super) fn allocate_in(
        &mut self,
        seg: TagPtr,
        addr: u64,
        size: u64,
        by: AllocBy,
        policy: Policy,
    ) -> u64 {
        let taken = self.carve(seg, addr, size, by);
        if policy == Policy::NextFit {
            self.rotor = Some(taken);
            self.rotor_addr = addr + size;
        }
        addr
    }

    /// A free segment and placement for `fit` under `policy`, if any.
    #[inline]
    pub(super) fn find(&mut self, fit: &Fit, policy: Policy) -> Option<(TagPtr, u64)> {
        match policy {
            Policy::InstantFit => {
                // The head of the first list whose every member holds a
                // placement: O(1) for plain and for aligned requests alike.
                if fit.sure != 0
                    && let Some(list) = self.free.first_sure_fit(fit.sure)
                    && let Some(seg) = self.free.head(list)
                {
                    if fit.plain {
                        return Some((seg, seg.start()));
                    }
                    if let Some(addr) = fit.place_in(seg.start(), seg.end()) {
                        return Some((seg, addr));
                    }
                }
                self.search_first(fit)
            }
            Policy::BestFit => self.search_best(fit),
            Policy::NextFit => self.search_next(fit),
        }
    }

    /// The first placement on the lists that might hold `fit`, lowest list
    /// first.
    fn search_first(&self, fit: &Fit) -> Option<(TagPtr, u64)> {
        let mut next = self.free.first_might_fit(fit.size);
        while let Some(list) = next {
            next = self.free.first_from(list + 1);
            let mut cursor = self.free.head(list);
            while let Some(seg) = cursor {
                if let Some(addr) = fit.place_in(seg.start(), seg.end()) {
                    return Some((seg, addr));
                }
                cursor = seg.list_next();
            }
        }
        None
    }

    /// The smallest free segment with a placement for `fit` (the lowest
    /// address among equals).
    fn search_best(&self, fit: &Fit) -> Option<(TagPtr, u64)> {
        let mut next = self.free.first_might_fit(fit.size);
        while let Some(list) = next {
            next = self.free.first_from(list + 1);
            let mut best: Option<(TagPtr, u64)> = None;
            let mut cursor = self.free.head(list);
            while let Some(seg) = cursor {
                if let Some(addr) = fit.place_in(seg.start(), seg.end()) {
                    let better = match best {
                        None => true,
                        Some((b, _)) => (seg.size(), seg.start()) < (b.size(), b.start()),
                    };
                    if better {
                        best = Some((seg, addr));
                    }
                }
                cursor = seg.list_next();
            }
            // Every member of a higher class is larger than any of this one.
            if best.is_some() {
                return best;
            }
        }
        None
    }

    /// The first placement at or after the rotor, walking the segment list
    /// and wrapping around once.
    fn search_next(&self, fit: &Fit) -> Option<(TagPtr, u64)> {
        let try_seg = |seg: TagPtr, floor: u64| -> Option<(TagPtr, u64)> {
            if !seg.is_free() {
                return None;
            }
            fit.place_from(seg.start(), seg.end(), floor)
                .map(|addr| (seg, addr))
        };
        let Some(rotor) = self.rotor else {
            let mut cursor = self.seg_head;
            while let Some(seg) = cursor {
                if let Some(found) = try_seg(seg, 0) {
                    return Some(found);
                }
                cursor = seg.seg_next();
            }
            return None;
        };
        if let Some(found) = try_seg(rotor, self.rotor_addr) {
            return Some(found);
        }
        let mut cursor = rotor.seg_next().or(self.seg_head);
        while let Some(seg) = cursor {
            if seg == rotor {
                break;
            }
            if let Some(found) = try_seg(seg, 0) {
                return Some(found);
            }
            cursor = seg.seg_next().or(self.seg_head);
        }
        // Back at the rotor: the part of its segment below the rotor address.
        try_seg(rotor, 0)
    }
}
