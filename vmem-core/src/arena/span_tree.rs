//! The span tree: an arena's span markers in a search tree keyed by span
//! start, so that adding a span, finding the span around an address and
//! removing a span look at O(log spans) markers, not at every span.
//!
//! The segment list holds the span markers in address order already, but
//! finding where a new span goes in it, and whether the span overlaps one
//! the arena has, would walk every span. The tree answers both questions.
//! It is a treap (Seidel and Aragon, 1996): a binary search tree by start in
//! which every marker also outranks the markers below it, a marker's rank
//! being a fixed hash of its start. So the tree's shape depends only on the
//! set of starts, not on the order the spans came in, and has the depth of
//! a tree built in random order, about 2 ln n on average. The hash is a
//! bijection, so no two spans share a rank. The hash is fixed, not drawn at
//! random: starts chosen to defeat it could make the tree deep, which costs
//! time, never correctness; starts an arena meets (multiples of its quantum,
//! from its owner or its source) do not, and the tests hold the depth to a
//! few times log2 n.
//!
//! A span marker links into no other list, so its `list_prev`/`list_next`
//! serve as its lower and higher children ([`TagPtr::lower`],
//! [`TagPtr::higher`]): the tree costs no memory. Insertion and removal go
//! top-down through link slots (split and merge), so nothing recurses and
//! nothing is allocated.

use crate::tag::{Link, TagPtr};

/// Where a subtree hangs: the root, or a marker's lower or higher child.
#[derive(Clone, Copy)]
enum Slot {
    Root,
    Lower(TagPtr),
    Higher(TagPtr),
}

/// A marker's rank: the murmur3 finalizer of its start, a bijection of
/// `u64` that spreads starts differing only in high bits.
fn rank(span: TagPtr) -> u64 {
    let mut k = span.start();
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// An arena's span markers, by start.
pub(super) struct SpanTree {
    root: Link,
    /// Markers looked at so far, for the tests that hold the cost.
    #[cfg(test)]
    steps: core::cell::Cell<u64>,
}

impl SpanTree {
    pub(super) const fn new() -> Self {
        SpanTree {
            root: None,
            #[cfg(test)]
            steps: core::cell::Cell::new(0),
        }
    }

    #[inline(always)]
    fn step(&self) {
        #[cfg(test)]
        self.steps.set(self.steps.get() + 1);
    }

    /// Markers looked at since the tree was made.
    #[cfg(test)]
    pub(super) fn steps(&self) -> u64 {
        self.steps.get()
    }

    fn get(&self, slot: Slot) -> Link {
        match slot {
            Slot::Root => self.root,
            Slot::Lower(span) => span.lower(),
            Slot::Higher(span) => span.higher(),
        }
    }

    fn set(&mut self, slot: Slot, subtree: Link) {
        match slot {
            Slot::Root => self.root = subtree,
            Slot::Lower(span) => span.set_lower(subtree),
            Slot::Higher(span) => span.set_higher(subtree),
        }
    }

    /// The marker with the highest start below `key` and the one with the
    /// lowest start at or above it.
    pub(super) fn around(&self, key: u64) -> (Link, Link) {
        let (mut below, mut above) = (None, None);
        let mut cursor = self.root;
        while let Some(span) = cursor {
            self.step();
            if span.start() < key {
                below = Some(span);
                cursor = span.higher();
            } else {
                above = Some(span);
                cursor = span.lower();
            }
        }
        (below, above)
    }

    /// Adds a marker whose start no marker in the tree has.
    pub(super) fn insert(&mut self, span: TagPtr) {
        let (key, rank_of_span) = (span.start(), rank(span));
        // Down to the first marker the new one outranks.
        let mut slot = Slot::Root;
        while let Some(node) = self.get(slot) {
            self.step();
            if rank(node) < rank_of_span {
                break;
            }
            slot = if key < node.start() {
                Slot::Lower(node)
            } else {
                Slot::Higher(node)
            };
        }
        // Split the subtree hanging there into the markers below and above
        // `key`, which become the new marker's children.
        let mut rest = self.get(slot);
        let (mut lower, mut higher) = (Slot::Lower(span), Slot::Higher(span));
        while let Some(node) = rest {
            self.step();
            if node.start() < key {
                self.set(lower, Some(node));
                lower = Slot::Higher(node);
                rest = node.higher();
            } else {
                self.set(higher, Some(node));
                higher = Slot::Lower(node);
                rest = node.lower();
            }
        }
        self.set(lower, None);
        self.set(higher, None);
        self.set(slot, Some(span));
    }

    /// Removes a marker the tree holds; its children merge in its place.
    pub(super) fn remove(&mut self, span: TagPtr) {
        let key = span.start();
        let mut slot = Slot::Root;
        loop {
            let Some(node) = self.get(slot) else {
                // Not in the tree: nothing to unlink (the checker says so).
                return;
            };
            self.step();
            if node == span {
                break;
            }
            slot = if key < node.start() {
                Slot::Lower(node)
            } else {
                Slot::Higher(node)
            };
        }
        let (mut lower, mut higher) = (span.lower(), span.higher());
        loop {
            match (lower, higher) {
                (None, rest) | (rest, None) => {
                    self.set(slot, rest);
                    break;
                }
                (Some(low), Some(high)) => {
                    self.step();
                    if rank(low) > rank(high) {
                        self.set(slot, Some(low));
                        slot = Slot::Higher(low);
                        lower = low.higher();
                    } else {
                        self.set(slot, Some(high));
                        slot = Slot::Lower(high);
                        higher = high.lower();
                    }
                }
            }
        }
        span.set_lower(None);
        span.set_higher(None);
    }

    /// Forgets every marker (the arena is dropping all its spans).
    pub(super) fn clear(&mut self) {
        self.root = None;
    }

    /// The checker's part: the tree holds exactly the span markers of the
    /// segment list that starts at `seg_head`, in their order, and every
    /// marker outranks its children. `limit` bounds every walk, so a cycle
    /// ends it. The segment list has been checked already.
    pub(super) fn check(&mut self, seg_head: Link, limit: usize) -> Result<(), &'static str> {
        let next_span = |mut cursor: Link| {
            while let Some(tag) = cursor {
                if tag.is_span() {
                    return Some(tag);
                }
                cursor = tag.seg_next();
            }
            None
        };
        // Each marker's children: on the right side of it, and outranked.
        let mut cursor = next_span(seg_head);
        while let Some(span) = cursor {
            let lower_ok = span
                .lower()
                .is_none_or(|low| low.start() < span.start() && rank(low) < rank(span));
            let higher_ok = span
                .higher()
                .is_none_or(|high| high.start() > span.start() && rank(high) < rank(span));
            if !lower_ok || !higher_ok {
                return Err("span tree is out of order or a child outranks its parent");
            }
            cursor = next_span(span.seg_next());
        }
        // An in-order walk (Morris's: threads through empty higher links,
        // each removed when the walk comes back over it) must meet the
        // markers as the segment list has them.
        let mut expected = next_span(seg_head);
        let mut agrees = true;
        let mut steps = 0usize;
        let mut cursor = self.root;
        while let Some(node) = cursor {
            steps += 1;
            if steps > 4 * limit {
                return Err("span tree has a cycle");
            }
            let mut visit = false;
            match node.lower() {
                None => visit = true,
                Some(low) => {
                    let mut pred = low;
                    while let Some(next) = pred.higher().filter(|&next| next != node) {
                        steps += 1;
                        if steps > 4 * limit {
                            return Err("span tree has a cycle");
                        }
                        pred = next;
                    }
                    if pred.higher() == Some(node) {
                        pred.set_higher(None);
                        visit = true;
                    } else {
                        pred.set_higher(Some(node));
                        cursor = Some(low);
                    }
                }
            }
            if visit {
                agrees &= expected == Some(node);
                expected = expected.and_then(|span| next_span(span.seg_next()));
                cursor = node.higher();
            }
        }
        if !agrees || expected.is_some() {
            return Err("span tree does not hold exactly the span markers");
        }
        Ok(())
    }

    /// The number of markers on the longest path from the root.
    #[cfg(test)]
    pub(super) fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut pending: std::vec::Vec<(TagPtr, usize)> =
            self.root.map(|r| (r, 1)).into_iter().collect();
        while let Some((node, depth)) = pending.pop() {
            deepest = deepest.max(depth);
            pending.extend(node.lower().map(|c| (c, depth + 1)));
            pending.extend(node.higher().map(|c| (c, depth + 1)));
        }
        deepest
    }
}
