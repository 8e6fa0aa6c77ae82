//! Boundary tags: the records that describe spans and segments, and where
//! an arena gets them without a heap.
//!
//! A tag lives in one of two places: the static pool every arena starts
//! from, or a page its owner's [`MetaSource`] handed over. Tags are linked
//! by raw pointers, so an arena never points into itself and may be moved;
//! every tag an arena links to is owned by that arena and only touched with
//! its lock held.

use core::cell::UnsafeCell;
use core::mem::{MaybeUninit, size_of};
use core::num::NonZeroU32;
use core::ptr::NonNull;

use crate::meta::{META_PAGE, MetaPages, MetaSource};

/// Who imports from a [`Source`](crate::Source): an opaque identity passed with every
/// [`Source::import`](crate::Source::import) and [`Source::release`](crate::Source::release).
///
/// An arena mints its own when it is created and shows it to its source
/// alone, so no other caller can release the spans it imported. Identities
/// come from one counter of 2^32 - 1 values shared by the whole program;
/// they repeat only after that many have been minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Importer(NonZeroU32);

/// The last importer identity minted. A plain static (not a `loom` atomic):
/// like the static tag pool, it belongs to no one run of a model.
static IMPORTERS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

impl Importer {
    /// A fresh identity, unlike any other minted (until the counter wraps),
    /// for a caller that imports from a source itself.
    pub fn new() -> Self {
        loop {
            let id = IMPORTERS
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed)
                .wrapping_add(1);
            // Zero comes round once in 2^32 identities: skip it.
            if let Some(id) = NonZeroU32::new(id) {
                return Importer(id);
            }
        }
    }
}

impl Default for Importer {
    /// A fresh identity, as [`Importer::new`].
    fn default() -> Self {
        Importer::new()
    }
}

/// Who allocated a segment, so that it is freed by the matching call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocBy {
    /// `alloc`.
    Alloc,
    /// `xalloc`.
    Xalloc,
    /// An import through [`crate::Source`], by the importer named: only
    /// it may release the span.
    Import(Importer),
    /// A slab of an [`crate::ObjectCache`].
    Cache,
    /// A slab of the arena's own quantum caches.
    QCache,
}

/// What a tag describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A span marker: `[start, start + size)` was added or imported.
    Span { imported: bool },
    /// A free segment, on a freelist.
    Free,
    /// An allocated segment, in the hash.
    Alloc(AllocBy),
}

/// A boundary tag: 48 bytes, aligned to 16 (on 64-bit targets; on 32-bit
/// ones the links are narrower and the tag pads to 48).
///
/// `seg_prev`/`seg_next` link every span marker and segment in address
/// order. `list_prev`/`list_next` link a free segment into its freelist and
/// a spare tag into the arena's stock; a span marker's are its lower and
/// higher children in the arena's span tree; an allocated segment chains
/// through `list_next` in the allocated-segment hash.
///
/// Tags are aligned to 16 bytes, so the low bits of every link are zero,
/// and two facts live there at no cost in bytes:
/// - the lowest bit of `seg_prev` and of `seg_next` says whether the tag
///   it points to is a free segment. A free reads the tag of the segment it
///   frees and learns from it which neighbours it merges with; it reads a
///   neighbour only to merge with it, never to find out that it is
///   allocated (in a large arena a neighbour is seldom in the cache). Every
///   change of a segment's class writes these bits into its neighbours
///   without reading them: the bit is the whole of what the word holds
///   besides the link, so the word is written whole;
/// - the two lowest bits of the `list_prev` word hold the tag's own class
///   (free, allocated, span, imported span). An allocated segment is on no
///   freelist, so the rest of its word holds who allocated it ([`AllocBy`]
///   and an importer's identity). Freelists write a free segment's word
///   whole (its class is zero), the span tree keeps a marker's class.
#[repr(C, align(16))]
pub(crate) struct Tag {
    start: u64,
    /// The previous tag's address, its lowest bit whether that is free.
    seg_prev_word: usize,
    size: u64,
    /// The next tag's address, its lowest bit whether that is free.
    seg_next_word: usize,
    /// The class in the two lowest bits; above them a link (free segments,
    /// span markers) or an allocated segment's [`AllocBy`] (see
    /// [`encode_by`]).
    list_prev_class: u64,
    list_next: Link,
}

/// The class bits of `list_prev_class`.
const CLASS_MASK: u64 = 0b11;
const CLASS_FREE: u64 = 0;
const CLASS_ALLOC: u64 = 1;
const CLASS_SPAN: u64 = 2;
const CLASS_SPAN_IMPORTED: u64 = 3;

/// The bit of `seg_prev` and `seg_next` that says the tag linked is free.
const NEIGHBOUR_FREE: usize = 1;

/// The bits of a link word that are not the address (tags are aligned to
/// 16, so four bits are spare).
const LINK_BITS: usize = 0b1111;

/// An allocated segment's [`AllocBy`] as its `list_prev_class` word, above
/// the class: the variant in bits 2 to 7, an importer's identity in the
/// high half.
#[inline(always)]
fn encode_by(by: AllocBy) -> u64 {
    let variant = match by {
        AllocBy::Alloc => 0,
        AllocBy::Xalloc => 1,
        AllocBy::Cache => 2,
        AllocBy::QCache => 3,
        AllocBy::Import(importer) => 4 | (u64::from(importer.0.get()) << 30),
    };
    (variant << 2) | CLASS_ALLOC
}

/// The [`AllocBy`] [`encode_by`] wrote.
#[inline(always)]
fn decode_by(word: u64) -> AllocBy {
    match (word >> 2) & 0x3f {
        0 => AllocBy::Alloc,
        1 => AllocBy::Xalloc,
        2 => AllocBy::Cache,
        3 => AllocBy::QCache,
        // Only `encode_by` writes the word of an allocated segment, and it
        // writes a non-zero identity with 4.
        _ => match NonZeroU32::new((word >> 32) as u32) {
            Some(id) => AllocBy::Import(Importer(id)),
            None => AllocBy::Alloc,
        },
    }
}

/// A link as the bits stored in a tag (none is zero).
#[inline(always)]
fn link_bits(link: Link) -> usize {
    link.map_or(0, |tag| tag.addr())
}

/// The link stored as `bits` (flag bits masked off by the caller).
#[inline(always)]
fn bits_link(bits: usize) -> Link {
    NonNull::new(bits as *mut Tag).map(TagPtr)
}

/// A neighbour link and whether the neighbour is free, as one word.
#[inline(always)]
fn neighbour_word(link: Link, free: bool) -> usize {
    link_bits(link) | usize::from(free)
}

/// A link to a tag, or none.
pub(crate) type Link = Option<TagPtr>;

/// A pointer to a tag owned by an arena.
///
/// Its accessors read and write one field through the raw pointer and never
/// hold a reference, so two `TagPtr`s to the same tag cannot alias a `&mut`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TagPtr(NonNull<Tag>);

macro_rules! tag_field {
    ($get:ident, $set:ident, $ty:ty) => {
        #[inline(always)]
        pub(crate) fn $get(self) -> $ty {
            // SAFETY: a TagPtr only exists inside the arena that owns the tag,
            // which keeps the tag's memory alive, and is only dereferenced with
            // that arena's lock held, so no other thread touches the field.
            unsafe { (*self.0.as_ptr()).$get }
        }

        #[inline(always)]
        pub(crate) fn $set(self, value: $ty) {
            // SAFETY: as for the getter.
            unsafe { (*self.0.as_ptr()).$get = value }
        }
    };
}

impl TagPtr {
    tag_field!(start, set_start, u64);
    tag_field!(size, set_size, u64);
    tag_field!(list_next, set_list_next, Link);
    tag_field!(seg_prev_word, set_seg_prev_word, usize);
    tag_field!(seg_next_word, set_seg_next_word, usize);
    tag_field!(list_prev_class, set_list_prev_class, u64);

    #[inline(always)]
    fn class(self) -> u64 {
        self.list_prev_class() & CLASS_MASK
    }

    /// The previous tag in address order.
    #[inline(always)]
    pub(crate) fn seg_prev(self) -> Link {
        bits_link(self.seg_prev_word() & !LINK_BITS)
    }

    /// Whether the previous tag in address order is a free segment, as
    /// this tag records it (read without reading that tag).
    #[inline(always)]
    pub(crate) fn prev_free(self) -> bool {
        self.seg_prev_word() & NEIGHBOUR_FREE != 0
    }

    /// Links the previous tag, recording whether it is free. Writes the
    /// word whole: reads nothing.
    #[inline(always)]
    pub(crate) fn set_seg_prev(self, link: Link, free: bool) {
        self.set_seg_prev_word(neighbour_word(link, free));
    }

    /// The next tag in address order.
    #[inline(always)]
    pub(crate) fn seg_next(self) -> Link {
        bits_link(self.seg_next_word() & !LINK_BITS)
    }

    /// Whether the next tag in address order is a free segment, as this
    /// tag records it.
    #[inline(always)]
    pub(crate) fn next_free(self) -> bool {
        self.seg_next_word() & NEIGHBOUR_FREE != 0
    }

    /// Links the next tag, recording whether it is free. Reads nothing.
    #[inline(always)]
    pub(crate) fn set_seg_next(self, link: Link, free: bool) {
        self.set_seg_next_word(neighbour_word(link, free));
    }

    /// The previous tag on a free segment's list, or a span marker's lower
    /// child; an allocated segment's word is its [`AllocBy`] instead.
    #[inline(always)]
    pub(crate) fn list_prev(self) -> Link {
        bits_link((self.list_prev_class() & !CLASS_MASK) as usize)
    }

    /// Sets a free segment's previous tag on its freelist. Writes the word
    /// whole, with the class of a free segment, and reads nothing: only for
    /// a tag that is free (or being made free).
    #[inline(always)]
    pub(crate) fn set_list_prev(self, link: Link) {
        self.set_list_prev_class(link_bits(link) as u64 | CLASS_FREE);
    }

    /// What the tag describes.
    #[inline(always)]
    pub(crate) fn kind(self) -> Kind {
        let word = self.list_prev_class();
        match word & CLASS_MASK {
            CLASS_FREE => Kind::Free,
            CLASS_SPAN => Kind::Span { imported: false },
            CLASS_SPAN_IMPORTED => Kind::Span { imported: true },
            _ => Kind::Alloc(decode_by(word)),
        }
    }

    /// Makes the tag describe `kind`. Its own word alone: a linked tag's
    /// neighbours learn of a change between free and not free from the
    /// arena (`Inner::mark_class`). An allocated segment's [`AllocBy`]
    /// takes its `list_prev` word, so a tag leaves its freelist first.
    #[inline(always)]
    pub(crate) fn set_kind(self, kind: Kind) {
        let link = self.list_prev_class() & !CLASS_MASK;
        let word = match kind {
            Kind::Free => link | CLASS_FREE,
            Kind::Span { imported: false } => link | CLASS_SPAN,
            Kind::Span { imported: true } => link | CLASS_SPAN_IMPORTED,
            Kind::Alloc(by) => encode_by(by),
        };
        self.set_list_prev_class(word);
    }

    /// A span marker's child in the span tree whose subtree holds the
    /// spans below it (kept in `list_prev`).
    #[inline(always)]
    pub(crate) fn lower(self) -> Link {
        self.list_prev()
    }

    /// Sets a span marker's lower child, keeping its class.
    #[inline(always)]
    pub(crate) fn set_lower(self, child: Link) {
        self.set_list_prev_class(link_bits(child) as u64 | self.class());
    }

    /// A span marker's child in the span tree whose subtree holds the
    /// spans above it (kept in `list_next`).
    #[inline(always)]
    pub(crate) fn higher(self) -> Link {
        self.list_next()
    }

    #[inline(always)]
    pub(crate) fn set_higher(self, child: Link) {
        self.set_list_next(child)
    }

    /// One past the last integer the tag covers (spans never wrap, so this
    /// cannot overflow for a linked tag).
    #[inline(always)]
    pub(crate) fn end(self) -> u64 {
        self.start() + self.size()
    }

    /// Whether the tag is a free segment.
    #[inline(always)]
    pub(crate) fn is_free(self) -> bool {
        self.class() == CLASS_FREE
    }

    /// Whether the tag is a span marker.
    #[inline(always)]
    pub(crate) fn is_span(self) -> bool {
        self.class() >= CLASS_SPAN
    }

    /// Writes a whole fresh tag into the slot.
    fn init(self, start: u64, size: u64, kind: Kind) {
        // SAFETY: the slot is owned by the caller (a spare tag of the arena
        // whose lock is held, or a slot being carved from a new page); writing
        // a whole value never reads what was there.
        unsafe {
            self.0.as_ptr().write(Tag {
                start,
                seg_prev_word: 0,
                size,
                seg_next_word: 0,
                list_prev_class: CLASS_FREE,
                list_next: None,
            })
        }
        self.set_kind(kind);
    }

    fn addr(self) -> usize {
        self.0.as_ptr() as usize
    }
}

/// Tags in the static pool shared by every arena.
pub const STATIC_TAGS: usize = 2048;

/// How many static tags an arena takes at a time.
const STATIC_BATCH: usize = 16;

/// Tags one meta page holds once its first slot is kept as the page record.
pub(crate) const TAGS_PER_PAGE: usize = META_PAGE / size_of::<Tag>() - 1;

struct StaticSlots([UnsafeCell<MaybeUninit<Tag>>; STATIC_TAGS]);

// SAFETY: a slot is handed to exactly one arena at a time through the
// `STATIC_POOL` lock, and then touched only under that arena's lock.
unsafe impl Sync for StaticSlots {}

static STATIC_SLOTS: StaticSlots =
    StaticSlots([const { UnsafeCell::new(MaybeUninit::uninit()) }; STATIC_TAGS]);

/// Bookkeeping of the static pool: slots never yet handed out begin at
/// `fresh`; returned ones are chained through `list_next`.
struct StaticPool {
    fresh: usize,
    returned: Link,
}

// SAFETY: the returned chain only links static slots, owned by the pool
// while they are on it.
unsafe impl Send for StaticPool {}

static STATIC_POOL: spin::Mutex<StaticPool> = spin::Mutex::new(StaticPool {
    fresh: 0,
    returned: None,
});

fn static_range() -> (usize, usize) {
    let base = STATIC_SLOTS.0.as_ptr() as usize;
    (base, base + STATIC_TAGS * size_of::<Tag>())
}

fn is_static(tag: TagPtr) -> bool {
    let (lo, hi) = static_range();
    (lo..hi).contains(&tag.addr())
}

/// Takes up to `STATIC_BATCH` tags from the static pool, chained through
/// `list_next`, with their count.
pub(crate) fn take_static_batch() -> (Link, usize) {
    let mut pool = STATIC_POOL.lock();
    let mut head: Link = None;
    let mut count = 0;
    while count < STATIC_BATCH {
        let tag = if let Some(tag) = pool.returned {
            pool.returned = tag.list_next();
            tag
        } else if pool.fresh < STATIC_TAGS {
            let slot = STATIC_SLOTS.0[pool.fresh].get().cast::<Tag>();
            pool.fresh += 1;
            match NonNull::new(slot) {
                Some(p) => TagPtr(p),
                None => break,
            }
        } else {
            break;
        };
        tag.init(0, 0, Kind::Free);
        tag.set_list_next(head);
        head = Some(tag);
        count += 1;
    }
    (head, count)
}

/// Static tags not handed to any arena right now.
pub fn static_tags_available() -> usize {
    let pool = STATIC_POOL.lock();
    let mut count = STATIC_TAGS - pool.fresh;
    let mut cursor = pool.returned;
    while let Some(tag) = cursor {
        count += 1;
        cursor = tag.list_next();
    }
    count
}

/// An arena's spare tags and the meta pages it owns.
pub(crate) struct TagStock {
    /// Spare tags, chained through `list_next`.
    spare: Link,
    /// How many spare tags there are.
    pub(crate) spare_count: usize,
    /// Every tag the arena owns, spare or linked.
    pub(crate) owned: usize,
    /// Page records (the first slot of each meta page), chained through
    /// `list_next`.
    pages: Link,
    /// How many meta pages the arena owns.
    pub(crate) page_count: usize,
}

impl TagStock {
    pub(crate) const fn new() -> Self {
        TagStock {
            spare: None,
            spare_count: 0,
            owned: 0,
            pages: None,
            page_count: 0,
        }
    }

    /// Takes a spare tag and initialises it. The caller reserved enough
    /// tags before the operation began, so this finds one.
    pub(crate) fn take(&mut self, start: u64, size: u64, kind: Kind) -> Option<TagPtr> {
        let tag = self.spare?;
        self.spare = tag.list_next();
        self.spare_count -= 1;
        tag.init(start, size, kind);
        Some(tag)
    }

    /// Returns a tag the arena no longer links anywhere.
    pub(crate) fn give_back(&mut self, tag: TagPtr) {
        tag.set_list_next(self.spare);
        self.spare = Some(tag);
        self.spare_count += 1;
    }

    /// Adds a batch of static tags chained through `list_next`.
    pub(crate) fn add_batch(&mut self, mut batch: Link, count: usize) {
        while let Some(tag) = batch {
            batch = tag.list_next();
            self.give_back(tag);
        }
        self.owned += count;
    }

    /// Carves a fresh meta page into tags.
    ///
    /// # Safety
    /// `page` is a [`META_PAGE`]-byte block aligned to [`META_PAGE`] (as a
    /// [`MetaSource`] hands out) that the arena now owns.
    pub(crate) unsafe fn add_page(&mut self, page: NonNull<u8>) {
        let first = page.cast::<Tag>();
        let record = TagPtr(first);
        record.init(0, 0, Kind::Free);
        record.set_list_next(self.pages);
        self.pages = Some(record);
        self.page_count += 1;
        for i in 1..=TAGS_PER_PAGE {
            // SAFETY: slot i lies inside the page: (TAGS_PER_PAGE + 1) tags fit.
            let slot = unsafe { first.add(i) };
            let tag = TagPtr(slot);
            tag.init(0, 0, Kind::Free);
            self.give_back(tag);
        }
        self.owned += TAGS_PER_PAGE;
    }

    /// Gives every static tag back to the static pool and every meta page to
    /// `meta`. The arena links no tag any more: all are spare.
    pub(crate) fn dispose(&mut self, meta: Option<&dyn MetaSource>) {
        let mut pool = STATIC_POOL.lock();
        let mut spare = self.spare.take();
        while let Some(tag) = spare {
            spare = tag.list_next();
            if is_static(tag) {
                tag.set_list_next(pool.returned);
                pool.returned = Some(tag);
            }
        }
        drop(pool);
        let mut pages = self.pages.take();
        while let Some(record) = pages {
            pages = record.list_next();
            if let Some(meta) = meta {
                // SAFETY: a page record is the first slot of one page this
                // arena got from `meta`, and none of its tags is linked any more.
                unsafe { meta.free_pages(record.0.cast::<u8>(), 1) };
            }
        }
        *self = TagStock::new();
    }

    /// Counts each meta page's spare tags into its record (`size`) and
    /// clears its mark (`start`), the first step of emptying pages at a
    /// reap. A tag finds its page by masking its address: pages are
    /// [`META_PAGE`]-aligned, as a [`MetaSource`] promises; should one not
    /// be, this returns false and no page may be emptied.
    pub(crate) fn count_spare_per_page(&self) -> bool {
        let mut page = self.pages;
        while let Some(record) = page {
            if !record.addr().is_multiple_of(META_PAGE) {
                return false;
            }
            record.set_start(MARK_NONE);
            record.set_size(0);
            page = record.list_next();
        }
        let mut cursor = self.spare;
        while let Some(tag) = cursor {
            if let Some(record) = page_record(tag) {
                record.set_size(record.size() + 1);
            }
            cursor = tag.list_next();
        }
        true
    }

    /// Keeps the page holding `tag` (a span marker, which is never moved)
    /// when pages are emptied; after [`TagStock::count_spare_per_page`].
    pub(crate) fn pin(&self, tag: TagPtr) {
        if let Some(record) = page_record(tag) {
            record.set_start(MARK_PINNED);
        }
    }

    /// Picks the meta pages to empty, after [`TagStock::count_spare_per_page`]
    /// and [`TagStock::pin`]: the pages kept are the pinned ones and then
    /// those with the most tags in use, just enough to hold every tag in
    /// use on a page plus `keep` spare ones. The others leave the stock
    /// with their spare tags; the caller moves their linked tags (those of
    /// non-zero size) into spare tags of the kept pages, then calls
    /// [`TagStock::finish_emptying`]. None when no page would leave.
    /// Allocates nothing; O(spare tags + pages).
    pub(crate) fn plan_emptying(&mut self, keep: usize) -> Option<Emptying> {
        const C: usize = TAGS_PER_PAGE;
        let mut unpinned_by_use = [0usize; C + 1];
        let (mut in_use, mut pinned) = (0usize, 0usize);
        let mut page = self.pages;
        while let Some(record) = page {
            let used = C.checked_sub(record.size() as usize)?;
            in_use += used;
            if record.start() == MARK_PINNED {
                pinned += 1;
            } else {
                unpinned_by_use[used] += 1;
            }
            page = record.list_next();
        }
        // Pages whose capacity holds what is in use plus `keep`.
        let wanted = (in_use + keep).div_ceil(C);
        let mut more = wanted.saturating_sub(pinned);
        let mut threshold = C + 1; // unpinned pages with this use or more stay
        let mut at_threshold = 0; // how many of those with exactly `threshold`
        for used in (0..=C).rev() {
            if more == 0 {
                break;
            }
            threshold = used;
            at_threshold = unpinned_by_use[used].min(more);
            more -= at_threshold;
        }
        let mut emptying = Emptying {
            head: None,
            count: 0,
        };
        let (mut prev, mut page): (Link, Link) = (None, self.pages);
        while let Some(record) = page {
            page = record.list_next();
            let used = C - record.size() as usize;
            let stays = record.start() == MARK_PINNED
                || used > threshold
                || (used == threshold && at_threshold > 0 && {
                    at_threshold -= 1;
                    true
                });
            if stays {
                prev = Some(record);
                continue;
            }
            match prev {
                Some(prev) => prev.set_list_next(page),
                None => self.pages = page,
            }
            record.set_start(MARK_LEAVING);
            record.set_list_next(emptying.head);
            emptying.head = Some(record);
            emptying.count += 1;
        }
        if emptying.count == 0 {
            return None;
        }
        // The leaving pages' spare tags leave the chain, marked by size 0.
        let (mut head, mut tail): (Link, Link) = (None, None);
        let mut cursor = self.spare;
        while let Some(tag) = cursor {
            cursor = tag.list_next();
            if page_record(tag).is_some_and(|record| record.start() == MARK_LEAVING) {
                tag.set_size(0);
                self.spare_count -= 1;
                continue;
            }
            tag.set_list_next(None);
            match tail {
                Some(tail) => tail.set_list_next(Some(tag)),
                None => head = Some(tag),
            }
            tail = Some(tag);
        }
        self.spare = head;
        Some(emptying)
    }

    /// Ends [`TagStock::plan_emptying`]: every tag of the leaving pages has
    /// been moved or was spare, so the pages go into `out`.
    pub(crate) fn finish_emptying(&mut self, emptying: Emptying, out: &mut MetaPages) {
        self.owned -= emptying.count * TAGS_PER_PAGE;
        self.page_count -= emptying.count;
        let mut leaving = emptying.head;
        while let Some(record) = leaving {
            leaving = record.list_next();
            // SAFETY: the record is the first slot of a page the arena got
            // from its meta source in one call of one page, and none of the
            // page's tags is linked or spare any more.
            unsafe { out.push(record.0.cast::<u8>(), 1) };
        }
    }

    /// Walks the spare chain and counts it (for the checker), stopping at
    /// `limit` links so a corrupt cycle cannot hang it.
    pub(crate) fn count_spare(&self, limit: usize) -> usize {
        let mut count = 0;
        let mut cursor = self.spare;
        while let Some(tag) = cursor {
            count += 1;
            if count > limit {
                break;
            }
            cursor = tag.list_next();
        }
        count
    }
}

/// Page record marks while pages are emptied (in the record's `start`).
const MARK_NONE: u64 = 0;
const MARK_PINNED: u64 = 1;
const MARK_LEAVING: u64 = 2;

/// Meta pages leaving an arena's stock at a reap, chained through their
/// records' `list_next` (see [`TagStock::plan_emptying`]).
pub(crate) struct Emptying {
    head: Link,
    count: usize,
}

impl Emptying {
    /// The first leaving page's record.
    pub(crate) fn first(&self) -> Link {
        self.head
    }
}

/// The next leaving page's record after `record`.
pub(crate) fn next_leaving(record: TagPtr) -> Link {
    record.list_next()
}

/// Slot `i` (1 to [`TAGS_PER_PAGE`]) of the page whose record is `record`.
pub(crate) fn page_slot(record: TagPtr, i: usize) -> TagPtr {
    debug_assert!((1..=TAGS_PER_PAGE).contains(&i));
    // SAFETY: slot i lies inside the record's page, which holds the record
    // and TAGS_PER_PAGE tags after it; NonNull since the page's is.
    TagPtr(unsafe { NonNull::new_unchecked(record.0.as_ptr().add(i)) })
}

/// The record of the meta page a tag lies in; none for a static tag.
fn page_record(tag: TagPtr) -> Option<TagPtr> {
    if is_static(tag) {
        return None;
    }
    let base = tag.addr() & !(META_PAGE - 1);
    NonNull::new(base as *mut Tag).map(TagPtr)
}

/// Whether the meta page layout holds: a page keeps a record and tags.
const _: () = assert!(TAGS_PER_PAGE >= 8 && size_of::<Tag>() <= 64);

/// What a tag describes costs no room: 48 bytes a tag, the class and the
/// neighbours' freedom in spare bits of links, aligned so that those bits
/// are spare.
const _: () = assert!(size_of::<Tag>() == 48 && core::mem::align_of::<Tag>() > LINK_BITS);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Budget, tag_stock};
    use crate::{Arena, ArenaConfig, ErrorKind, Policy};

    /// The spare chain, head first.
    fn spares(stock: &TagStock) -> Vec<TagPtr> {
        let mut out = Vec::new();
        let mut cursor = stock.spare;
        while let Some(tag) = cursor {
            out.push(tag);
            cursor = tag.list_next();
        }
        out
    }

    #[test]
    fn a_meta_page_is_carved_into_its_record_and_tags_per_page_tags() {
        assert_eq!(TAGS_PER_PAGE, META_PAGE / size_of::<Tag>() - 1);
        let meta = Budget::new(2);
        let mut stock = tag_stock(&meta, 2);
        assert_eq!(
            (stock.page_count, stock.owned, stock.spare_count),
            (2, 2 * TAGS_PER_PAGE, 2 * TAGS_PER_PAGE)
        );
        assert_eq!(stock.count_spare(usize::MAX), 2 * TAGS_PER_PAGE);
        let mut seen: Vec<usize> = spares(&stock).iter().map(|t| t.addr()).collect();
        for &addr in &seen {
            let record = page_record(TagPtr(NonNull::new(addr as *mut Tag).unwrap())).unwrap();
            assert!(
                record.addr().is_multiple_of(META_PAGE),
                "the record heads its page"
            );
            let slot = (addr - record.addr()) / size_of::<Tag>();
            assert!(
                (1..=TAGS_PER_PAGE).contains(&slot),
                "slot {slot} is a tag's, not the record's"
            );
            assert_eq!(page_slot(record, slot).addr(), addr);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 2 * TAGS_PER_PAGE, "no slot handed out twice");
        stock.dispose(Some(&meta));
        assert_eq!((meta.out(), stock.owned, stock.page_count), (0, 0, 0));
    }

    #[test]
    fn the_kind_shares_words_with_links_and_neither_disturbs_the_other() {
        assert_eq!((size_of::<Tag>(), core::mem::align_of::<Tag>()), (48, 16));
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let [a, b, c] = [0, 1, 2].map(|i| stock.take(i, 1, Kind::Free).unwrap());
        for tag in [a, b, c] {
            assert_eq!(tag.addr() % 16, 0, "links keep their low bits free");
        }
        let importers = [Importer(NonZeroU32::MIN), Importer(NonZeroU32::MAX)];
        let kinds = [
            Kind::Free,
            Kind::Span { imported: false },
            Kind::Span { imported: true },
            Kind::Alloc(AllocBy::Alloc),
            Kind::Alloc(AllocBy::Xalloc),
            Kind::Alloc(AllocBy::Cache),
            Kind::Alloc(AllocBy::QCache),
            Kind::Alloc(AllocBy::Import(importers[0])),
            Kind::Alloc(AllocBy::Import(importers[1])),
        ];
        for kind in kinds {
            // The kind survives the links being rewritten around it, and
            // each link keeps its neighbour's freedom.
            a.set_seg_prev(Some(b), true);
            a.set_kind(kind);
            assert_eq!(
                (a.kind(), a.seg_prev(), a.prev_free()),
                (kind, Some(b), true)
            );
            a.set_seg_prev(Some(c), false);
            a.set_seg_next(Some(b), true);
            a.set_list_next(Some(c));
            a.set_start(0x1000);
            a.set_size(0x2000);
            assert_eq!(a.kind(), kind, "{kind:?}");
            assert_eq!((a.prev_free(), a.next_free()), (false, true));
            a.set_seg_prev(None, false);
            assert_eq!((a.kind(), a.seg_prev()), (kind, None));
            assert_eq!(a.is_free(), kind == Kind::Free);
            assert_eq!(a.is_span(), matches!(kind, Kind::Span { .. }));
            // And the links survive the kind changing under them.
            a.set_seg_prev(Some(c), true);
            a.set_kind(Kind::Free);
            a.set_kind(kind);
            assert_eq!(
                (
                    a.seg_prev(),
                    a.prev_free(),
                    a.seg_next(),
                    a.next_free(),
                    a.list_next(),
                    a.start(),
                    a.end()
                ),
                (Some(c), true, Some(b), true, Some(c), 0x1000, 0x3000)
            );
        }
        // A free segment's list_prev is a link written with its class; a
        // span marker's lower child keeps the marker's class.
        a.set_kind(Kind::Alloc(AllocBy::Xalloc));
        a.set_list_prev(Some(b));
        assert_eq!((a.list_prev(), a.kind()), (Some(b), Kind::Free));
        let span = Kind::Span { imported: true };
        a.set_kind(span);
        a.set_lower(Some(c));
        assert_eq!(
            (a.list_prev(), a.lower(), a.kind()),
            (Some(c), Some(c), span)
        );
        for tag in [a, b, c] {
            stock.give_back(tag);
        }
        stock.dispose(Some(&meta));
    }

    #[test]
    fn spare_tags_are_taken_last_in_first_out_and_initialised() {
        let meta = Budget::new(1);
        let mut stock = tag_stock(&meta, 1);
        let a = stock.take(0x1000, 0x20, Kind::Free).unwrap();
        a.set_seg_next(Some(a), true);
        stock.give_back(a);
        let b = stock
            .take(0x2000, 0x40, Kind::Span { imported: true })
            .unwrap();
        assert_eq!(a, b, "the tag given back is the next one taken");
        assert_eq!((b.start(), b.size(), b.end()), (0x2000, 0x40, 0x2040));
        assert_eq!(b.kind(), Kind::Span { imported: true });
        assert!(b.is_span() && !b.is_free());
        assert_eq!(
            (b.seg_prev(), b.seg_next(), b.list_prev(), b.list_next()),
            (None, None, None, None),
            "a taken tag carries no old links"
        );
        assert!(!b.prev_free() && !b.next_free(), "nor old neighbour bits");
        let mut taken = vec![b];
        while let Some(tag) = stock.take(0, 1, Kind::Free) {
            taken.push(tag);
        }
        assert_eq!(taken.len(), TAGS_PER_PAGE);
        assert_eq!((stock.spare_count, stock.count_spare(usize::MAX)), (0, 0));
        assert_eq!(
            stock.take(0, 1, Kind::Free),
            None,
            "an empty stock has none"
        );
        assert_eq!(
            stock.owned, TAGS_PER_PAGE,
            "an empty stock still owns its tags"
        );
        for tag in taken {
            stock.give_back(tag);
        }
        assert_eq!(stock.spare_count, TAGS_PER_PAGE);
        stock.dispose(Some(&meta));
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn static_batches_come_from_the_static_pool_and_go_back_to_it() {
        let (batch, count) = take_static_batch();
        // Other tests share the pool, so it may be short, never over.
        assert!(count <= STATIC_BATCH);
        let mut stock = TagStock::new();
        stock.add_batch(batch, count);
        assert_eq!(
            (stock.owned, stock.spare_count, stock.page_count),
            (count, count, 0)
        );
        let tags = spares(&stock);
        assert_eq!(tags.len(), count);
        for &tag in &tags {
            assert!(is_static(tag));
            assert_eq!(page_record(tag), None, "a static tag is on no meta page");
        }
        let page = Budget::new(1);
        let mut paged = tag_stock(&page, 1);
        assert!(spares(&paged).iter().all(|&t| !is_static(t)));
        paged.dispose(Some(&page));
        // Static tags go to the pool, never to a meta source.
        stock.dispose(Some(&page));
        assert_eq!(page.out(), 0);
        assert_eq!((stock.owned, stock.spare_count), (0, 0));
        assert!(static_tags_available() <= STATIC_TAGS);
    }

    #[test]
    fn emptying_keeps_the_busiest_pages_and_the_pinned_ones() {
        let meta = Budget::new(3);
        let mut stock = tag_stock(&meta, 3);
        // The newest page's tags are taken first.
        let records: Vec<TagPtr> = {
            let mut out = Vec::new();
            let mut page = stock.pages;
            while let Some(record) = page {
                out.push(record);
                page = record.list_next();
            }
            out
        };
        let (newest, oldest) = (records[0], records[2]);
        let used: Vec<TagPtr> = (0..5)
            .map(|i| stock.take(i, 1, Kind::Free).unwrap())
            .collect();
        assert!(used.iter().all(|&t| page_record(t) == Some(newest)));
        // One page holds the five tags in use and four spare: two leave.
        assert!(stock.count_spare_per_page());
        assert_eq!(newest.size() as usize, TAGS_PER_PAGE - 5);
        assert_eq!(oldest.size() as usize, TAGS_PER_PAGE);
        let emptying = stock.plan_emptying(4).unwrap();
        assert_eq!(emptying.count, 2);
        assert_eq!(
            stock.spare_count,
            TAGS_PER_PAGE - 5,
            "the leaving pages' spares left too"
        );
        assert!(
            spares(&stock)
                .iter()
                .all(|&t| page_record(t) == Some(newest))
        );
        let mut out = MetaPages::new();
        stock.finish_emptying(emptying, &mut out);
        assert_eq!((stock.page_count, stock.owned), (1, TAGS_PER_PAGE));
        out.give_back(&meta);
        assert_eq!(meta.out(), 1);
        // With one page there is nothing to empty.
        assert!(stock.count_spare_per_page());
        assert!(stock.plan_emptying(0).is_none());
        for tag in used {
            stock.give_back(tag);
        }
        stock.dispose(Some(&meta));
        assert_eq!(meta.out(), 0);

        // A pinned page stays, though an unpinned one is busier.
        let mut stock = tag_stock(&meta, 2);
        let (busy, idle) = (
            stock.pages.unwrap(),
            stock.pages.unwrap().list_next().unwrap(),
        );
        let used: Vec<TagPtr> = (0..3)
            .map(|i| stock.take(i, 1, Kind::Free).unwrap())
            .collect();
        assert!(used.iter().all(|&t| page_record(t) == Some(busy)));
        assert!(stock.count_spare_per_page());
        stock.pin(page_slot(idle, 1));
        let emptying = stock.plan_emptying(0).unwrap();
        assert_eq!(
            emptying.first(),
            Some(busy),
            "the busy page leaves; its tags must move"
        );
        assert_eq!(next_leaving(busy), None);
        let mut out = MetaPages::new();
        stock.finish_emptying(emptying, &mut out);
        out.give_back(&meta);
        assert_eq!(meta.out(), 1);
        stock.dispose(Some(&meta));
        assert_eq!(meta.out(), 0);
    }

    #[test]
    fn an_arena_whose_meta_source_refuses_and_has_no_static_pool_changes_nothing() {
        let meta = Budget::new(0);
        let arena: Arena =
            Arena::create(ArenaConfig::new("dry", 1).meta(&meta).static_tags(false)).unwrap();
        assert_eq!(
            arena.add_span(0, 1 << 20).unwrap_err().kind(),
            ErrorKind::NoSpace
        );
        assert_eq!(
            arena.alloc(1, Policy::InstantFit).unwrap_err().kind(),
            ErrorKind::NoSpace
        );
        let mut segments = 0;
        arena.walk(|_| segments += 1);
        assert_eq!((segments, arena.size().total, meta.out()), (0, 0, 0));
        arena.check().unwrap();
        // A page later, the same call succeeds.
        meta.grant(1);
        arena.add_span(0, 1 << 20).unwrap();
        assert_eq!(arena.alloc(1, Policy::InstantFit).unwrap(), 0);
        assert_eq!(meta.out(), 1);
        arena.check().unwrap();
    }
}
