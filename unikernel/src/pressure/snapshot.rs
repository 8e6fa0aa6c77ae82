//! The snapshot of the kernel's memory taken before the first round, and
//! the comparison after each: every arena's segment list and figures,
//! every cache's, the pages backing the heap, and what is kept for reuse.

use core::fmt;
use core::sync::atomic::Ordering;

use vmem_core::{Arena, CacheStats, SegmentKind};

use super::{Failure, Outcome};
use crate::kmem::{self, HEAP, PAGES_MAPPED, PAGES_UNMAPPED};
use crate::layout::PAGE;
use crate::local;
use crate::paging::TABLE_FRAMES;
use crate::phys::{META_PAGES, phys};

/// Returns every cache's magazines and empty slabs: the heap's (to
/// `kmem_default`, which releases wholly free spans) first, then every
/// arena's (`kmem_va`'s quantum caches among them).
pub(super) fn reap() -> Outcome {
    if let Some(classes) = HEAP.classes() {
        classes.reap().map_err(|e| failure!("heap reap: {e}"))?;
        // Another CPU's held magazines are asked for: once every CPU has
        // answered, a second reap returns the slabs they emptied.
        local::settle()
            .map_err(|cpu| failure!("CPU {cpu} did not answer the heap reap's cross-call"))?;
        classes.reap().map_err(|e| failure!("heap reap: {e}"))?;
    }
    // The ranges `kmem_default` released and a shootdown holds back.
    kmem::purge();
    // Every arena's reap gives back its wholly spare tag pages; `phys`
    // last, as the others' pages go back into it.
    for arena in kmem::arenas().iter().rev() {
        arena
            .reap()
            .map_err(|e| failure!("{} reap: {e}", arena.name()))?;
    }
    Ok(())
}

/// The arena figures a snapshot keeps, in `ARENA_FIELDS` order.
const ARENA_FIELDS: [&str; 11] = [
    "bytes allocated",
    "bytes free",
    "bytes in spans",
    "bytes imported",
    "spans",
    "allocated segments",
    "free segments",
    "boundary tags",
    "spare boundary tags",
    "tag pages",
    "hash buckets",
];
/// From this field on, arena figures are metadata kept for reuse.
const ARENA_KEPT: usize = 7;

const CACHE_FIELDS: [&str; 8] = [
    "objects in use",
    "slabs",
    "empty slabs",
    "magazines",
    "full magazines in the depot",
    "empty magazines in the depot",
    "magazine size",
    "meta pages",
];
/// From this field on, cache figures are metadata kept for reuse.
const CACHE_KEPT: usize = 3;

/// The heap's size classes and `kmem_va`'s quantum caches.
pub(super) const CACHES: usize =
    vmem_core::SIZE_CLASSES.len() + vmem_core::QCACHE_MAX_QUANTA as usize;

/// Segments all arenas may have at once in a snapshot.
const SEGMENTS_MAX: usize = 32 * 1024;

/// The segment lists of the last snapshot, as (start, size, kind), in a
/// static so that taking a snapshot does not touch the heap it describes.
static SEGMENTS: spin::Mutex<[[u64; 3]; SEGMENTS_MAX]> = spin::Mutex::new([[0; 3]; SEGMENTS_MAX]);

#[derive(Clone, Copy, Default)]
pub(super) struct ArenaState {
    fields: [u64; 11],
    first: usize,
    pub(super) segments: usize,
}

/// What the kernel's memory looks like: every arena and cache, and the
/// pages the memory subsystem holds for itself.
#[derive(Clone, Copy)]
pub(super) struct Snapshot {
    pub(super) arenas: [ArenaState; 6],
    caches: [[u64; 8]; CACHES],
    /// Pages `BackedPages` has mapped and not unmapped.
    pub(super) backed: u64,
    tables: u64,
    meta: u64,
}

fn kind_code(kind: SegmentKind) -> u64 {
    match kind {
        SegmentKind::Span { imported: false } => 1,
        SegmentKind::Span { imported: true } => 2,
        SegmentKind::Free => 3,
        SegmentKind::Alloc => 4,
    }
}

fn kind_name(code: u64) -> &'static str {
    match code {
        1 => "span",
        2 => "imported span",
        3 => "free",
        _ => "allocated",
    }
}

fn arena_fields(arena: &Arena<'static>, imported: u64) -> [u64; 11] {
    let size = arena.size();
    let s = arena.stats();
    [
        size.alloc,
        size.free,
        size.total,
        imported,
        s.spans,
        s.alloc_segments,
        s.free_segments,
        s.tags,
        s.tags_spare,
        s.tag_pages,
        s.hash_buckets,
    ]
}

fn cache_fields(s: &CacheStats) -> [u64; 8] {
    [
        s.in_use,
        s.slabs,
        s.slabs_empty,
        s.magazines,
        s.depot_full,
        s.depot_empty,
        s.magazine_size,
        s.meta_pages,
    ]
}

/// The name of cache `index` in a snapshot.
struct CacheName(usize);

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let heap = vmem_core::SIZE_CLASSES.len();
        match vmem_core::SIZE_CLASSES.get(self.0) {
            Some(size) => write!(f, "kmem_alloc_{size}"),
            None => write!(
                f,
                "kmem_va qcache {}K",
                (self.0 - heap + 1) as u64 * PAGE / 1024
            ),
        }
    }
}

fn caches(mut visit: impl FnMut(usize, &CacheStats)) {
    let mut index = 0;
    if let Some(classes) = HEAP.classes() {
        for cache in classes.caches() {
            visit(index, &cache.stats());
            index += 1;
        }
    }
    index = vmem_core::SIZE_CLASSES.len();
    for (_, s) in kmem::kmem_va_qcaches().stats() {
        visit(index, &s);
        index += 1;
    }
}

fn globals() -> (u64, u64, u64) {
    (
        PAGES_MAPPED.load(Ordering::Relaxed) - PAGES_UNMAPPED.load(Ordering::Relaxed),
        TABLE_FRAMES.load(Ordering::Relaxed),
        META_PAGES.load(Ordering::Relaxed),
    )
}

/// Takes a snapshot, keeping the segment lists in `SEGMENTS`.
pub(super) fn snapshot() -> Outcome<Snapshot> {
    let mut buf = SEGMENTS.lock();
    let mut next = 0usize;
    let mut arenas = [ArenaState::default(); 6];
    for (state, arena) in arenas.iter_mut().zip(kmem::arenas()) {
        let first = next;
        let mut imported = 0;
        arena.walk(|seg| {
            if let Some(slot) = buf.get_mut(next) {
                *slot = [seg.start, seg.size, kind_code(seg.kind)];
            }
            next += 1;
            if seg.kind == (SegmentKind::Span { imported: true }) {
                imported += seg.size;
            }
        });
        if next > SEGMENTS_MAX {
            return Err(failure!("more than {SEGMENTS_MAX} segments to snapshot"));
        }
        *state = ArenaState {
            fields: arena_fields(arena, imported),
            first,
            segments: next - first,
        };
    }
    let mut cache_states = [[0; 8]; CACHES];
    caches(|i, s| cache_states[i] = cache_fields(s));
    let (backed, tables, meta) = globals();
    Ok(Snapshot {
        arenas,
        caches: cache_states,
        backed,
        tables,
        meta,
    })
}

/// Compares the kernel's memory now with `before` (whose segment lists
/// are in `SEGMENTS`): everything but the metadata kept for reuse must
/// match, and `phys`, which holds that metadata, must differ by exactly
/// the pages it grew by. Returns those (page-table frames, meta pages), or
/// the first difference.
pub(super) fn compare(before: &Snapshot) -> Outcome<(i64, i64)> {
    let (backed, tables, meta) = globals();
    if backed != before.backed {
        return Err(failure!(
            "kmem_default has {backed} pages backed, had {}",
            before.backed
        ));
    }
    let (was, is) = (&before.arenas[0].fields, phys().size());
    if is.total != was[2] {
        return Err(failure!(
            "phys has {} bytes in spans, had {}",
            is.total,
            was[2]
        ));
    }
    let tables_grew = tables as i64 - before.tables as i64;
    let meta_grew = meta as i64 - before.meta as i64;
    let grew = is.alloc as i64 - was[0] as i64;
    let unaccounted = grew - (tables_grew + meta_grew) * PAGE as i64;
    if unaccounted != 0 {
        return Err(failure!(
            "phys has {unaccounted} bytes allocated that are neither the {tables_grew} page-table frames nor the {meta_grew} meta pages kept"
        ));
    }
    let buf = SEGMENTS.lock();
    // phys is `arenas()[0]`, accounted for above.
    for (i, arena) in kmem::arenas().iter().enumerate().skip(1) {
        let name = arena.name();
        let was = &before.arenas[i];
        let list = &buf[was.first..was.first + was.segments];
        let mut n = 0usize;
        let mut diff: Option<Failure> = None;
        let mut imported = 0;
        arena.walk(|seg| {
            let now = [seg.start, seg.size, kind_code(seg.kind)];
            if diff.is_none() && list.get(n) != Some(&now) {
                diff = Some(match list.get(n) {
                    Some(old) => failure!(
                        "segment {n} was {} {:#x}+{:#x}, is {} {:#x}+{:#x}",
                        kind_name(old[2]),
                        old[0],
                        old[1],
                        kind_name(now[2]),
                        now[0],
                        now[1]
                    ),
                    None => failure!(
                        "segment {n} is new: {} {:#x}+{:#x}",
                        kind_name(now[2]),
                        now[0],
                        now[1]
                    ),
                });
            }
            n += 1;
            if seg.kind == (SegmentKind::Span { imported: true }) {
                imported += seg.size;
            }
        });
        if diff.is_none() && n < list.len() {
            let old = list[n];
            diff = Some(failure!(
                "segment {n} is gone: {} {:#x}+{:#x}",
                kind_name(old[2]),
                old[0],
                old[1]
            ));
        }
        if let Some(d) = diff {
            return Err(failure!("arena '{name}': {d}"));
        }
        let now = arena_fields(arena, imported);
        let kept = ARENA_KEPT;
        for (f, (old, new)) in was.fields.iter().zip(now).enumerate().take(kept) {
            if *old != new {
                return Err(failure!(
                    "arena '{name}': {} was {old}, is {new}",
                    ARENA_FIELDS[f]
                ));
            }
        }
    }
    let mut diff = None;
    caches(|i, s| {
        let now = cache_fields(s);
        for (f, (old, new)) in before.caches[i]
            .iter()
            .zip(now)
            .enumerate()
            .take(CACHE_KEPT)
        {
            if diff.is_none() && *old != new {
                diff = Some(failure!(
                    "cache '{}': {} was {old}, is {new}",
                    CacheName(i),
                    CACHE_FIELDS[f]
                ));
            }
        }
    });
    match diff {
        Some(d) => Err(d),
        None => Ok((tables_grew, meta_grew)),
    }
}

/// Metadata kept for reuse after a round and a reap, beyond the snapshot:
/// page-table frames and meta pages (of which tag pages, the arenas'
/// allocated-segment hash tables, and the caches' records, magazines and
/// slab hash tables; the rest are `phys`'s set-aside frames).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Kept {
    tables: i64,
    meta: i64,
    tag_pages: i64,
    hash_pages: i64,
    cache_pages: i64,
}

impl Kept {
    pub(super) fn frames(&self) -> i64 {
        self.tables + self.meta
    }

    /// Frames kept that no arena or cache accounts for as its metadata:
    /// page-table frames, and meta pages beyond the allocated-segment hash
    /// tables (kept until an arena empties; `phys` never does), the tag
    /// pages a span marker holds (a reap does not move span markers) and
    /// the caches' record and magazine pages with a record in use.
    pub(super) fn unexplained(&self) -> i64 {
        self.tables + (self.meta - self.hash_pages - self.tag_pages - self.cache_pages).abs()
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} page-table frames, {} meta pages ({} tag pages, {} hash table pages, {} cache meta pages)",
            self.tables, self.meta, self.tag_pages, self.hash_pages, self.cache_pages
        )
    }
}

/// Pages of an allocated-segment hash table of `buckets` buckets, as
/// vmem-core lays it out: 16 bytes a bucket, the first 16 buckets inside
/// the arena.
fn hash_pages(buckets: u64) -> i64 {
    if buckets <= 16 {
        0
    } else {
        (buckets * 16).div_ceil(PAGE) as i64
    }
}

/// The kept figures now, against `start`; `tables` and `meta` from `compare`.
pub(super) fn kept(start: &Snapshot, tables: i64, meta: i64) -> Kept {
    let mut k = Kept {
        tables,
        meta,
        ..Kept::default()
    };
    for (arena, was) in kmem::arenas().iter().zip(&start.arenas) {
        let s = arena.stats();
        k.tag_pages += s.tag_pages as i64 - was.fields[9] as i64;
        k.hash_pages += hash_pages(s.hash_buckets) - hash_pages(was.fields[10]);
    }
    caches(|i, s| k.cache_pages += s.meta_pages as i64 - start.caches[i][7] as i64);
    k
}
