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
use core::ptr::NonNull;

use crate::meta::{META_PAGE, MetaSource};

/// Who allocated a segment, so that it is freed by the matching call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocBy {
    /// `alloc`.
    Alloc,
    /// `xalloc`.
    Xalloc,
    /// A child arena's import through [`crate::Source`].
    Import,
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

/// A boundary tag.
///
/// `seg_prev`/`seg_next` link every span marker and segment in address
/// order. `list_prev`/`list_next` link a free segment into its freelist, an
/// allocated segment into its hash chain, and a spare tag into the arena's
/// stock; a span marker's are its lower and higher children in the arena's
/// span tree.
pub(crate) struct Tag {
    start: u64,
    size: u64,
    seg_prev: Link,
    seg_next: Link,
    list_prev: Link,
    list_next: Link,
    kind: Kind,
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
    tag_field!(seg_prev, set_seg_prev, Link);
    tag_field!(seg_next, set_seg_next, Link);
    tag_field!(list_prev, set_list_prev, Link);
    tag_field!(list_next, set_list_next, Link);
    tag_field!(kind, set_kind, Kind);

    /// A span marker's child in the span tree whose subtree holds the
    /// spans below it (kept in `list_prev`).
    #[inline(always)]
    pub(crate) fn lower(self) -> Link {
        self.list_prev()
    }

    #[inline(always)]
    pub(crate) fn set_lower(self, child: Link) {
        self.set_list_prev(child)
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
        self.kind() == Kind::Free
    }

    /// Whether the tag is a span marker.
    #[inline(always)]
    pub(crate) fn is_span(self) -> bool {
        matches!(self.kind(), Kind::Span { .. })
    }

    /// Writes a whole fresh tag into the slot.
    fn init(self, start: u64, size: u64, kind: Kind) {
        // SAFETY: the slot is owned by the caller (a spare tag of the arena
        // whose lock is held, or a slot being carved from a new page); writing
        // a whole value never reads what was there.
        unsafe {
            self.0.as_ptr().write(Tag {
                start,
                size,
                seg_prev: None,
                seg_next: None,
                list_prev: None,
                list_next: None,
                kind,
            })
        }
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
    /// `page` is a [`META_PAGE`]-byte, suitably aligned block the arena now owns.
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

/// Whether the meta page layout holds: a page keeps a record and tags.
const _: () = assert!(TAGS_PER_PAGE >= 8 && size_of::<Tag>() <= 64);
