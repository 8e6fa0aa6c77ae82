//! Segment surgery: the arena's state under its lock, and the verbs that
//! change its segment list. Carve an allocation out of a free segment,
//! free a segment and coalesce it with its neighbours, insert and remove
//! spans, and move tags off the pages a reap gives back. Each verb asserts
//! (in debug builds) what it relies on, as illumos's `vmem_seg_alloc`
//! asserts that its segment is free.

use crate::error::{Error, ErrorKind, Result};
use crate::fault::ArenaFaults;
use crate::freelist::{FreeLists, class};
use crate::hash::{AllocHash, Found};
use crate::meta::MetaPages;
use crate::tag::{AllocBy, Kind, Link, TAGS_PER_PAGE, TagPtr, TagStock, next_leaving, page_slot};

use super::span_tree::SpanTree;

/// The arena's state under its lock.
pub(super) struct Inner {
    /// The arena's quantum, for the verbs' assertions.
    pub(super) quantum: u64,
    /// Whether the arena imports from its source (until it is destroyed).
    pub(super) attached: bool,
    /// First and last tag of the segment list: span markers each followed by
    /// the segments that tile the span, spans in address order.
    pub(super) seg_head: Link,
    pub(super) seg_tail: Link,
    /// Span markers by start, to find a span's place in O(log spans).
    pub(super) span_tree: SpanTree,
    pub(super) free: FreeLists,
    pub(super) hash: AllocHash,
    pub(super) tags: TagStock,
    /// Where next fit resumes: a segment at or before `rotor_addr`.
    pub(super) rotor: Link,
    pub(super) rotor_addr: u64,
    pub(super) bytes_alloc: u64,
    pub(super) bytes_free: u64,
    pub(super) bytes_total: u64,
    pub(super) spans: u64,
    /// Spans imported from the source, of `spans`: while there are none, a
    /// free need not look for a wholly free imported span to release.
    pub(super) imported_spans: u64,
    pub(super) free_segments: u64,
    /// Injected faults: which imports and tag refills fail.
    pub(super) faults: ArenaFaults,
    pub(super) allocs: u64,
    pub(super) frees: u64,
    pub(super) alloc_fails: u64,
    pub(super) imports: u64,
    pub(super) import_fails: u64,
    pub(super) releases: u64,
}

// SAFETY: every tag the state links is owned by this arena alone and only
// touched with the arena's lock held, so the state may move between threads
// with the lock; the source is `Sync`.
unsafe impl Send for Inner {}

impl Inner {
    pub(super) const fn new(quantum: u64) -> Self {
        Inner {
            quantum,
            attached: false,
            seg_head: None,
            seg_tail: None,
            span_tree: SpanTree::new(),
            free: FreeLists::new(),
            hash: AllocHash::new(),
            tags: TagStock::new(),
            rotor: None,
            rotor_addr: 0,
            bytes_alloc: 0,
            bytes_free: 0,
            bytes_total: 0,
            spans: 0,
            imported_spans: 0,
            free_segments: 0,
            faults: ArenaFaults::new(),
            allocs: 0,
            frees: 0,
            alloc_fails: 0,
            imports: 0,
            import_fails: 0,
            releases: 0,
        }
    }

    /// Empties every tag page it can into `out`, keeping at least `keep`
    /// spare tags: tags in use move off the pages with the fewest in use
    /// into spare tags of the others. Span markers stay where they are.
    /// Allocates nothing.
    pub(super) fn empty_tag_pages(&mut self, keep: usize, out: &mut MetaPages) {
        if !self.tags.count_spare_per_page() {
            return;
        }
        let mut cursor = self.seg_head;
        while let Some(tag) = cursor {
            if tag.is_span() {
                self.tags.pin(tag);
            }
            cursor = tag.seg_next();
        }
        let Some(emptying) = self.tags.plan_emptying(keep) else {
            return;
        };
        let mut page = emptying.first();
        while let Some(record) = page {
            page = next_leaving(record);
            for i in 1..=TAGS_PER_PAGE {
                let tag = page_slot(record, i);
                // Spare tags of a leaving page were marked with size 0.
                if tag.size() != 0 {
                    let copy = self.new_tag(0, 0, Kind::Free);
                    self.move_tag(tag, copy);
                }
            }
        }
        self.tags.finish_emptying(emptying, out);
    }

    /// Puts `new` in the place of the linked segment `old` everywhere the
    /// arena links it: the segment list, the rotor, and its freelist or
    /// the hash.
    fn move_tag(&mut self, old: TagPtr, new: TagPtr) {
        debug_assert!(!old.is_span(), "span markers are pinned, never moved");
        debug_assert!(self.linked(old), "moving a tag that is not linked");
        new.set_start(old.start());
        new.set_size(old.size());
        new.set_kind(old.kind());
        self.link(
            old.seg_prev(),
            old.prev_free(),
            new,
            old.seg_next(),
            old.next_free(),
        );
        if self.rotor == Some(old) {
            self.rotor = Some(new);
        }
        match old.kind() {
            Kind::Free => self.free.replace(old, new),
            Kind::Alloc(_) => {
                self.hash.remove(old);
                self.hash.insert(new);
            }
            // Span markers are pinned, never moved.
            Kind::Span { .. } => {}
        }
    }

    /// Whether `tag`'s neighbours in the segment list (or its ends) point
    /// back at it.
    fn linked(&self, tag: TagPtr) -> bool {
        let back = match tag.seg_prev() {
            Some(prev) => prev.seg_next() == Some(tag),
            None => self.seg_head == Some(tag),
        };
        let forward = match tag.seg_next() {
            Some(next) => next.seg_prev() == Some(tag),
            None => self.seg_tail == Some(tag),
        };
        back && forward
    }

    /// Whether the segment `seg` lies in its span, as far as its neighbours
    /// tell: it starts where its span marker starts or where the segment
    /// before it ends, ends within a span marker before it, and ends where
    /// a segment after it starts.
    fn tiles(&self, seg: TagPtr) -> bool {
        let after_prev = match seg.seg_prev() {
            Some(span) if span.is_span() => span.start() == seg.start() && seg.end() <= span.end(),
            Some(prev) => prev.end() == seg.start(),
            None => false,
        };
        let before_next = match seg.seg_next() {
            Some(next) if !next.is_span() => next.start() == seg.end(),
            _ => true,
        };
        after_prev && before_next
    }

    /// Whether `start` and `size` are multiples of the quantum.
    fn quantum_multiples(&self, start: u64, size: u64) -> bool {
        (start | size) & (self.quantum - 1) == 0
    }

    #[cfg(test)]
    pub(super) fn span_steps(&self) -> u64 {
        self.span_tree.steps()
    }

    /// Takes a spare tag; the operation reserved enough before it began.
    fn new_tag(&mut self, start: u64, size: u64, kind: Kind) -> TagPtr {
        match self.tags.take(start, size, kind) {
            Some(tag) => tag,
            // Unreachable: every operation holds TAGS_PER_OP spare tags before
            // it starts and uses at most that many.
            None => unreachable!("boundary tag reserve exhausted"),
        }
    }

    /// Links `tag` into the segment list right after `prev` (at the head
    /// when `prev` is none). Reads `prev` (its class, and the next tag with
    /// its freedom from `prev`'s own record); writes the next tag unread.
    fn seg_insert_after(&mut self, prev: Link, tag: TagPtr) {
        debug_assert!(
            prev.is_none_or(|prev| self.linked(prev) && prev.start() <= tag.start()),
            "inserting after a tag that is not linked or lies above the new one"
        );
        debug_assert!(
            tag.size() > 0 && self.quantum_multiples(tag.start(), tag.size()),
            "inserting an empty tag or one off the quantum"
        );
        let (next, next_free) = match prev {
            Some(prev) => (prev.seg_next(), prev.next_free()),
            None => (self.seg_head, self.seg_head.is_some_and(TagPtr::is_free)),
        };
        let prev_free = prev.is_some_and(TagPtr::is_free);
        self.link(prev, prev_free, tag, next, next_free);
    }

    /// Links `tag` into the segment list right before the linked `next`.
    /// Reads only `next`: the segment before it and whether that is free
    /// come from `next`'s own record, and the segment before is written,
    /// never read, which in a large arena saves a cache miss (it is seldom
    /// in the cache) where `seg_insert_after` would read it.
    fn seg_insert_before(&mut self, next: TagPtr, tag: TagPtr) {
        debug_assert!(
            self.linked(next) && tag.start() <= next.start(),
            "inserting before a tag that is not linked or lies below the new one"
        );
        debug_assert!(
            tag.size() > 0 && self.quantum_multiples(tag.start(), tag.size()),
            "inserting an empty tag or one off the quantum"
        );
        self.link(
            next.seg_prev(),
            next.prev_free(),
            tag,
            Some(next),
            next.is_free(),
        );
    }

    /// Puts `tag` between `prev` and `next` in the segment list (`None`:
    /// at that end of the list), pointing them and it at each other, each
    /// link with whether the tag it points to is free (`prev_free` and
    /// `next_free` for the neighbours, which are written, not read).
    fn link(&mut self, prev: Link, prev_free: bool, tag: TagPtr, next: Link, next_free: bool) {
        debug_assert!(
            prev.is_none_or(|p| p.is_free() == prev_free)
                && next.is_none_or(|n| n.is_free() == next_free),
            "linking with a neighbour's freedom misstated"
        );
        tag.set_seg_prev(prev, prev_free);
        tag.set_seg_next(next, next_free);
        Self::point_at(prev, tag, next);
        if prev.is_none() {
            self.seg_head = Some(tag);
        }
        if next.is_none() {
            self.seg_tail = Some(tag);
        }
    }

    /// Tells a linked tag's neighbours whether it is free, after its class
    /// changed.
    fn mark_class(&mut self, tag: TagPtr) {
        Self::point_at(tag.seg_prev(), tag, tag.seg_next());
    }

    /// Points `prev` and `next` at `tag`, with whether it is free: writes
    /// their links to it whole, reads neither.
    #[inline(always)]
    fn point_at(prev: Link, tag: TagPtr, next: Link) {
        let free = tag.is_free();
        if let Some(prev) = prev {
            prev.set_seg_next(Some(tag), free);
        }
        if let Some(next) = next {
            next.set_seg_prev(Some(tag), free);
        }
    }

    /// Unlinks `tag` from the segment list and gives it back, moving the
    /// rotor to `heir` if it pointed at `tag`. Its neighbours learn whether
    /// each other is free from `tag`'s record: neither is read.
    fn seg_destroy(&mut self, tag: TagPtr, heir: Link) {
        debug_assert!(self.linked(tag), "destroying a tag that is not linked");
        debug_assert!(heir != Some(tag), "the rotor's heir is the tag destroyed");
        let prev = tag.seg_prev();
        let next = tag.seg_next();
        match prev {
            Some(prev) => prev.set_seg_next(next, tag.next_free()),
            None => self.seg_head = next,
        }
        match next {
            Some(next) => next.set_seg_prev(prev, tag.prev_free()),
            None => self.seg_tail = prev,
        }
        if self.rotor == Some(tag) {
            self.rotor = heir;
        }
        self.tags.give_back(tag);
    }

    /// Adds a span with one free segment covering it, and returns that
    /// segment.
    pub(super) fn insert_span(&mut self, base: u64, size: u64, imported: bool) -> Result<TagPtr> {
        debug_assert!(
            size > 0 && self.quantum_multiples(base, size) && base.checked_add(size).is_some(),
            "span is empty, off the quantum or past 2^64"
        );
        let end = base + size;
        // Spans do not overlap, so the new one overlaps some span exactly
        // when it overlaps the last one starting below its end.
        let (before, after) = self.span_tree.around(end);
        if before.is_some_and(|span| span.end() > base) {
            return Err(Error::new(ErrorKind::Overlap, "span overlaps an existing span").at(base));
        }
        let span = self.new_tag(base, size, Kind::Span { imported });
        let seg = self.new_tag(base, size, Kind::Free);
        self.span_tree.insert(span);
        // Segment list: the new span goes right before the next span's marker.
        let prev = match after {
            Some(after) => after.seg_prev(),
            None => self.seg_tail,
        };
        self.seg_insert_after(prev, span);
        self.seg_insert_after(Some(span), seg);
        self.free.insert(seg);
        self.free_segments += 1;
        self.spans += 1;
        self.imported_spans += u64::from(imported);
        self.bytes_total += size;
        self.bytes_free += size;
        Ok(seg)
    }

    /// Removes a span whose one free segment `seg` covers it.
    pub(super) fn remove_span(&mut self, span: TagPtr, seg: TagPtr) {
        debug_assert!(
            span.is_span() && seg.is_free() && seg.seg_prev() == Some(span),
            "removing a span that is not followed by a free segment"
        );
        debug_assert!(
            (seg.start(), seg.size()) == (span.start(), span.size()),
            "removing a span that is not wholly free"
        );
        debug_assert!(
            self.linked(seg),
            "removing a span whose segment is not linked"
        );
        self.free.remove(seg);
        self.free_segments -= 1;
        self.span_tree.remove(span);
        self.spans -= 1;
        self.imported_spans -= u64::from(span.kind() == (Kind::Span { imported: true }));
        self.bytes_total -= span.size();
        self.bytes_free -= span.size();
        self.seg_destroy(seg, None);
        self.seg_destroy(span, None);
    }

    /// Releases every span and stops importing from the source; returns
    /// whether it was importing, for the caller to tell the source (with
    /// the lock dropped).
    pub(super) fn detach(&mut self, release: impl FnMut(u64, u64)) -> bool {
        self.remove_all_spans(release);
        core::mem::replace(&mut self.attached, false)
    }

    /// Releases imported spans (through `release`, which gives them back to
    /// the source) and forgets every span and segment. Needs no new tag, so
    /// it works with none spare.
    fn remove_all_spans(&mut self, mut release: impl FnMut(u64, u64)) {
        self.span_tree.clear();
        // The segment list starts with a span marker, its segments follow.
        debug_assert!(
            self.seg_head.is_none_or(|head| head.is_span()),
            "segment list does not start with a span marker"
        );
        while let Some(span) = self.seg_head {
            let imported = span.kind() == (Kind::Span { imported: true });
            let (base, size) = (span.start(), span.size());
            while let Some(seg) = span.seg_next().filter(|t| !t.is_span()) {
                if seg.is_free() {
                    self.free.remove(seg);
                    self.free_segments -= 1;
                    self.bytes_free -= seg.size();
                } else {
                    self.hash.remove(seg);
                    self.bytes_alloc -= seg.size();
                }
                self.seg_destroy(seg, None);
            }
            self.spans -= 1;
            self.imported_spans -= u64::from(imported);
            self.bytes_total -= size;
            self.seg_destroy(span, None);
            if imported {
                self.releases += 1;
                release(base, size);
            }
        }
        self.rotor = None;
    }

    /// Gives a free segment a new extent, moving it to another freelist only
    /// when its size class changes.
    #[inline]
    fn reshape_free(&mut self, seg: TagPtr, start: u64, size: u64) {
        debug_assert!(seg.is_free(), "reshaping a segment that is not free");
        debug_assert!(
            size > 0 && self.quantum_multiples(start, size),
            "free segment reshaped to nothing or off the quantum"
        );
        let (from, to) = (class(seg.size()), class(size));
        if from == to {
            seg.set_start(start);
            seg.set_size(size);
        } else {
            self.free.remove_from(seg, from);
            seg.set_start(start);
            seg.set_size(size);
            self.free.insert_in(seg, to);
        }
    }

    /// Allocates `[addr, addr + size)` out of the free segment `seg`, and
    /// returns the allocated segment.
    #[inline]
    pub(super) fn carve(&mut self, seg: TagPtr, addr: u64, size: u64, by: AllocBy) -> TagPtr {
        let (start, end) = (seg.start(), seg.end());
        debug_assert!(seg.is_free(), "carving a segment that is not free");
        debug_assert!(
            size > 0
                && self.quantum_multiples(addr, size)
                && addr >= start
                && addr.checked_add(size).is_some_and(|stop| stop <= end),
            "allocation is empty, off the quantum or outside its segment"
        );
        debug_assert!(
            self.linked(seg) && self.tiles(seg),
            "carving a segment that is not linked or not in its span"
        );
        let taken = if addr == start && addr + size < end {
            // The common case: the free remainder keeps the segment's tag,
            // and usually its place on its freelist, so only the new tag and
            // the segment before it are touched.
            let taken = self.new_tag(addr, size, Kind::Alloc(by));
            self.seg_insert_before(seg, taken);
            self.reshape_free(seg, addr + size, end - addr - size);
            if self.rotor == Some(seg) {
                self.rotor = Some(taken);
            }
            taken
        } else {
            self.free.remove(seg);
            self.free_segments -= 1;
            if addr > start {
                let lead = self.new_tag(start, addr - start, Kind::Free);
                self.seg_insert_before(seg, lead);
                self.free.insert(lead);
                self.free_segments += 1;
                if self.rotor == Some(seg) {
                    self.rotor = Some(lead);
                }
            }
            if addr + size < end {
                let tail = self.new_tag(addr + size, end - addr - size, Kind::Free);
                self.seg_insert_after(Some(seg), tail);
                self.free.insert(tail);
                self.free_segments += 1;
            }
            seg.set_start(addr);
            seg.set_size(size);
            seg.set_kind(Kind::Alloc(by));
            self.mark_class(seg);
            seg
        };
        self.hash.insert(taken);
        self.bytes_free -= size;
        self.bytes_alloc += size;
        taken
    }

    /// Frees an allocated segment (already checked): a free neighbour
    /// absorbs it (so the tags that change are the ones already read), and
    /// when its span is imported and now wholly free the span is removed and
    /// returned for release.
    pub(super) fn free_segment(&mut self, found: Found) -> Option<(u64, u64)> {
        let seg = found.seg;
        debug_assert!(
            matches!(seg.kind(), Kind::Alloc(_)),
            "freeing a segment that is not allocated"
        );
        debug_assert!(
            self.quantum_multiples(seg.start(), seg.size()),
            "freeing a segment off the quantum"
        );
        debug_assert!(
            self.linked(seg) && self.tiles(seg),
            "freeing a segment that is not linked or not in its span"
        );
        self.hash.take(found);
        let size = seg.size();
        self.bytes_alloc -= size;
        self.bytes_free += size;
        // Span markers separate spans in the list, so a free neighbour in
        // the list is a neighbour inside the same span. The segment's own
        // record says which neighbours are free: an allocated one is not
        // read at all.
        let prev = seg.seg_prev().filter(|_| seg.prev_free());
        let next = seg.seg_next().filter(|_| seg.next_free());
        let merged = match (prev, next) {
            (None, None) => {
                seg.set_kind(Kind::Free);
                self.free.insert(seg);
                self.free_segments += 1;
                self.mark_class(seg);
                seg
            }
            (Some(prev), None) => {
                self.reshape_free(prev, prev.start(), prev.size() + size);
                self.seg_destroy(seg, Some(prev));
                prev
            }
            (None, Some(next)) => {
                self.reshape_free(next, seg.start(), next.size() + size);
                self.seg_destroy(seg, Some(next));
                next
            }
            (Some(prev), Some(next)) => {
                self.free.remove(next);
                self.free_segments -= 1;
                self.reshape_free(prev, prev.start(), prev.size() + size + next.size());
                self.seg_destroy(seg, Some(prev));
                self.seg_destroy(next, Some(prev));
                prev
            }
        };
        // Only an imported span goes back; with none, the tag before the
        // merged segment need not be read at all.
        if self.imported_spans == 0 {
            return None;
        }
        let span = merged.seg_prev()?;
        if span.kind() == (Kind::Span { imported: true }) && span.size() == merged.size() {
            let whole = (span.start(), span.size());
            self.remove_span(span, merged);
            return Some(whole);
        }
        None
    }
}
