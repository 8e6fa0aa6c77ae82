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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Budget, segment, tag_stock};

    /// The members of list `list`, head first, by start.
    fn members(lists: &FreeLists, list: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut cursor = lists.head(list);
        while let Some(seg) = cursor {
            out.push(seg.start());
            cursor = seg.list_next();
        }
        out
    }

    /// The bitmap the lists' heads say it should be.
    fn bitmap_of_heads(lists: &FreeLists) -> u64 {
        (0..64)
            .filter(|&i| lists.head(i).is_some())
            .fold(0, |map, i| map | 1 << i)
    }

    #[test]
    fn highbit_puts_each_size_on_the_list_of_its_power_of_two() {
        for i in 0..64 {
            let low = 1u64 << i;
            let high = low.wrapping_mul(2).wrapping_sub(1).max(low);
            assert_eq!(highbit(low), i, "2^{i}");
            assert_eq!(highbit(high), i, "2^({i}+1) - 1");
            if i > 0 {
                assert_eq!(highbit(low - 1), i - 1, "2^{i} - 1");
            }
        }
        assert_eq!(highbit(u64::MAX), 63);
        assert_eq!(highbit(3), 1);
    }

    #[test]
    fn insert_and_remove_keep_the_lists_and_the_bitmap_in_step() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut lists = FreeLists::new();
        assert_eq!(lists.bitmap(), 0);
        let sizes = [1u64, 2, 3, 4096, 4097, 8191, 1 << 63];
        let segs: Vec<TagPtr> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| segment(&mut stock, i as u64 * 0x10, size))
            .collect();
        for &seg in &segs {
            lists.insert(seg);
            assert_eq!(lists.bitmap(), bitmap_of_heads(&lists));
        }
        assert_eq!(lists.bitmap(), 1 | 1 << 1 | 1 << 12 | 1 << 63);
        // The newest insert heads its list.
        assert_eq!(members(&lists, 1), vec![0x20, 0x10]);
        assert_eq!(members(&lists, 12), vec![0x50, 0x40, 0x30]);
        // Taking one from the middle keeps the rest linked both ways.
        lists.remove(segs[4]);
        assert_eq!(members(&lists, 12), vec![0x50, 0x30]);
        assert_eq!(segs[5].list_next(), Some(segs[3]));
        assert_eq!(segs[3].list_prev(), Some(segs[5]));
        assert_eq!((segs[4].list_prev(), segs[4].list_next()), (None, None));
        // Emptying a list clears its bit, and only its bit.
        lists.remove(segs[0]);
        assert_eq!(lists.bitmap(), 1 << 1 | 1 << 12 | 1 << 63);
        lists.remove(segs[5]);
        lists.remove(segs[3]);
        assert_eq!(lists.bitmap(), 1 << 1 | 1 << 63);
        for seg in [segs[1], segs[2], segs[6]] {
            lists.remove(seg);
        }
        assert_eq!((lists.bitmap(), bitmap_of_heads(&lists)), (0, 0));
        for seg in segs {
            stock.give_back(seg);
        }
        stock.dispose(Some(&meta));
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn replace_keeps_the_place_and_order_on_the_list() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut lists = FreeLists::new();
        let segs: Vec<TagPtr> = (0..3)
            .map(|i| segment(&mut stock, i * 0x100, 0x20))
            .collect();
        for &seg in &segs {
            lists.insert(seg);
        }
        // Head, middle and tail each take their copy's place.
        for (old, start) in [(segs[2], 0x1000), (segs[1], 0x2000), (segs[0], 0x3000)] {
            let new = segment(&mut stock, start, 0x20);
            lists.replace(old, new);
        }
        assert_eq!(members(&lists, 5), vec![0x1000, 0x2000, 0x3000]);
        let head = lists.head(5).unwrap();
        assert_eq!(head.list_prev(), None);
        let tail = head.list_next().unwrap().list_next().unwrap();
        assert_eq!(tail.list_prev(), head.list_next());
        assert_eq!(lists.bitmap(), 1 << 5);
        stock.dispose(Some(&meta));
    }

    #[test]
    fn first_sure_fit_names_only_lists_whose_every_member_fits() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut lists = FreeLists::new();
        assert_eq!(lists.first_sure_fit(1), None, "no list at all");
        // Lists 3 (sizes 8..16) and 6 (64..128).
        for (start, size) in [(0, 8), (0x100, 15), (0x200, 64)] {
            lists.insert(segment(&mut stock, start, size));
        }
        assert_eq!(lists.first_sure_fit(1), Some(3));
        assert_eq!(
            lists.first_sure_fit(8),
            Some(3),
            "a power of two fits its own list"
        );
        assert_eq!(lists.first_sure_fit(9), Some(6), "list 3 only might hold 9");
        assert_eq!(lists.first_sure_fit(64), Some(6));
        assert_eq!(lists.first_sure_fit(65), None, "list 6 only might hold 65");
        assert_eq!(lists.first_sure_fit(u64::MAX), None, "past the last list");
        assert_eq!(lists.first_sure_fit(1 << 63), None);
        // Whatever a sure fit names, every member of it holds the size.
        for size in 1..200u64 {
            if let Some(list) = lists.first_sure_fit(size) {
                let mut cursor = lists.head(list);
                while let Some(seg) = cursor {
                    assert!(seg.size() >= size, "size {size}: list {list}");
                    cursor = seg.list_next();
                }
            }
        }
        // The searched lists start at the one that might fit.
        assert_eq!(lists.lists_from(9), 1 << 3 | 1 << 6);
        assert_eq!(lists.lists_from(16), 1 << 6);
        assert_eq!(lists.lists_from(1 << 7), 0);
        stock.dispose(Some(&meta));
    }
}
