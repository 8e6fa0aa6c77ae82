//! Size-class freelists and the two-level bitmap of non-empty lists: what
//! makes instant fit O(1).
//!
//! Sizes split first by power of two, level `highbit(s)` holding the sizes
//! in `[2^i, 2^(i+1))`, and each level splits again into [`SUB`] sub-lists
//! of equal width (TLSF's second level): from level 3 up, sub-list `j` of
//! level `i` holds the sizes in `[2^i + j * 2^(i-3), 2^i + (j+1) * 2^(i-3))`;
//! below level 3 each size has a sub-list of its own. The classes, numbered
//! `i * SUB + j`, follow one another in size: every member of a class is
//! larger than every member of a lower one. The class of a size `s` is the
//! one class that only might hold `s` unless `s` is its lower bound; every
//! member of a higher class holds `s`.
//!
//! A bitmap of levels marks the levels with a non-empty sub-list, and one
//! byte per level marks its non-empty sub-lists, so the first non-empty
//! class at or above any class is two bit scans away.

use crate::tag::{Link, TagPtr};

/// Bits of the sub-list index within a level.
const SUB_BITS: usize = 3;
/// Sub-lists per power of two.
pub(crate) const SUB: usize = 1 << SUB_BITS;
/// Classes in all: 64 levels of [`SUB`] sub-lists.
pub(crate) const CLASSES: usize = 64 * SUB;

/// Index of the highest set bit (`size` is never zero here).
#[inline(always)]
pub(crate) fn highbit(size: u64) -> usize {
    63 - size.leading_zeros() as usize
}

/// The size class of `size` (never zero): its level and, within it, the
/// sub-list given by the `SUB_BITS` bits below the highest one.
#[inline(always)]
pub(crate) fn class(size: u64) -> usize {
    let level = highbit(size);
    let sub = if level >= SUB_BITS {
        (size >> (level - SUB_BITS)) as usize
    } else {
        (size << (SUB_BITS - level)) as usize
    } & (SUB - 1);
    level * SUB + sub
}

/// The smallest size of class `class`, for a class some size maps to (the
/// tests check [`FreeLists::first_sure_fit`] against it).
#[cfg(test)]
pub(crate) fn class_floor(class: usize) -> u64 {
    let (level, sub) = (class / SUB, (class % SUB) as u64);
    if level >= SUB_BITS {
        (1u64 << level) + (sub << (level - SUB_BITS))
    } else {
        (1u64 << level) + (sub >> (SUB_BITS - level))
    }
}

/// The freelists of one arena.
pub(crate) struct FreeLists {
    heads: [Link; CLASSES],
    /// Bit `i` is set exactly when some sub-list of level `i` is non-empty.
    levels: u64,
    /// Bit `j` of byte `i` is set exactly when class `i * SUB + j` is
    /// non-empty.
    subs: [u8; 64],
}

impl FreeLists {
    pub(crate) const fn new() -> Self {
        FreeLists {
            heads: [None; CLASSES],
            levels: 0,
            subs: [0; 64],
        }
    }

    /// Marks class `list` non-empty.
    #[inline(always)]
    fn mark(&mut self, list: usize) {
        self.subs[list / SUB] |= 1 << (list % SUB);
        self.levels |= 1 << (list / SUB);
    }

    /// Marks class `list` empty.
    #[inline(always)]
    fn unmark(&mut self, list: usize) {
        let level = list / SUB;
        self.subs[level] &= !(1 << (list % SUB));
        if self.subs[level] == 0 {
            self.levels &= !(1 << level);
        }
    }

    /// Puts a free segment at the head of its list.
    #[inline]
    pub(crate) fn insert(&mut self, seg: TagPtr) {
        self.insert_in(seg, class(seg.size()));
    }

    /// Puts a free segment at the head of list `list`, its size's class
    /// (computed by the caller, who had it already).
    #[inline]
    pub(crate) fn insert_in(&mut self, seg: TagPtr, list: usize) {
        debug_assert_eq!(list, class(seg.size()), "inserting into another class");
        let head = self.heads[list];
        seg.set_list_prev(None);
        seg.set_list_next(head);
        if let Some(head) = head {
            head.set_list_prev(Some(seg));
        }
        self.heads[list] = Some(seg);
        self.mark(list);
    }

    /// Takes a free segment off its list (its size is the one it was
    /// inserted with).
    #[inline]
    pub(crate) fn remove(&mut self, seg: TagPtr) {
        self.remove_from(seg, class(seg.size()));
    }

    /// Takes a free segment off list `list`, its size's class (computed by
    /// the caller, who had it already).
    #[inline]
    pub(crate) fn remove_from(&mut self, seg: TagPtr, list: usize) {
        debug_assert_eq!(list, class(seg.size()), "removing from another class");
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
            self.unmark(list);
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
            None => self.heads[class(old.size())] = Some(new),
        }
        if let Some(next) = next {
            next.set_list_prev(Some(new));
        }
    }

    /// The first non-empty class at or above `list`: two bit scans.
    #[inline]
    pub(crate) fn first_from(&self, list: usize) -> Option<usize> {
        if list >= CLASSES {
            return None;
        }
        let level = list / SUB;
        let here = u32::from(self.subs[level]) & (u32::MAX << (list % SUB));
        if here != 0 {
            return Some(level * SUB + here.trailing_zeros() as usize);
        }
        if level + 1 >= 64 {
            return None;
        }
        let above = self.levels & (u64::MAX << (level + 1));
        if above == 0 {
            return None;
        }
        let level = above.trailing_zeros() as usize;
        Some(level * SUB + self.subs[level].trailing_zeros() as usize)
    }

    /// The first non-empty list whose every member holds `size`.
    #[inline]
    pub(crate) fn first_sure_fit(&self, size: u64) -> Option<usize> {
        // Rounded up to the next class floor (itself when it is one), the
        // size's class is the first whose floor is at least `size`; past
        // the top of the sizes there is no such class.
        let level = highbit(size);
        let round = if level >= SUB_BITS {
            (1u64 << (level - SUB_BITS)) - 1
        } else {
            0
        };
        match size.checked_add(round) {
            Some(rounded) => self.first_from(class(rounded)),
            None => None,
        }
    }

    /// The first non-empty list that might hold `size`: the lists a search
    /// that must look at every candidate walks start here and go on by
    /// [`FreeLists::first_from`].
    #[inline]
    pub(crate) fn first_might_fit(&self, size: u64) -> Option<usize> {
        self.first_from(class(size))
    }

    /// The head of list `list`.
    #[inline]
    pub(crate) fn head(&self, list: usize) -> Link {
        self.heads[list]
    }

    /// Whether the bitmaps mark class `list` non-empty.
    pub(crate) fn marked(&self, list: usize) -> bool {
        self.subs[list / SUB] & (1 << (list % SUB)) != 0
    }

    /// Whether the level bitmap marks exactly the levels with a marked
    /// class.
    pub(crate) fn levels_agree(&self) -> bool {
        (0..64).all(|level| (self.levels & (1 << level) != 0) == (self.subs[level] != 0))
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

    /// The classes the bitmaps mark, after checking that the level bitmap
    /// agrees with the sub-list bitmaps and that the marks are exactly the
    /// non-empty lists.
    fn marked(lists: &FreeLists) -> Vec<usize> {
        assert!(lists.levels_agree(), "level bitmap out of step");
        let marked: Vec<usize> = (0..CLASSES).filter(|&c| lists.marked(c)).collect();
        let headed: Vec<usize> = (0..CLASSES).filter(|&c| lists.head(c).is_some()).collect();
        assert_eq!(marked, headed, "bitmaps and heads disagree");
        marked
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
    fn classes_split_each_power_of_two_into_eight_in_size_order() {
        // Small sizes have a class each; from 8 up, eight per power of two.
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(class), [0, 8, 12, 16, 18, 20, 22]);
        assert_eq!([8, 9, 15, 16, 17, 18].map(class), [24, 25, 31, 32, 32, 33]);
        assert_eq!(class(33), 40, "33 shares 32's class (width 4)");
        assert_eq!(class(36), 41);
        assert_eq!(class(63), 47);
        assert_eq!(class(u64::MAX), CLASSES - 1);
        assert_eq!(class(1 << 63), 63 * SUB);
        let mut sizes: Vec<u64> = (1..5000).collect();
        for i in 3..64 {
            let low = 1u64 << i;
            for j in 0..SUB as u64 {
                let floor = low + (j << (i - 3));
                sizes.extend([floor - 1, floor, floor + 1]);
            }
            sizes.push(low.wrapping_mul(2).wrapping_sub(1).max(low));
        }
        sizes.sort_unstable();
        sizes.dedup();
        let mut last = 0;
        for &size in &sizes {
            let c = class(size);
            assert!(c >= last, "classes fall at {size}");
            last = c;
            assert_eq!(c / SUB, highbit(size), "{size} left its power of two");
            let floor = class_floor(c);
            assert!(floor <= size, "{size} below its class floor {floor}");
            assert_eq!(class(floor), c, "floor of {size}'s class");
            if floor > 1 {
                assert!(class(floor - 1) < c, "{floor} is not its class's floor");
            }
        }
    }

    #[test]
    fn insert_and_remove_keep_the_lists_and_the_bitmaps_in_step() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut lists = FreeLists::new();
        assert_eq!(marked(&lists), Vec::<usize>::new());
        let sizes = [1u64, 2, 3, 4096, 4097, 4100, 1 << 63];
        let segs: Vec<TagPtr> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| segment(&mut stock, i as u64 * 0x10, size))
            .collect();
        for &seg in &segs {
            lists.insert(seg);
            marked(&lists);
        }
        assert_eq!(marked(&lists), vec![0, 8, 12, 96, 504]);
        // The newest insert heads its list.
        assert_eq!(members(&lists, 96), vec![0x50, 0x40, 0x30]);
        // Taking one from the middle keeps the rest linked both ways.
        lists.remove(segs[4]);
        assert_eq!(members(&lists, 96), vec![0x50, 0x30]);
        assert_eq!(segs[5].list_next(), Some(segs[3]));
        assert_eq!(segs[3].list_prev(), Some(segs[5]));
        assert_eq!((segs[4].list_prev(), segs[4].list_next()), (None, None));
        // Emptying a list clears its bit, and only its bit.
        lists.remove(segs[0]);
        assert_eq!(marked(&lists), vec![8, 12, 96, 504]);
        lists.remove(segs[5]);
        lists.remove(segs[3]);
        assert_eq!(marked(&lists), vec![8, 12, 504]);
        for seg in [segs[1], segs[2], segs[6]] {
            lists.remove(seg);
        }
        assert_eq!(marked(&lists), Vec::<usize>::new());
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
        assert_eq!(members(&lists, 40), vec![0x1000, 0x2000, 0x3000]);
        let head = lists.head(40).unwrap();
        assert_eq!(head.list_prev(), None);
        let tail = head.list_next().unwrap().list_next().unwrap();
        assert_eq!(tail.list_prev(), head.list_next());
        assert_eq!(marked(&lists), vec![40]);
        stock.dispose(Some(&meta));
    }

    #[test]
    fn first_sure_fit_names_only_lists_whose_every_member_fits() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let mut lists = FreeLists::new();
        assert_eq!(lists.first_sure_fit(1), None, "no list at all");
        // Classes 24 (size 8), 31 (sizes 15..16) and 48 (64..72).
        for (start, size) in [(0, 8), (0x100, 15), (0x200, 64)] {
            lists.insert(segment(&mut stock, start, size));
        }
        assert_eq!(lists.first_sure_fit(1), Some(24));
        assert_eq!(lists.first_sure_fit(8), Some(24), "a floor fits its class");
        assert_eq!(
            lists.first_sure_fit(9),
            Some(31),
            "15 holds 9; 64 is not needed"
        );
        assert_eq!(lists.first_sure_fit(15), Some(31));
        assert_eq!(lists.first_sure_fit(16), Some(48));
        assert_eq!(lists.first_sure_fit(64), Some(48));
        assert_eq!(
            lists.first_sure_fit(65),
            None,
            "class 48 only might hold 65"
        );
        assert_eq!(lists.first_sure_fit(u64::MAX), None, "past the last list");
        assert_eq!(lists.first_sure_fit(1 << 63), None);
        // Whatever a sure fit names, every member of it holds the size, and
        // every non-empty class below it has members too small.
        for size in 1..200u64 {
            let sure = lists.first_sure_fit(size);
            if let Some(list) = sure {
                let mut cursor = lists.head(list);
                while let Some(seg) = cursor {
                    assert!(seg.size() >= size, "size {size}: list {list}");
                    cursor = seg.list_next();
                }
            }
            for below in 0..sure.unwrap_or(CLASSES) {
                if lists.head(below).is_some() {
                    assert!(class_floor(below) < size, "size {size}: {below} skipped");
                }
            }
        }
        // The searched lists start at the one that might fit.
        assert_eq!(lists.first_might_fit(9), Some(31));
        assert_eq!(lists.first_might_fit(16), Some(48));
        assert_eq!(lists.first_might_fit(65), Some(48));
        assert_eq!(lists.first_might_fit(73), None);
        assert_eq!(lists.first_from(25), Some(31));
        assert_eq!(lists.first_from(32), Some(48));
        assert_eq!(lists.first_from(49), None);
        assert_eq!(lists.first_from(CLASSES), None);
        stock.dispose(Some(&meta));
    }
}
