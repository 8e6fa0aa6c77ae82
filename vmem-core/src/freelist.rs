//! Power-of-two freelists and the bitmap of non-empty lists: what makes
//! instant fit O(1).
//!
//! A free segment of size `s` sits on list `highbit(s)`, the list of sizes
//! in `[2^i, 2^(i+1))`. Every member of a list above `highbit(s)` (or of list
//! `highbit(s)` itself when `s` is a power of two) is large enough for `s`;
//! list `highbit(s)` is the one list that only might fit.

use crate::tag::{Link, TagPtr};

/// Index of the highest set bit (`size` is never zero here).
#[inline(always)]
pub(crate) fn highbit(size: u64) -> usize {
    63 - size.leading_zeros() as usize
}

/// The freelists of one arena.
pub(crate) struct FreeLists {
    heads: [Link; 64],
    /// Bit `i` is set exactly when list `i` is non-empty.
    bitmap: u64,
}

impl FreeLists {
    pub(crate) const fn new() -> Self {
        FreeLists {
            heads: [None; 64],
            bitmap: 0,
        }
    }

    /// Puts a free segment at the head of its list.
    pub(crate) fn insert(&mut self, seg: TagPtr) {
        let list = highbit(seg.size());
        let head = self.heads[list];
        seg.set_list_prev(None);
        seg.set_list_next(head);
        if let Some(head) = head {
            head.set_list_prev(Some(seg));
        }
        self.heads[list] = Some(seg);
        self.bitmap |= 1 << list;
    }

    /// Takes a free segment off its list (its size is the one it was
    /// inserted with).
    pub(crate) fn remove(&mut self, seg: TagPtr) {
        let list = highbit(seg.size());
        let prev = seg.list_prev();
        let next = seg.list_next();
        match prev {
            Some(prev) => prev.set_list_next(next),
            None => self.heads[list] = next,
        }
        if let Some(next) = next {
            next.set_list_prev(prev);
        }
        if self.heads[list].is_none() {
            self.bitmap &= !(1 << list);
        }
        seg.set_list_prev(None);
        seg.set_list_next(None);
    }

    /// Puts `new`, a copy of the free segment `old`, in `old`'s place on
    /// its list (so the list's order stays).
    pub(crate) fn replace(&mut self, old: TagPtr, new: TagPtr) {
        let prev = old.list_prev();
        let next = old.list_next();
        new.set_list_prev(prev);
        new.set_list_next(next);
        match prev {
            Some(prev) => prev.set_list_next(Some(new)),
            None => self.heads[highbit(old.size())] = Some(new),
        }
        if let Some(next) = next {
            next.set_list_prev(Some(new));
        }
    }

    /// The first non-empty list whose every member holds `size`.
    #[inline]
    pub(crate) fn first_sure_fit(&self, size: u64) -> Option<usize> {
        let list = if size.is_power_of_two() {
            highbit(size)
        } else {
            highbit(size) + 1
        };
        if list >= 64 {
            return None;
        }
        let candidates = self.bitmap & (u64::MAX << list);
        if candidates == 0 {
            return None;
        }
        Some(candidates.trailing_zeros() as usize)
    }

    /// The non-empty lists from the one that might hold `size` upwards, as
    /// a bitmap, for searches that must look at every candidate.
    #[inline]
    pub(crate) fn lists_from(&self, size: u64) -> u64 {
        self.bitmap & (u64::MAX << highbit(size))
    }

    /// The head of list `list`.
    #[inline]
    pub(crate) fn head(&self, list: usize) -> Link {
        self.heads[list]
    }

    /// The bitmap of non-empty lists.
    pub(crate) fn bitmap(&self) -> u64 {
        self.bitmap
    }
}
