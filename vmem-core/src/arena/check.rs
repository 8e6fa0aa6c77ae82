//! The checker: walks every structure of an arena under its lock and
//! compares each with the others, naming the first broken invariant.

use crate::error::{Error, ErrorKind, Result};
use crate::freelist::{CLASSES, class};
use crate::tag::{Kind, Link};

use super::segment::Inner;

impl Inner {
    /// The checker: walks every structure and compares it with the others.
    pub(super) fn check(&mut self) -> Result<()> {
        let quantum = self.quantum;
        let corrupt =
            |what: &'static str, at: u64| Err(Error::new(ErrorKind::Corrupt, what).at(at));
        // Every walk is bounded by the tags the arena owns, so a cycle ends it.
        let limit = self.tags.owned + 1;
        let (mut alloc, mut free, mut total) = (0u64, 0u64, 0u64);
        let (mut alloc_segs, mut free_segs, mut spans) = (0usize, 0u64, 0u64);
        let mut imported_spans = 0u64;
        let mut span_end: Option<u64> = None; // end of the current span
        let mut covered = 0u64; // where the next segment of the span must start
        let mut last_span_end = 0u64;
        let mut first_span = true;
        let mut prev: Link = None;
        let mut rotor_seen = self.rotor.is_none();
        let mut seg_in_span = 0usize;
        let mut cursor = self.seg_head;
        let mut steps = 0;
        while let Some(tag) = cursor {
            steps += 1;
            if steps > limit {
                return corrupt("segment list has a cycle", tag.start());
            }
            if tag.seg_prev() != prev {
                return corrupt("segment list back link is wrong", tag.start());
            }
            if tag.size() == 0 || (tag.start() | tag.size()) & (quantum - 1) != 0 {
                return corrupt("tag is empty or not a multiple of the quantum", tag.start());
            }
            if tag.start().checked_add(tag.size()).is_none() {
                return corrupt("tag passes 2^64", tag.start());
            }
            match tag.kind() {
                Kind::Span { imported } => {
                    if span_end.is_some_and(|end| covered != end)
                        || (span_end.is_some() && seg_in_span == 0)
                    {
                        return corrupt("segments do not tile their span", tag.start());
                    }
                    if !first_span && tag.start() < last_span_end {
                        return corrupt("spans overlap or are out of order", tag.start());
                    }
                    let next = tag.seg_next();
                    if imported && next.is_some_and(|s| s.is_free() && s.size() == tag.size()) {
                        return corrupt(
                            "imported span is wholly free but was not released",
                            tag.start(),
                        );
                    }
                    first_span = false;
                    last_span_end = tag.end();
                    span_end = Some(tag.end());
                    covered = tag.start();
                    seg_in_span = 0;
                    spans += 1;
                    imported_spans += u64::from(imported);
                    total += tag.size();
                }
                kind => {
                    if span_end.is_none() || tag.start() != covered {
                        return corrupt(
                            "segment does not follow its neighbour in its span",
                            tag.start(),
                        );
                    }
                    covered = tag.end();
                    if span_end.is_some_and(|end| covered > end) {
                        return corrupt("segment runs past the end of its span", tag.start());
                    }
                    seg_in_span += 1;
                    if self.rotor == Some(tag) {
                        rotor_seen = true;
                    }
                    if kind == Kind::Free {
                        if prev.is_some_and(|p| p.is_free()) {
                            return corrupt(
                                "adjacent free segments were not coalesced",
                                tag.start(),
                            );
                        }
                        let list = class(tag.size());
                        let linked = match tag.list_prev() {
                            Some(p) => p.list_next() == Some(tag),
                            None => self.free.head(list) == Some(tag),
                        };
                        if !linked {
                            return corrupt("free segment is not on its freelist", tag.start());
                        }
                        free += tag.size();
                        free_segs += 1;
                    } else {
                        if self.hash.find(tag.start()) != Some(tag) {
                            return corrupt("allocated segment is not in the hash", tag.start());
                        }
                        alloc += tag.size();
                        alloc_segs += 1;
                    }
                }
            }
            prev = Some(tag);
            cursor = tag.seg_next();
        }
        if self.seg_tail != prev {
            return corrupt("segment list tail is wrong", 0);
        }
        // Each tag records whether its neighbours are free, and a free
        // trusts the record and reads no allocated neighbour. Checked once
        // the list is known sound, so a wrong class is named as such first.
        let mut cursor = self.seg_head;
        while let Some(tag) = cursor {
            let next = tag.seg_next();
            if tag.prev_free() != tag.seg_prev().is_some_and(|p| p.is_free())
                || tag.next_free() != next.is_some_and(|n| n.is_free())
            {
                return corrupt("a tag misstates whether its neighbour is free", tag.start());
            }
            cursor = next;
        }
        if span_end.is_some_and(|end| covered != end) || (span_end.is_some() && seg_in_span == 0) {
            return corrupt("segments do not tile their span", covered);
        }
        if let Err(what) = self.span_tree.check(self.seg_head, limit) {
            return corrupt(what, 0);
        }
        if !rotor_seen {
            return corrupt(
                "next-fit rotor is not a segment of the arena",
                self.rotor_addr,
            );
        }
        // Freelists: members are free, on the right list, and as many as the
        // free segments; the sub-list bitmaps mark exactly the non-empty
        // lists, and the level bitmap exactly the levels with one.
        if !self.free.levels_agree() {
            return corrupt("freelist level bitmap disagrees with the sub-lists", 0);
        }
        let mut listed = 0u64;
        for list in 0..CLASSES {
            let head = self.free.head(list);
            if head.is_some() != self.free.marked(list) {
                return corrupt("freelist bitmap disagrees with the lists", list as u64);
            }
            let mut prev: Link = None;
            let mut cursor = head;
            while let Some(seg) = cursor {
                listed += 1;
                if listed > limit as u64 {
                    return corrupt("a freelist has a cycle", seg.start());
                }
                if !seg.is_free() || class(seg.size()) != list || seg.list_prev() != prev {
                    return corrupt("freelist holds a wrong or misfiled segment", seg.start());
                }
                prev = Some(seg);
                cursor = seg.list_next();
            }
        }
        if listed != free_segs || free_segs != self.free_segments {
            return corrupt(
                "freelists and segment list count different free segments",
                listed,
            );
        }
        // Hash: every chain member is allocated and in its own chain, of
        // the table a resize under way has or has not drained it into.
        let mut hashed = 0usize;
        for draining in [false, true] {
            for chain in 0..self.hash.chains_in(draining) {
                let mut cursor = self.hash.chain(draining, chain);
                while let Some(seg) = cursor {
                    hashed += 1;
                    if hashed > limit {
                        return corrupt("a hash chain has a cycle", seg.start());
                    }
                    if !matches!(seg.kind(), Kind::Alloc(_))
                        || !self.hash.belongs(seg.start(), draining, chain)
                    {
                        return corrupt("hash holds a wrong or misfiled segment", seg.start());
                    }
                    cursor = seg.list_next();
                }
            }
        }
        if hashed != alloc_segs || hashed != self.hash.count {
            return corrupt(
                "hash and segment list count different allocated segments",
                hashed as u64,
            );
        }
        // Accounting.
        if alloc != self.bytes_alloc || free != self.bytes_free || total != self.bytes_total {
            return corrupt("byte counts disagree with the segments", total);
        }
        if alloc + free != total || spans != self.spans || imported_spans != self.imported_spans {
            return corrupt(
                "alloc + free differs from total, or a span count is wrong",
                total,
            );
        }
        let linked = (spans + free_segs) as usize + alloc_segs;
        if self.tags.count_spare(limit) != self.tags.spare_count
            || linked + self.tags.spare_count != self.tags.owned
        {
            return corrupt("boundary tags are lost or counted twice", linked as u64);
        }
        Ok(())
    }
}
