//! The arena: spans and segments under one lock, the allocation policies,
//! import from a source and release back to it, and the checker.

use crate::sync::atomic::{AtomicUsize, Ordering};

use lock_api::{Mutex, MutexGuard, RawMutex};

use crate::constraint::{Constraints, Fit, round_up};
use crate::error::{Error, ErrorKind, Result};
use crate::fault::{ArenaFaults, FaultPlan, FaultSchedule, FaultSite};
use crate::freelist::{FreeLists, highbit};
use crate::hash::{AllocHash, Table};
use crate::meta::{MetaPages, MetaSource};
use crate::name::{self, Name};
use crate::tag::{
    AllocBy, Importer, Kind, Link, TAGS_PER_PAGE, TagPtr, TagStock, next_leaving, page_slot,
    take_static_batch,
};

mod front;
mod span_tree;
pub(crate) use front::{Backing, FreeError, QuantumFront};
use span_tree::SpanTree;

/// The lock an arena uses unless its owner picks another: a spin lock.
pub type DefaultLock = spin::mutex::SpinMutex<()>;

/// Tags one operation may need: a span marker and its free segment for an
/// import, then a leading and a trailing free fragment around the allocation.
const TAGS_PER_OP: usize = 4;

/// Refill rounds an operation tries before it gives up on tags.
const REFILL_ROUNDS: usize = 8;

/// Where an arena gets spans when it runs out: another arena, or anything
/// that hands out ranges of integers.
///
/// An arena calls its source's `import` and `release` with none of its own
/// locks held (as illumos's `vmem_xalloc` drops its arena's lock around the
/// import function), so the source may take locks of its own and call other
/// arenas, and whatever the source calls (a parent arena's meta source) may
/// allocate from the importing arena or from arenas under it. A source must
/// not import from the arena that imports from it: that arena, finding
/// nothing free, would import again, without end.
///
/// Every call names its [`Importer`], so that a source with several
/// importers can tell them apart; an arena used as a source takes a span
/// back only from the importer it handed it to.
pub trait Source: Sync {
    /// Hands out a range of `size` integers aligned to `align` to
    /// `importer`, returning its start.
    fn import(&self, importer: Importer, size: u64, align: u64) -> Result<u64>;

    /// Takes back a range [`Source::import`] handed out to `importer`,
    /// whole. An arena refuses anything else with `BadFree` and changes
    /// nothing: a range it handed out otherwise, one it handed to another
    /// importer, or part of a range.
    fn release(&self, importer: Importer, base: u64, size: u64) -> Result<()>;

    /// Called when an arena starts importing from this source.
    fn attach(&self) {}

    /// Called when an arena that imported from this source is destroyed or
    /// dropped.
    fn detach(&self) {}
}

/// How an allocation picks among the free segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// O(1): the head of the first freelist whose every member is large
    /// enough, else the first fit on the one list that might hold it.
    #[default]
    InstantFit,
    /// The smallest free segment that holds the request.
    BestFit,
    /// The first fit at or after the end of the previous next-fit
    /// allocation, wrapping around (as for process IDs).
    NextFit,
}

/// What [`Arena::walk`] reports for each span marker and segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A span: `imported` when it came from the arena's source.
    Span {
        /// Whether the span came from the arena's source.
        imported: bool,
    },
    /// A free segment.
    Free,
    /// An allocated segment.
    Alloc,
}

/// A span marker or segment, as [`Arena::walk`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// First integer of the range.
    pub start: u64,
    /// Number of integers in the range.
    pub size: u64,
    /// What the range is.
    pub kind: SegmentKind,
}

/// The arena's bytes by state, as [`Arena::size`] reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ArenaSize {
    /// In allocated segments.
    pub alloc: u64,
    /// In free segments.
    pub free: u64,
    /// In all spans (`alloc + free`).
    pub total: u64,
}

/// Counters an operator reads with [`Arena::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Successful allocations (`alloc`, `xalloc`, and children's imports).
    pub allocs: u64,
    /// Successful frees (`free`, `xfree`, and children's releases).
    pub frees: u64,
    /// Allocations refused for lack of space, tags or an import.
    pub alloc_fails: u64,
    /// Spans imported from the source.
    pub imports: u64,
    /// Imports the source refused.
    pub import_fails: u64,
    /// Imported spans released back to the source.
    pub releases: u64,
    /// Spans the arena has now.
    pub spans: u64,
    /// Allocated segments now.
    pub alloc_segments: u64,
    /// Free segments now.
    pub free_segments: u64,
    /// Boundary tags the arena owns (linked and spare).
    pub tags: u64,
    /// Spare boundary tags.
    pub tags_spare: u64,
    /// Meta pages holding the arena's tags.
    pub tag_pages: u64,
    /// Buckets in the allocated-segment hash.
    pub hash_buckets: u64,
    /// Times the hash grew.
    pub hash_resizes: u64,
    /// Child arenas importing from this one.
    pub children: u64,
}

/// How an arena is made: name, quantum, and optionally a first span, a
/// source, and a meta source for tags and hash tables.
#[derive(Clone, Copy)]
pub struct ArenaConfig<'s> {
    name: Name,
    quantum: u64,
    span: Option<(u64, u64)>,
    source: Option<&'s dyn Source>,
    import_min: u64,
    meta: Option<&'s dyn MetaSource>,
    static_tags: bool,
    /// Set by the quantum cache layer's `ArenaConfig::qcache`.
    pub(crate) qcache: Option<&'s dyn QuantumFront>,
}

impl<'s> ArenaConfig<'s> {
    /// An arena named `name` whose integers come in multiples of `quantum`
    /// (a power of two).
    /// Names longer than [`NAME_MAX`](crate::NAME_MAX) bytes are cut at a character boundary.
    pub fn new(name: &str, quantum: u64) -> Self {
        ArenaConfig {
            name: name::keep(name),
            quantum,
            span: None,
            source: None,
            import_min: 0,
            meta: None,
            static_tags: true,
            qcache: None,
        }
    }

    /// Adds `[base, base + size)` as the first span.
    pub const fn span(mut self, base: u64, size: u64) -> Self {
        self.span = Some((base, size));
        self
    }

    /// Imports spans from `source`, at least `import_min` integers at a time
    /// (rounded up to the quantum; zero means one quantum).
    pub const fn source(mut self, source: &'s dyn Source, import_min: u64) -> Self {
        self.source = Some(source);
        self.import_min = import_min;
        self
    }

    /// Takes pages for more boundary tags, and for the hash as it grows,
    /// from `meta`.
    pub const fn meta(mut self, meta: &'s dyn MetaSource) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Whether the arena may take tags from the static pool shared by all
    /// arenas (the default) when its meta source has none; turn it off to
    /// see the arena run out of tags.
    pub const fn static_tags(mut self, allowed: bool) -> Self {
        self.static_tags = allowed;
        self
    }
}

/// A vmem arena: a set of `u64` integers handed out in multiples of a
/// quantum. See the crate documentation for the design.
///
/// All calls take `&self`; the arena is `Sync` and serialises them with one
/// lock of type `R`.
pub struct Arena<'s, R: RawMutex = DefaultLock> {
    name: Name,
    quantum: u64,
    import_min: u64,
    source: Option<&'s dyn Source>,
    meta: Option<&'s dyn MetaSource>,
    static_tags: bool,
    qcache: Option<&'s dyn QuantumFront>,
    /// Who this arena is to its source.
    importer: Importer,
    children: AtomicUsize,
    /// Object caches built on the arena ([`crate::ObjectCache`]).
    caches: AtomicUsize,
    inner: Mutex<R, Inner>,
}

/// The arena's state under its lock.
struct Inner {
    /// Whether the arena imports from its source (until it is destroyed).
    attached: bool,
    /// First and last tag of the segment list: span markers each followed by
    /// the segments that tile the span, spans in address order.
    seg_head: Link,
    seg_tail: Link,
    /// Span markers by start, to find a span's place in O(log spans).
    span_tree: SpanTree,
    free: FreeLists,
    hash: AllocHash,
    tags: TagStock,
    /// Where next fit resumes: a segment at or before `rotor_addr`.
    rotor: Link,
    rotor_addr: u64,
    bytes_alloc: u64,
    bytes_free: u64,
    bytes_total: u64,
    spans: u64,
    free_segments: u64,
    /// Injected faults: which imports and tag refills fail.
    faults: ArenaFaults,
    allocs: u64,
    frees: u64,
    alloc_fails: u64,
    imports: u64,
    import_fails: u64,
    releases: u64,
}

// SAFETY: every tag the state links is owned by this arena alone and only
// touched with the arena's lock held, so the state may move between threads
// with the lock; the source is `Sync`.
unsafe impl Send for Inner {}

macro_rules! event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        tracing::debug!($($arg)*);
    };
}

impl<'s, R: RawMutex> Arena<'s, R> {
    /// An empty arena named `name` with quantum `quantum`, no source and no
    /// meta source.
    pub fn new(name: &str, quantum: u64) -> Result<Self> {
        Self::create(ArenaConfig::new(name, quantum))
    }

    /// An arena as `config` describes it. A bad quantum is `BadConstraint`;
    /// a bad first span fails as [`Arena::add_span`] would.
    pub fn create(config: ArenaConfig<'s>) -> Result<Self> {
        if !config.quantum.is_power_of_two() {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "quantum is not a power of two",
            ));
        }
        let import_min = round_up(config.import_min.max(config.quantum), config.quantum)?;
        if let Some(qc) = config.qcache
            && qc.quantum() != config.quantum
        {
            return Err(Error::new(
                ErrorKind::BadConstraint,
                "quantum caches made for another quantum",
            ));
        }
        let mut arena = Arena {
            name: config.name,
            quantum: config.quantum,
            import_min,
            meta: config.meta,
            static_tags: config.static_tags,
            importer: Importer::new(),
            children: AtomicUsize::new(0),
            caches: AtomicUsize::new(0),
            source: config.source,
            qcache: None,
            inner: Mutex::new(Inner::new()),
        };
        if let Some((base, size)) = config.span {
            arena.add_span(base, size)?;
        }
        // Claimed last, so a create refused for its span leaves the caches
        // free for another arena.
        if let Some(qc) = config.qcache {
            if !qc.claim() {
                return Err(Error::new(
                    ErrorKind::InUse,
                    "quantum caches already serve another arena",
                ));
            }
            arena.qcache = Some(qc);
        }
        if let Some(source) = config.source {
            source.attach();
            arena.inner.lock().attached = true;
        }
        Ok(arena)
    }

    /// The arena's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The arena's quantum.
    pub fn quantum(&self) -> u64 {
        self.quantum
    }

    /// Adds `[base, base + size)` as a span. Both must be multiples of the
    /// quantum (`Misaligned`), `base + size` must fit in a `u64`
    /// (`Overflow`: the last quantum below 2^64 can never be in a span), the
    /// range must not overlap a span the arena has (`Overlap`), and `size`
    /// must not be zero (`ZeroSize`). Finding the span's place and checking
    /// overlap look at O(log n) of the arena's n span markers (it keeps them
    /// in a search tree by start), and so do the import and release of a
    /// span.
    pub fn add_span(&self, base: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "span of size zero"));
        }
        if base.checked_add(size).is_none() {
            return Err(Error::new(ErrorKind::Overflow, "span passes 2^64").at(base));
        }
        if (base | size) & (self.quantum - 1) != 0 {
            return Err(Error::new(
                ErrorKind::Misaligned,
                "span is not a multiple of the quantum",
            )
            .at(base));
        }
        let mut inner = self.lock_reserved()?;
        inner.insert_span(base, size, false).map(|_| ())
    }

    /// Allocates `size` integers (rounded up to the quantum) by `policy`,
    /// importing from the source when nothing free is large enough. Free it
    /// with [`Arena::free`].
    pub fn alloc(&self, size: u64, policy: Policy) -> Result<u64> {
        let fit = Fit::plain(size, self.quantum)?;
        if policy != Policy::NextFit
            && let Some(front) = self.qcache
            && let Some(result) = front.alloc(fit.size, &QcacheSlabs(self))
        {
            match result {
                Ok(addr) => return Ok(addr),
                // No slab could be had: the arena itself may still hold a
                // segment of this size.
                Err(e) if matches!(e.kind(), ErrorKind::NoSpace | ErrorKind::ImportFailed) => {}
                Err(e) => return Err(e),
            }
        }
        self.allocate(&fit, policy, AllocBy::Alloc)
    }

    /// Allocates `size` integers meeting `constraints` by `policy`. It never
    /// imports: only spans the arena has are searched. Free it with
    /// [`Arena::xfree`].
    pub fn xalloc(&self, size: u64, constraints: &Constraints, policy: Policy) -> Result<u64> {
        let fit = Fit::new(size, constraints, self.quantum)?;
        self.allocate(&fit, policy, AllocBy::Xalloc)
    }

    /// Frees what [`Arena::alloc`] returned. `size` is the size asked for or
    /// the rounded one.
    pub fn free(&self, addr: u64, size: u64) -> Result<()> {
        if size != 0
            && let Ok(rounded) = round_up(size, self.quantum)
            && let Some(front) = self.qcache
            && let Some(result) = front.free(addr, rounded)
        {
            match result {
                Ok(()) => return Ok(()),
                // Not in the cache's slabs: allocated from the arena directly.
                Err(FreeError::NotOurs(_)) => {}
                Err(FreeError::Refused(e)) => return Err(e),
            }
        }
        self.release_segment(addr, size, AllocBy::Alloc)
    }

    /// Returns every quantum cache's magazines and empty slabs to the arena,
    /// then gives tag pages back to the meta source: the tags in use move
    /// onto as few pages as hold them and the spare tags one operation
    /// reserves (span markers stay where they are), and every other page
    /// goes back once the arena's lock is dropped. Costs O(spare tags +
    /// tag pages) with the lock held, plus one move per tag in use on a
    /// page that goes.
    pub fn reap(&self) -> Result<()> {
        let result = match self.qcache {
            Some(front) => front.purge(&QcacheSlabs(self)),
            None => Ok(()),
        };
        // Pages given back to a meta source that allocates from this arena
        // free tags here in turn: go again until no page leaves.
        if let Some(meta) = self.meta {
            loop {
                let mut pages = MetaPages::new();
                self.inner.lock().empty_tag_pages(TAGS_PER_OP, &mut pages);
                if pages.is_empty() {
                    break;
                }
                pages.give_back(meta);
            }
        }
        result
    }

    /// The quantum caches in front of the arena, if it has them.
    pub(crate) fn quantum_front(&self) -> Option<&'s dyn QuantumFront> {
        self.qcache
    }

    /// Frees what [`Arena::xalloc`] returned.
    pub fn xfree(&self, addr: u64, size: u64) -> Result<()> {
        self.release_segment(addr, size, AllocBy::Xalloc)
    }

    /// Whether `[addr, addr + size)` lies inside one of the arena's spans.
    /// It looks at O(log n) of the arena's n span markers.
    pub fn contains(&self, addr: u64, size: u64) -> Result<bool> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "range of size zero"));
        }
        let end = addr
            .checked_add(size)
            .ok_or(Error::new(ErrorKind::Overflow, "range passes 2^64").at(addr))?;
        let inner = self.inner.lock();
        // Spans do not overlap: only the last one starting at or below
        // `addr` can hold the range (`addr + 1 <= end` cannot overflow).
        let (span, _) = inner.span_tree.around(addr + 1);
        Ok(span.is_some_and(|span| end <= span.end()))
    }

    /// Calls `visit` for every span marker and segment in address order,
    /// each span marker before the segments that tile it. `visit` runs with
    /// the arena locked and must not call the arena.
    pub fn walk(&self, mut visit: impl FnMut(Segment)) {
        let inner = self.inner.lock();
        let mut cursor = inner.seg_head;
        while let Some(tag) = cursor {
            let kind = match tag.kind() {
                Kind::Span { imported } => SegmentKind::Span { imported },
                Kind::Free => SegmentKind::Free,
                Kind::Alloc(_) => SegmentKind::Alloc,
            };
            visit(Segment {
                start: tag.start(),
                size: tag.size(),
                kind,
            });
            cursor = tag.seg_next();
        }
    }

    /// Calls `visit` with the kind of every tag (for `destroy`).
    fn walk_tags(&self, mut visit: impl FnMut(Kind)) {
        let inner = self.inner.lock();
        let mut cursor = inner.seg_head;
        while let Some(tag) = cursor {
            visit(tag.kind());
            cursor = tag.seg_next();
        }
    }

    /// Bytes allocated, free, and in all spans.
    pub fn size(&self) -> ArenaSize {
        let inner = self.inner.lock();
        ArenaSize {
            alloc: inner.bytes_alloc,
            free: inner.bytes_free,
            total: inner.bytes_total,
        }
    }

    /// The arena's counters.
    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock();
        Stats {
            allocs: inner.allocs,
            frees: inner.frees,
            alloc_fails: inner.alloc_fails,
            imports: inner.imports,
            import_fails: inner.import_fails,
            releases: inner.releases,
            spans: inner.spans,
            alloc_segments: inner.hash.count as u64,
            free_segments: inner.free_segments,
            tags: inner.tags.owned as u64,
            tags_spare: inner.tags.spare_count as u64,
            tag_pages: inner.tags.page_count as u64,
            hash_buckets: inner.hash.buckets() as u64,
            hash_resizes: inner.hash.resizes,
            children: self.children.load(Ordering::Relaxed) as u64,
        }
    }

    /// Makes the next `count` imports fail as a source out of memory would
    /// (fault injection; the failures are `ImportFailed`): shorthand for
    /// `inject_faults(FaultSite::Import, FaultPlan::Next(count))`.
    pub fn fail_imports(&self, count: u64) {
        self.inject_faults(FaultSite::Import, FaultPlan::Next(count));
    }

    /// Fails this arena's calls at `site` by `plan` from now on, replacing
    /// any earlier plan there and counting calls afresh (see [`FaultSite`]
    /// for what fails and how it is reported).
    pub fn inject_faults(&self, site: FaultSite, plan: FaultPlan) {
        *self.inner.lock().faults.at(site) = FaultSchedule::new(plan);
    }

    /// The plan at `site` and its progress: calls seen, faults injected.
    pub fn fault_schedule(&self, site: FaultSite) -> FaultSchedule {
        *self.inner.lock().faults.at(site)
    }

    /// Checks every invariant of the arena; `Corrupt` names the first
    /// broken one and the address where it broke.
    ///
    /// The arena's own invariants are checked under its lock, so this may
    /// run while other threads use it; the quantum caches' part has the
    /// limit [`ObjectCache::check`](crate::ObjectCache::check) states (exact
    /// only while they are quiet).
    pub fn check(&self) -> Result<()> {
        if let Some(front) = self.qcache {
            front.check()?;
        }
        let mut inner = self.inner.lock();
        inner.check(self.quantum)
    }

    /// Empties the arena: refuses with `InUse` while it has allocated
    /// segments, a child arena imports from it, or an object cache is built
    /// on it (even an empty one); otherwise releases its imported spans to
    /// its source, forgets every span, and detaches from the source. The
    /// arena is then as if newly made without a source.
    pub fn destroy(&self) -> Result<()> {
        if self.caches.load(Ordering::Acquire) > 0 {
            return Err(Error::new(
                ErrorKind::InUse,
                "an object cache is built on this arena",
            ));
        }
        if self.qcache.is_some_and(|qc| qc.in_use() > 0) {
            return Err(Error::new(ErrorKind::InUse, "arena has live allocations"));
        }
        if self.children.load(Ordering::Acquire) > 0 {
            return Err(Error::new(
                ErrorKind::InUse,
                "a child arena imports from this arena",
            ));
        }
        // Refuse before reaping, so a refused destroy changes nothing: only
        // quantum-cache slabs may be left once the caches are reaped.
        let mut others = 0usize;
        self.walk_tags(|kind| {
            others += usize::from(matches!(kind, Kind::Alloc(by) if by != AllocBy::QCache))
        });
        if others > 0 {
            return Err(Error::new(ErrorKind::InUse, "arena has live allocations"));
        }
        self.reap()?;
        let mut inner = self.inner.lock();
        if inner.hash.count > 0 {
            return Err(Error::new(ErrorKind::InUse, "arena has live allocations"));
        }
        if self.children.load(Ordering::Acquire) > 0 {
            return Err(Error::new(
                ErrorKind::InUse,
                "a child arena imports from this arena",
            ));
        }
        if self.caches.load(Ordering::Acquire) > 0 {
            return Err(Error::new(
                ErrorKind::InUse,
                "an object cache is built on this arena",
            ));
        }
        // No imported span is left (the free that emptied each gave it
        // back), so detaching releases nothing to the source under the lock.
        let attached = inner.detach(self.source, self.importer);
        drop(inner);
        if let (true, Some(source)) = (attached, self.source) {
            source.detach();
        }
        event!(arena = self.name(), "destroyed");
        Ok(())
    }

    /// Counts an object cache built on the arena, until
    /// [`Arena::cache_gone`].
    pub(crate) fn cache_built(&self) {
        self.caches.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets an object cache [`Arena::cache_built`] counted.
    pub(crate) fn cache_gone(&self) {
        self.caches.fetch_sub(1, Ordering::AcqRel);
    }

    /// A slab of `size` integers for an object cache built on the arena,
    /// aligned to `align` when that is above the quantum.
    pub(crate) fn alloc_slab(&self, size: u64, align: u64) -> Result<u64> {
        let fit = if align <= self.quantum {
            Fit::plain(size, self.quantum)?
        } else {
            Fit::new(size, &Constraints::aligned(align), self.quantum)?
        };
        self.allocate(&fit, Policy::InstantFit, AllocBy::Cache)
    }

    /// Gives back a slab [`Arena::alloc_slab`] handed out.
    pub(crate) fn free_slab(&self, base: u64, size: u64) {
        // The slab came from this arena whole, so the free cannot be refused.
        let _ = self.release_segment(base, size, AllocBy::Cache);
    }

    /// Takes the lock with at least [`TAGS_PER_OP`] spare tags, refilling
    /// (outside the lock) from the meta source, then the static pool.
    fn lock_reserved(&self) -> Result<MutexGuard<'_, R, Inner>> {
        for _ in 0..REFILL_ROUNDS {
            let inner = self.inner.lock();
            if inner.tags.spare_count >= TAGS_PER_OP {
                return Ok(inner);
            }
            drop(inner);
            if !self.refill_tags() {
                break;
            }
        }
        let inner = self.inner.lock();
        if inner.tags.spare_count >= TAGS_PER_OP {
            return Ok(inner);
        }
        event!(arena = self.name(), "out of boundary tags");
        Err(Error::new(ErrorKind::NoSpace, "no boundary tags left"))
    }

    /// Adds one meta page or static batch of tags; false if none came.
    fn refill_tags(&self) -> bool {
        // An injected fault stands for a dry meta source.
        let meta = self
            .meta
            .filter(|_| !self.inner.lock().faults.at(FaultSite::TagRefill).strike());
        if let Some(page) = meta.and_then(|meta| meta.alloc_pages(1)) {
            // SAFETY: the meta source handed over this page for the arena to own.
            unsafe { self.inner.lock().tags.add_page(page) };
            return true;
        }
        if self.static_tags {
            let (batch, count) = take_static_batch();
            if count > 0 {
                self.inner.lock().tags.add_batch(batch, count);
                return true;
            }
        }
        false
    }

    fn allocate(&self, fit: &Fit, policy: Policy, by: AllocBy) -> Result<u64> {
        let mut inner = self.lock_reserved()?;
        let result = match inner.find(fit, policy) {
            Some((seg, addr)) => Ok(inner.carve(seg, addr, fit.size, by, policy)),
            None if by != AllocBy::Xalloc && fit.import_size(self.quantum).is_some() => {
                let (relocked, result) = self.import_and_carve(inner, fit, policy, by);
                inner = relocked;
                result
            }
            None => Err(Error::new(
                ErrorKind::NoSpace,
                "no free segment meets the request",
            )),
        };
        match result {
            Ok(_) => inner.allocs += 1,
            Err(_) => inner.alloc_fails += 1,
        }
        // Growth, and a resize's next drain step, wait for a call that
        // succeeds: a failed call changes nothing, not even the hash.
        let (retired, grow) = match result {
            Ok(_) => (
                inner.hash.settle(),
                self.meta.and_then(|_| inner.hash.claim_growth()),
            ),
            Err(_) => Default::default(),
        };
        drop(inner);
        // SAFETY: the hash's tables come from `self.meta`.
        unsafe { retired.give_back(self.meta) };
        if let Some(pages) = grow {
            self.grow_hash(pages);
        }
        result
    }

    /// Imports a span large enough for `fit` and allocates from it,
    /// returning the lock held again.
    ///
    /// The source is called with the lock dropped, as illumos's
    /// `vmem_xalloc` does: a parent refilling its tags or growing its hash
    /// during the import may call a meta source that allocates from this
    /// arena. The lock is then taken again with tags reserved afresh (other
    /// calls may have used them meanwhile), and the allocation is carved
    /// from the new span, which surely holds it. Whatever fails after the
    /// import gives the span back, with the lock dropped.
    fn import_and_carve<'a>(
        &'a self,
        mut inner: MutexGuard<'a, R, Inner>,
        fit: &Fit,
        policy: Policy,
        by: AllocBy,
    ) -> (MutexGuard<'a, R, Inner>, Result<u64>) {
        let Some(source) = self.source.filter(|_| inner.attached) else {
            let e = Error::new(ErrorKind::NoSpace, "no free segment is large enough");
            return (inner, Err(e));
        };
        if inner.faults.at(FaultSite::Import).strike() {
            inner.import_fails += 1;
            event!(
                arena = self.name(),
                size = fit.size,
                "import failed (injected)"
            );
            let e = Error::new(ErrorKind::ImportFailed, "import failed (injected fault)");
            return (inner, Err(e));
        }
        // An aligned request (a slab, a child's aligned import) imports
        // enough to hold an aligned placement anywhere in the span.
        let Some(size) = fit.import_size(self.quantum) else {
            let e = Error::new(ErrorKind::Overflow, "import size passes 2^64");
            return (inner, Err(e));
        };
        let size = size.max(self.import_min);
        drop(inner);
        let Ok(base) = source.import(self.importer, size, self.quantum) else {
            let mut inner = self.inner.lock();
            inner.import_fails += 1;
            event!(arena = self.name(), size, "import failed");
            let e = Error::new(
                ErrorKind::ImportFailed,
                "the source could not supply a span",
            );
            return (inner, Err(e));
        };
        let give_back = || {
            let _ = source.release(self.importer, base, size);
        };
        if base & (self.quantum - 1) != 0 || base.checked_add(size).is_none() {
            // A source that hands out a range the arena cannot take is a bug
            // in the source: give the range back and report the import as
            // failed.
            give_back();
            let mut inner = self.inner.lock();
            inner.import_fails += 1;
            event!(arena = self.name(), base, size, "import unusable");
            let e = Error::new(
                ErrorKind::ImportFailed,
                "the source supplied an unusable span",
            );
            return (inner, Err(e.at(base)));
        }
        let mut inner = match self.lock_reserved() {
            Ok(inner) => inner,
            Err(e) => {
                give_back();
                return (self.inner.lock(), Err(e));
            }
        };
        if !inner.attached {
            // Destroyed during the import: as if it had no source.
            drop(inner);
            give_back();
            let e = Error::new(ErrorKind::NoSpace, "no free segment is large enough");
            return (self.inner.lock(), Err(e));
        }
        let seg = match inner.insert_span(base, size, true) {
            Ok(seg) => seg,
            Err(_e) => {
                inner.import_fails += 1;
                event!(
                    arena = self.name(),
                    base,
                    size,
                    error = _e.what(),
                    "import unusable"
                );
                drop(inner);
                give_back();
                let e = Error::new(
                    ErrorKind::ImportFailed,
                    "the source supplied an unusable span",
                );
                return (self.inner.lock(), Err(e.at(base)));
            }
        };
        inner.imports += 1;
        event!(arena = self.name(), base, size, "imported span");
        if let Some(addr) = fit.place_in(seg.start(), seg.end()) {
            let addr = inner.carve(seg, addr, fit.size, by, policy);
            return (inner, Ok(addr));
        }
        // Not reached (the import size holds a placement), but an imported
        // span is never kept wholly free.
        if let Some(span) = seg.seg_prev() {
            inner.remove_span(span, seg);
        }
        inner.releases += 1;
        drop(inner);
        give_back();
        let e = Error::new(
            ErrorKind::NoSpace,
            "imported span does not hold the request",
        );
        (self.inner.lock(), Err(e))
    }

    /// Installs a larger hash table, taken and given back outside the lock;
    /// later calls drain the old one into it.
    fn grow_hash(&self, pages: usize) {
        let Some(meta) = self.meta else { return };
        let Some(base) = meta.alloc_pages(pages) else {
            self.inner.lock().hash.refused();
            return;
        };
        // SAFETY: the meta source handed over `pages` pages for the arena to own.
        let unused = unsafe { self.inner.lock().hash.install(Table { base, pages }) };
        if let Some(table) = unused {
            // SAFETY: the hash no longer uses this table, which came from `meta`.
            unsafe { meta.free_pages(table.base, table.pages) };
        }
    }

    fn release_segment(&self, addr: u64, size: u64, by: AllocBy) -> Result<()> {
        if size == 0 {
            return Err(Error::new(ErrorKind::ZeroSize, "free of size zero").at(addr));
        }
        let size = round_up(size, self.quantum).map_err(|e| e.at(addr))?;
        let mut inner = self.inner.lock();
        let Some(seg) = inner.hash.find(addr) else {
            return Err(Error::new(ErrorKind::BadFree, "address is not allocated").at(addr));
        };
        match seg.kind() {
            Kind::Alloc(owner) if owner == by => {}
            Kind::Alloc(AllocBy::Alloc) => {
                return Err(Error::new(
                    ErrorKind::BadFree,
                    "allocated by alloc: free it with free",
                )
                .at(addr));
            }
            Kind::Alloc(AllocBy::Xalloc) => {
                return Err(Error::new(
                    ErrorKind::BadFree,
                    "allocated by xalloc: free it with xfree",
                )
                .at(addr));
            }
            Kind::Alloc(AllocBy::Cache | AllocBy::QCache) => {
                return Err(Error::new(ErrorKind::BadFree, "a slab of an object cache").at(addr));
            }
            _ => {
                return Err(
                    Error::new(ErrorKind::BadFree, "a span imported by a child arena").at(addr),
                );
            }
        }
        if seg.size() != size {
            return Err(
                Error::new(ErrorKind::BadFree, "size differs from the allocation").at(addr),
            );
        }
        inner.frees += 1;
        let released = inner.free_segment(seg);
        if let Some((_base, _size)) = released {
            inner.releases += 1;
            event!(
                arena = self.name(),
                base = _base,
                size = _size,
                "released span"
            );
        }
        let retired = inner.hash.settle();
        drop(inner);
        // The span is already out of the arena; it goes back to the source
        // with the lock dropped, as imports come in.
        if let (Some((base, size)), Some(source)) = (released, self.source) {
            // The span was imported from this source, whole.
            let _ = source.release(self.importer, base, size);
        }
        // SAFETY: the hash's tables come from `self.meta`.
        unsafe { retired.give_back(self.meta) };
        Ok(())
    }
}

impl<R: RawMutex> core::fmt::Debug for Arena<'_, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let size = self.size();
        f.debug_struct("Arena")
            .field("name", &self.name())
            .field("quantum", &self.quantum)
            .field("alloc", &size.alloc)
            .field("free", &size.free)
            .field("total", &size.total)
            .finish()
    }
}

impl<R: RawMutex> Source for Arena<'_, R>
where
    Self: Sync,
{
    fn import(&self, importer: Importer, size: u64, align: u64) -> Result<u64> {
        let constraints = if align <= self.quantum {
            Constraints::NONE
        } else {
            Constraints::aligned(align)
        };
        let fit = Fit::new(size, &constraints, self.quantum)?;
        self.allocate(&fit, Policy::InstantFit, AllocBy::Import(importer))
    }

    fn release(&self, importer: Importer, base: u64, size: u64) -> Result<()> {
        self.release_segment(base, size, AllocBy::Import(importer))
    }

    fn attach(&self) {
        self.children.fetch_add(1, Ordering::AcqRel);
    }

    fn detach(&self) {
        self.children.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The slabs of an arena's own quantum caches, marked apart from other
/// caches' slabs so `destroy` can tell what a reap will give back.
struct QcacheSlabs<'a, 's, R: RawMutex>(&'a Arena<'s, R>);

impl<R: RawMutex> Backing for QcacheSlabs<'_, '_, R> {
    fn slab_alloc(&self, size: u64, _align: u64) -> Result<u64> {
        let fit = Fit::plain(size, self.0.quantum)?;
        self.0.allocate(&fit, Policy::InstantFit, AllocBy::QCache)
    }

    fn slab_free(&self, base: u64, size: u64, _align: u64) {
        // The slab came from this arena whole, so the free cannot be refused.
        let _ = self.0.release_segment(base, size, AllocBy::QCache);
    }
}

impl<R: RawMutex> Drop for Arena<'_, R> {
    /// Gives imported spans back to the source (even ones with live
    /// allocations, which no one can free any more), detaches from it, and
    /// returns tags and tables to the static pool and the meta source.
    fn drop(&mut self) {
        let _ = self.reap();
        let inner = self.inner.get_mut();
        if inner.detach(self.source, self.importer)
            && let Some(source) = self.source
        {
            source.detach();
        }
        // SAFETY: the hash's tables come from `self.meta`.
        unsafe { inner.hash.reset().give_back(self.meta) };
        inner.tags.dispose(self.meta);
    }
}

impl Inner {
    const fn new() -> Self {
        Inner {
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
    fn empty_tag_pages(&mut self, keep: usize, out: &mut MetaPages) {
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
        new.set_start(old.start());
        new.set_size(old.size());
        new.set_kind(old.kind());
        let (prev, next) = (old.seg_prev(), old.seg_next());
        new.set_seg_prev(prev);
        new.set_seg_next(next);
        match prev {
            Some(prev) => prev.set_seg_next(Some(new)),
            None => self.seg_head = Some(new),
        }
        match next {
            Some(next) => next.set_seg_prev(Some(new)),
            None => self.seg_tail = Some(new),
        }
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

    #[cfg(test)]
    fn span_steps(&self) -> u64 {
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
    /// when `prev` is none).
    fn seg_insert_after(&mut self, prev: Link, tag: TagPtr) {
        let next = match prev {
            Some(prev) => prev.seg_next(),
            None => self.seg_head,
        };
        tag.set_seg_prev(prev);
        tag.set_seg_next(next);
        match prev {
            Some(prev) => prev.set_seg_next(Some(tag)),
            None => self.seg_head = Some(tag),
        }
        match next {
            Some(next) => next.set_seg_prev(Some(tag)),
            None => self.seg_tail = Some(tag),
        }
    }

    /// Unlinks `tag` from the segment list and gives it back, moving the
    /// rotor to `heir` if it pointed at `tag`.
    fn seg_destroy(&mut self, tag: TagPtr, heir: Link) {
        let prev = tag.seg_prev();
        let next = tag.seg_next();
        match prev {
            Some(prev) => prev.set_seg_next(next),
            None => self.seg_head = next,
        }
        match next {
            Some(next) => next.set_seg_prev(prev),
            None => self.seg_tail = prev,
        }
        if self.rotor == Some(tag) {
            self.rotor = heir;
        }
        self.tags.give_back(tag);
    }

    /// Adds a span with one free segment covering it, and returns that
    /// segment.
    fn insert_span(&mut self, base: u64, size: u64, imported: bool) -> Result<TagPtr> {
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
        self.bytes_total += size;
        self.bytes_free += size;
        Ok(seg)
    }

    /// Removes a span whose one free segment `seg` covers it.
    fn remove_span(&mut self, span: TagPtr, seg: TagPtr) {
        self.free.remove(seg);
        self.free_segments -= 1;
        self.span_tree.remove(span);
        self.spans -= 1;
        self.bytes_total -= span.size();
        self.bytes_free -= span.size();
        self.seg_destroy(seg, None);
        self.seg_destroy(span, None);
    }

    /// Releases every span and stops importing from the source; returns
    /// whether it was importing, for the caller to tell the source (with
    /// the lock dropped).
    fn detach(&mut self, source: Option<&dyn Source>, importer: Importer) -> bool {
        self.remove_all_spans(source, importer);
        core::mem::replace(&mut self.attached, false)
    }

    /// Releases imported spans (through the source, as `importer`) and
    /// forgets every span and segment. Needs no new tag, so it works with
    /// none spare.
    fn remove_all_spans(&mut self, source: Option<&dyn Source>, importer: Importer) {
        self.span_tree.clear();
        // The segment list starts with a span marker, its segments follow.
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
            self.bytes_total -= size;
            self.seg_destroy(span, None);
            if imported {
                self.releases += 1;
                if let Some(source) = source {
                    let _ = source.release(importer, base, size);
                }
            }
        }
        self.rotor = None;
    }

    /// A free segment and placement for `fit` under `policy`, if any.
    #[inline]
    fn find(&mut self, fit: &Fit, policy: Policy) -> Option<(TagPtr, u64)> {
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
        let mut lists = self.free.lists_from(fit.size);
        while lists != 0 {
            let list = lists.trailing_zeros() as usize;
            lists &= lists - 1;
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
        let mut lists = self.free.lists_from(fit.size);
        while lists != 0 {
            let list = lists.trailing_zeros() as usize;
            lists &= lists - 1;
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
            // Every member of a higher list is larger than any of this one.
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

    /// Gives a free segment a new extent, moving it to another freelist only
    /// when its size class changes.
    #[inline]
    fn reshape_free(&mut self, seg: TagPtr, start: u64, size: u64) {
        if highbit(size) == highbit(seg.size()) {
            seg.set_start(start);
            seg.set_size(size);
        } else {
            self.free.remove(seg);
            seg.set_start(start);
            seg.set_size(size);
            self.free.insert(seg);
        }
    }

    /// Allocates `[addr, addr + size)` out of the free segment `seg`.
    #[inline]
    fn carve(&mut self, seg: TagPtr, addr: u64, size: u64, by: AllocBy, policy: Policy) -> u64 {
        let (start, end) = (seg.start(), seg.end());
        let taken = if addr == start && addr + size < end {
            // The common case: the free remainder keeps the segment's tag,
            // and usually its place on its freelist, so only the new tag and
            // the segment before it are touched.
            let taken = self.new_tag(addr, size, Kind::Alloc(by));
            self.seg_insert_after(seg.seg_prev(), taken);
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
                self.seg_insert_after(seg.seg_prev(), lead);
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
            seg
        };
        self.hash.insert(taken);
        self.bytes_free -= size;
        self.bytes_alloc += size;
        if policy == Policy::NextFit {
            self.rotor = Some(taken);
            self.rotor_addr = addr + size;
        }
        addr
    }

    /// Frees an allocated segment (already checked): a free neighbour
    /// absorbs it (so the tags that change are the ones already read), and
    /// when its span is imported and now wholly free the span is removed and
    /// returned for release.
    fn free_segment(&mut self, seg: TagPtr) -> Option<(u64, u64)> {
        self.hash.remove(seg);
        let size = seg.size();
        self.bytes_alloc -= size;
        self.bytes_free += size;
        // Span markers separate spans in the list, so a free neighbour in
        // the list is a neighbour inside the same span.
        let prev = seg.seg_prev().filter(|t| t.is_free());
        let next = seg.seg_next().filter(|t| t.is_free());
        let merged = match (prev, next) {
            (None, None) => {
                seg.set_kind(Kind::Free);
                self.free.insert(seg);
                self.free_segments += 1;
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
        let span = merged.seg_prev()?;
        if span.kind() == (Kind::Span { imported: true }) && span.size() == merged.size() {
            let whole = (span.start(), span.size());
            self.remove_span(span, merged);
            return Some(whole);
        }
        None
    }

    /// The checker: walks every structure and compares it with the others.
    fn check(&mut self, quantum: u64) -> Result<()> {
        let corrupt =
            |what: &'static str, at: u64| Err(Error::new(ErrorKind::Corrupt, what).at(at));
        // Every walk is bounded by the tags the arena owns, so a cycle ends it.
        let limit = self.tags.owned + 1;
        let (mut alloc, mut free, mut total) = (0u64, 0u64, 0u64);
        let (mut alloc_segs, mut free_segs, mut spans) = (0usize, 0u64, 0u64);
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
                        let list = highbit(tag.size());
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
        // free segments; the bitmap marks exactly the non-empty lists.
        let mut listed = 0u64;
        for list in 0..64 {
            let head = self.free.head(list);
            if head.is_some() != (self.free.bitmap() & (1 << list) != 0) {
                return corrupt("freelist bitmap disagrees with the lists", list as u64);
            }
            let mut prev: Link = None;
            let mut cursor = head;
            while let Some(seg) = cursor {
                listed += 1;
                if listed > limit as u64 {
                    return corrupt("a freelist has a cycle", seg.start());
                }
                if !seg.is_free() || highbit(seg.size()) != list || seg.list_prev() != prev {
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
        // Hash: every chain member is allocated and in its own bucket, of
        // the table a resize under way has or has not drained it into.
        let mut hashed = 0usize;
        for draining in [false, true] {
            for bucket in 0..self.hash.buckets_in(draining) {
                let (mut cursor, key_agrees) = self.hash.bucket(draining, bucket);
                if !key_agrees {
                    return corrupt("hash bucket caches a wrong start", bucket as u64);
                }
                while let Some(seg) = cursor {
                    hashed += 1;
                    if hashed > limit {
                        return corrupt("a hash chain has a cycle", seg.start());
                    }
                    if !matches!(seg.kind(), Kind::Alloc(_))
                        || !self.hash.belongs(seg.start(), draining, bucket)
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
        if alloc + free != total || spans != self.spans {
            return corrupt(
                "alloc + free differs from total, or span count is wrong",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeapMeta;

    const Q: u64 = 0x1000;

    fn arena(base: u64, size: u64) -> Arena<'static> {
        Arena::create(ArenaConfig::new("test", Q).span(base, size).meta(&HeapMeta)).unwrap()
    }

    fn segments(arena: &Arena<'_>) -> Vec<(u64, u64, SegmentKind)> {
        let mut out = Vec::new();
        arena.walk(|s| out.push((s.start, s.size, s.kind)));
        out
    }

    fn kind<T: core::fmt::Debug>(r: Result<T>) -> ErrorKind {
        r.unwrap_err().kind()
    }

    const SPAN: SegmentKind = SegmentKind::Span { imported: false };
    const IMPORTED: SegmentKind = SegmentKind::Span { imported: true };
    use SegmentKind::{Alloc as A, Free as F};

    #[test]
    fn arena_is_send_and_sync() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Arena<'static>>();
    }

    #[test]
    fn allocates_rounded_and_coalesces_on_free() {
        let a = arena(0x10000, 0x10000);
        let x = a.alloc(1, Policy::InstantFit).unwrap();
        let y = a.alloc(0x1800, Policy::InstantFit).unwrap();
        let z = a.alloc(Q, Policy::InstantFit).unwrap();
        assert_eq!((x, y, z), (0x10000, 0x11000, 0x13000));
        assert_eq!(
            a.size(),
            ArenaSize {
                alloc: 0x4000,
                free: 0xc000,
                total: 0x10000
            }
        );
        a.free(y, 0x1800).unwrap();
        a.free(x, Q).unwrap();
        assert_eq!(
            segments(&a),
            vec![
                (0x10000, 0x10000, SPAN),
                (0x10000, 0x3000, F),
                (0x13000, Q, A),
                (0x14000, 0xc000, F)
            ]
        );
        a.free(z, 1).unwrap();
        assert_eq!(
            segments(&a),
            vec![(0x10000, 0x10000, SPAN), (0x10000, 0x10000, F)]
        );
        a.check().unwrap();
        let s = a.stats();
        assert_eq!(
            (
                s.allocs,
                s.frees,
                s.spans,
                s.free_segments,
                s.alloc_segments
            ),
            (3, 3, 1, 1, 0)
        );
    }

    #[test]
    fn free_refuses_wrong_address_size_and_call_and_changes_nothing() {
        let a = arena(0x10000, 0x10000);
        let x = a.alloc(0x2000, Policy::InstantFit).unwrap();
        let y = a
            .xalloc(Q, &Constraints::aligned(0x4000), Policy::InstantFit)
            .unwrap();
        let before = segments(&a);
        assert_eq!(kind(a.free(x + Q, Q)), ErrorKind::BadFree);
        assert_eq!(kind(a.free(x, Q)), ErrorKind::BadFree);
        assert_eq!(kind(a.free(x, 0x3000)), ErrorKind::BadFree);
        assert_eq!(kind(a.xfree(x, 0x2000)), ErrorKind::BadFree);
        assert_eq!(kind(a.free(y, Q)), ErrorKind::BadFree);
        assert_eq!(kind(a.free(x, 0)), ErrorKind::ZeroSize);
        assert_eq!(kind(a.free(x, u64::MAX)), ErrorKind::Overflow);
        assert_eq!(segments(&a), before);
        a.check().unwrap();
        a.free(x, 0x1001).unwrap();
        assert_eq!(kind(a.free(x, 0x2000)), ErrorKind::BadFree, "double free");
        a.xfree(y, Q).unwrap();
        a.check().unwrap();
    }

    #[test]
    fn spans_refuse_overlap_misalignment_overflow_and_zero() {
        let a = arena(0x10000, 0x10000);
        assert_eq!(kind(a.add_span(0x18000, 0x10000)), ErrorKind::Overlap);
        assert_eq!(kind(a.add_span(0x8000, 0x9000)), ErrorKind::Overlap);
        assert_eq!(kind(a.add_span(0x0, 0x100000)), ErrorKind::Overlap);
        assert_eq!(kind(a.add_span(0x30800, 0x1000)), ErrorKind::Misaligned);
        assert_eq!(kind(a.add_span(0x30000, 0x800)), ErrorKind::Misaligned);
        assert_eq!(
            kind(a.add_span(u64::MAX - 0xfff, 0x2000)),
            ErrorKind::Overflow
        );
        assert_eq!(kind(a.add_span(0x30000, 0)), ErrorKind::ZeroSize);
        assert_eq!(
            segments(&a),
            vec![(0x10000, 0x10000, SPAN), (0x10000, 0x10000, F)]
        );
        a.add_span(0x20000, 0x1000).unwrap();
        a.add_span(0x0, 0x10000).unwrap();
        a.add_span(u64::MAX - 0xfff - 0x1000, 0x1000).unwrap();
        let spans: Vec<u64> = segments(&a)
            .iter()
            .filter(|s| s.2 == SPAN)
            .map(|s| s.0)
            .collect();
        assert_eq!(spans, vec![0x0, 0x10000, 0x20000, u64::MAX - 0x1fff]);
        // Adjacent spans stay apart: segments never coalesce across them.
        let x = a.alloc(0x10000, Policy::BestFit).unwrap();
        let y = a.alloc(0x10000, Policy::BestFit).unwrap();
        assert_eq!((x, y), (0x0, 0x10000));
        assert_eq!(
            kind(a.alloc(0x2000, Policy::InstantFit)),
            ErrorKind::NoSpace
        );
        assert!(a.contains(0x20000, 0x1000).unwrap());
        assert!(!a.contains(0x20000, 0x2000).unwrap());
        assert!(
            !a.contains(0x0, 0x11000).unwrap(),
            "two spans are not one range"
        );
        assert!(a.contains(u64::MAX - 0x1fff, 0x1000).unwrap());
        assert_eq!(kind(a.contains(0, 0)), ErrorKind::ZeroSize);
        assert_eq!(kind(a.contains(u64::MAX, 2)), ErrorKind::Overflow);
        a.check().unwrap();
    }

    #[test]
    fn instant_fit_fails_only_when_nothing_is_large_enough() {
        let a = arena(0, 0x100000);
        // Leave one free segment of 3 quanta: it is on the might-fit list of 3.
        let x = a.alloc(0x3000, Policy::InstantFit).unwrap();
        let _rest = a.alloc(0xfd000, Policy::InstantFit).unwrap();
        a.free(x, 0x3000).unwrap();
        assert_eq!(a.alloc(0x3000, Policy::InstantFit).unwrap(), x);
        assert_eq!(kind(a.alloc(Q, Policy::InstantFit)), ErrorKind::NoSpace);
        assert_eq!(a.stats().alloc_fails, 1);
        a.check().unwrap();
    }

    #[test]
    fn best_fit_takes_the_smallest_hole() {
        let a = arena(0, 0x20000);
        let mut v = Vec::new();
        for size in [0x4000, Q, 0x2000, Q, 0x3000, Q] {
            v.push(a.alloc(size, Policy::InstantFit).unwrap());
        }
        a.free(v[0], 0x4000).unwrap();
        a.free(v[2], 0x2000).unwrap();
        a.free(v[4], 0x3000).unwrap();
        assert_eq!(a.alloc(0x2000, Policy::BestFit).unwrap(), v[2]);
        assert_eq!(a.alloc(0x3000, Policy::BestFit).unwrap(), v[4]);
        assert_eq!(a.alloc(0x3000, Policy::BestFit).unwrap(), v[0]);
        a.check().unwrap();
    }

    #[test]
    fn next_fit_hands_out_ids_in_order_and_wraps() {
        let ids: Arena =
            Arena::create(ArenaConfig::new("pid", 1).span(1, 8).meta(&HeapMeta)).unwrap();
        let first: Vec<u64> = (0..3)
            .map(|_| ids.alloc(1, Policy::NextFit).unwrap())
            .collect();
        assert_eq!(first, vec![1, 2, 3]);
        ids.free(2, 1).unwrap();
        ids.free(3, 1).unwrap();
        // Freed IDs are reused only after the rest of the space.
        let more: Vec<u64> = (0..5)
            .map(|_| ids.alloc(1, Policy::NextFit).unwrap())
            .collect();
        assert_eq!(more, vec![4, 5, 6, 7, 8]);
        assert_eq!(ids.alloc(1, Policy::NextFit).unwrap(), 2);
        ids.free(1, 1).unwrap();
        assert_eq!(ids.alloc(1, Policy::NextFit).unwrap(), 3);
        assert_eq!(ids.alloc(1, Policy::NextFit).unwrap(), 1);
        assert_eq!(kind(ids.alloc(1, Policy::NextFit)), ErrorKind::NoSpace);
        ids.check().unwrap();
    }

    #[test]
    fn xalloc_meets_every_constraint() {
        let a = arena(0x100000, 0x100000);
        let c = Constraints {
            align: 0x10000,
            phase: 0x3000,
            ..Constraints::NONE
        };
        let r = a.xalloc(0x2000, &c, Policy::InstantFit).unwrap();
        assert_eq!(r % 0x10000, 0x3000);
        let c = Constraints {
            nocross: 0x8000,
            min: 0x106000,
            ..Constraints::NONE
        };
        let r = a.xalloc(0x4000, &c, Policy::InstantFit).unwrap();
        assert!(
            r >= 0x106000 && r / 0x8000 == (r + 0x3fff) / 0x8000,
            "{r:#x}"
        );
        let exact = a
            .xalloc(
                0x3000,
                &Constraints::exact(0x150000, 0x3000).unwrap(),
                Policy::BestFit,
            )
            .unwrap();
        assert_eq!(exact, 0x150000);
        assert_eq!(
            kind(a.xalloc(
                0x1000,
                &Constraints::exact(0x151000, 0x1000).unwrap(),
                Policy::InstantFit
            )),
            ErrorKind::NoSpace
        );
        let below = Constraints {
            max: 0x101000,
            ..Constraints::NONE
        };
        assert_eq!(a.xalloc(0x1000, &below, Policy::NextFit).unwrap(), 0x100000);
        assert_eq!(
            kind(a.xalloc(0x1000, &below, Policy::InstantFit)),
            ErrorKind::NoSpace
        );
        let before = segments(&a);
        assert_eq!(
            kind(a.xalloc(0x1000, &Constraints::aligned(0x3000), Policy::InstantFit)),
            ErrorKind::BadConstraint
        );
        assert_eq!(
            kind(a.xalloc(0, &Constraints::NONE, Policy::InstantFit)),
            ErrorKind::ZeroSize
        );
        assert_eq!(segments(&a), before);
        a.check().unwrap();
    }

    #[test]
    fn child_imports_and_releases_two_levels_deep() {
        let root = arena(0x4000_0000, 0x100_0000);
        let mid: Arena = Arena::create(
            ArenaConfig::new("mid", Q)
                .source(&root, 0x10_0000)
                .meta(&HeapMeta),
        )
        .unwrap();
        let leaf: Arena = Arena::create(
            ArenaConfig::new("leaf", Q)
                .source(&mid, 0x4000)
                .meta(&HeapMeta),
        )
        .unwrap();
        let x = leaf.alloc(0x1000, Policy::InstantFit).unwrap();
        let y = leaf.alloc(0x6000, Policy::InstantFit).unwrap();
        assert_eq!(
            (
                leaf.stats().imports,
                mid.stats().imports,
                root.stats().allocs
            ),
            (2, 1, 1)
        );
        assert_eq!(mid.size().alloc, 0x4000 + 0x6000);
        assert_eq!(root.size().alloc, 0x10_0000);
        assert_eq!(segments(&leaf)[0], (x, 0x4000, IMPORTED));
        assert_eq!(kind(root.destroy()), ErrorKind::InUse);
        assert_eq!(
            kind(mid.free(x, 0x4000)),
            ErrorKind::BadFree,
            "a child's span is released, not freed"
        );
        leaf.free(y, 0x6000).unwrap();
        assert_eq!(leaf.stats().releases, 1);
        leaf.free(x, 0x1000).unwrap();
        assert_eq!(segments(&leaf), vec![]);
        assert_eq!(
            mid.size().total,
            0,
            "mid released its span when leaf gave everything back"
        );
        assert_eq!(root.size().alloc, 0);
        root.check().unwrap();
        mid.check().unwrap();
        leaf.check().unwrap();
        leaf.destroy().unwrap();
        mid.destroy().unwrap();
        root.destroy().unwrap();
        assert_eq!(segments(&root), vec![]);
    }

    #[test]
    fn failed_imports_change_nothing() {
        let root = arena(0, 0x10000);
        let child: Arena = Arena::create(
            ArenaConfig::new("child", Q)
                .source(&root, 0)
                .meta(&HeapMeta),
        )
        .unwrap();
        child.fail_imports(1);
        assert_eq!(
            kind(child.alloc(Q, Policy::InstantFit)),
            ErrorKind::ImportFailed
        );
        assert_eq!((child.size().total, root.size().alloc), (0, 0));
        let x = child.alloc(Q, Policy::InstantFit).unwrap();
        assert_eq!(
            kind(child.alloc(0x10000, Policy::InstantFit)),
            ErrorKind::ImportFailed,
            "root is full"
        );
        assert_eq!(
            kind(child.xalloc(Q, &Constraints::aligned(0x8000), Policy::InstantFit)),
            ErrorKind::NoSpace,
            "xalloc never imports"
        );
        assert_eq!(child.stats().import_fails, 2);
        child.free(x, Q).unwrap();
        root.check().unwrap();
        child.check().unwrap();
    }

    #[test]
    fn destroy_refuses_live_allocations_then_releases_spans() {
        let root = arena(0, 0x100000);
        let child: Arena = Arena::create(
            ArenaConfig::new("child", Q)
                .source(&root, 0x8000)
                .meta(&HeapMeta),
        )
        .unwrap();
        child.add_span(0x200000, 0x1000).unwrap();
        let x = child.alloc(0x2000, Policy::InstantFit).unwrap();
        assert_eq!(kind(child.destroy()), ErrorKind::InUse);
        assert_eq!(child.size().total, 0x9000);
        child.free(x, 0x2000).unwrap();
        child.add_span(0x300000, 0x1000).unwrap();
        assert_eq!(root.stats().children, 1);
        child.destroy().unwrap();
        assert_eq!(root.stats().children, 0);
        assert_eq!(child.size(), ArenaSize::default());
        assert_eq!(root.size().alloc, 0);
        root.destroy().unwrap();
    }

    #[test]
    fn dropping_a_child_gives_back_its_spans_and_detaches() {
        let root = arena(0, 0x100000);
        {
            let child: Arena = Arena::create(
                ArenaConfig::new("child", Q)
                    .source(&root, 0)
                    .meta(&HeapMeta),
            )
            .unwrap();
            child.alloc(0x3000, Policy::InstantFit).unwrap();
            assert_eq!(root.size().alloc, 0x3000);
        }
        assert_eq!((root.size().alloc, root.stats().children), (0, 0));
        root.check().unwrap();
    }

    struct Pages {
        left: AtomicUsize,
    }

    impl MetaSource for Pages {
        fn alloc_pages(&self, pages: usize) -> Option<core::ptr::NonNull<u8>> {
            self.left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    n.checked_sub(pages)
                })
                .ok()?;
            HeapMeta.alloc_pages(pages)
        }

        unsafe fn free_pages(&self, base: core::ptr::NonNull<u8>, pages: usize) {
            self.left.fetch_add(pages, Ordering::AcqRel);
            // SAFETY: the caller's promise: the pages came from `alloc_pages`,
            // that is from `HeapMeta`.
            unsafe { HeapMeta.free_pages(base, pages) }
        }
    }

    #[test]
    fn running_out_of_tags_is_a_clean_no_space() {
        let pages = Pages {
            left: AtomicUsize::new(1),
        };
        let a: Arena = Arena::create(
            ArenaConfig::new("tight", 1)
                .span(0, 1 << 20)
                .meta(&pages)
                .static_tags(false),
        )
        .unwrap();
        let mut live = Vec::new();
        let err = loop {
            match a.alloc(1, Policy::InstantFit) {
                Ok(x) => live.push(x),
                Err(e) => break e,
            }
            // Free every other one so each allocation needs a fresh tag.
            if let Ok(y) = a.alloc(1, Policy::InstantFit) {
                live.push(y);
            }
        };
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        assert!(live.len() > 8 && live.len() < crate::tag::TAGS_PER_PAGE);
        let before = segments(&a);
        assert_eq!(kind(a.alloc(1, Policy::InstantFit)), ErrorKind::NoSpace);
        assert_eq!(segments(&a), before);
        // Frees never need a tag.
        for x in live {
            a.free(x, 1).unwrap();
        }
        a.check().unwrap();
        drop(a);
        assert_eq!(pages.left.load(Ordering::Acquire), 1, "the page went back");
    }

    #[test]
    fn static_pool_tags_go_back_when_the_arena_is_dropped() {
        let a: Arena = Arena::create(ArenaConfig::new("static", Q).span(0, 0x100000)).unwrap();
        let x = a.alloc(Q, Policy::InstantFit).unwrap();
        let owned = a.stats().tags;
        assert!(owned >= TAGS_PER_OP as u64);
        a.free(x, Q).unwrap();
        a.check().unwrap();
        drop(a);
        // Other tests share the pool, so only check that it is not drained.
        assert!(crate::static_tags_available() > 0);
    }

    #[test]
    fn hash_grows_with_live_segments() {
        let a = arena(0, 1 << 32);
        let live: Vec<u64> = (0..5000)
            .map(|_| a.alloc(Q, Policy::InstantFit).unwrap())
            .collect();
        let s = a.stats();
        assert!(s.hash_buckets >= 2048 && s.hash_resizes >= 1, "{s:?}");
        a.check().unwrap();
        for x in live {
            a.free(x, Q).unwrap();
        }
        a.check().unwrap();
        assert_eq!(a.stats().free_segments, 1);
    }

    /// Meta pages from the heap that counts what is out and how often a
    /// run of pages (a hash table past its first page) was asked for, and
    /// refuses runs when `refuse_runs`.
    struct RunCounter {
        refuse_runs: bool,
        runs_asked: AtomicUsize,
        out: AtomicUsize,
    }

    impl RunCounter {
        const fn new(refuse_runs: bool) -> Self {
            RunCounter {
                refuse_runs,
                runs_asked: AtomicUsize::new(0),
                out: AtomicUsize::new(0),
            }
        }
    }

    impl MetaSource for RunCounter {
        fn alloc_pages(&self, pages: usize) -> Option<core::ptr::NonNull<u8>> {
            if pages > 1 {
                self.runs_asked.fetch_add(1, Ordering::AcqRel);
                if self.refuse_runs {
                    return None;
                }
            }
            let base = HeapMeta.alloc_pages(pages)?;
            self.out.fetch_add(pages, Ordering::AcqRel);
            Some(base)
        }

        unsafe fn free_pages(&self, base: core::ptr::NonNull<u8>, pages: usize) {
            self.out.fetch_sub(pages, Ordering::AcqRel);
            // SAFETY: the caller's promise: the pages came from `alloc_pages`,
            // that is from `HeapMeta`.
            unsafe { HeapMeta.free_pages(base, pages) }
        }
    }

    #[test]
    fn defect_6_hash_growth_moves_a_bounded_number_of_buckets_per_call() {
        let a = arena(0, 1 << 40);
        let mut live = Vec::new();
        for i in 0..100_000 {
            live.push(a.alloc(Q, Policy::InstantFit).unwrap());
            if i % 10_007 == 0 {
                a.check().unwrap();
            }
        }
        let s = a.stats();
        assert!(s.hash_buckets >= 65_536 && s.hash_resizes >= 5, "{s:?}");
        a.check().unwrap();
        for (i, x) in live.into_iter().enumerate() {
            a.free(x, Q).unwrap();
            if i % 10_007 == 0 {
                a.check().unwrap();
            }
        }
        let most = a.inner.lock().hash.most_moved;
        // Today's whole-table rehash moved 32,769 segments in one call.
        assert!(
            most > 0 && most <= crate::hash::MIGRATE_SEGMENTS,
            "one call rehashed {most} segments"
        );
    }

    #[test]
    fn frees_and_allocations_in_the_middle_of_a_resize_find_their_segments() {
        let a = arena(0, 1 << 40);
        let mut live = Vec::new();
        let mut calls_while_draining = 0;
        for round in 0..6000u64 {
            live.push(a.alloc(Q, Policy::InstantFit).unwrap());
            let draining = a.inner.lock().hash.buckets_in(true) > 0;
            if draining {
                calls_while_draining += 1;
                // Free one from each end: old and new buckets alike.
                if round % 3 == 0 {
                    let x = live.swap_remove((round as usize * 7919) % live.len());
                    a.free(x, Q).unwrap();
                }
                a.check().unwrap();
            }
        }
        assert!(calls_while_draining > 50, "{calls_while_draining}");
        for x in live {
            a.free(x, Q).unwrap();
        }
        a.check().unwrap();
        assert_eq!(a.stats().hash_buckets, 16);
    }

    /// Meta pages from the heap; every request for a table first takes a
    /// quantum from the arena being served, as a kernel's meta source over
    /// that arena would, and notes how deeply such requests nest.
    struct Reentrant {
        arena: std::sync::OnceLock<&'static Arena<'static>>,
        depth: AtomicUsize,
        deepest: AtomicUsize,
    }

    impl MetaSource for Reentrant {
        fn alloc_pages(&self, pages: usize) -> Option<core::ptr::NonNull<u8>> {
            if pages > 1 {
                let depth = self.depth.fetch_add(1, Ordering::AcqRel) + 1;
                self.deepest.fetch_max(depth, Ordering::AcqRel);
                // Past a few levels stop taking from the arena, so that
                // growth that recurses ends instead of overflowing the stack.
                if depth <= 4
                    && let Some(arena) = self.arena.get()
                {
                    arena.alloc(Q, Policy::InstantFit).ok()?;
                }
                let table = crate::HeapMeta.alloc_pages(pages);
                self.depth.fetch_sub(1, Ordering::AcqRel);
                return table;
            }
            crate::HeapMeta.alloc_pages(pages)
        }

        unsafe fn free_pages(&self, base: core::ptr::NonNull<u8>, pages: usize) {
            // SAFETY: the pages came from `HeapMeta`.
            unsafe { crate::HeapMeta.free_pages(base, pages) }
        }
    }

    #[test]
    fn hash_growth_fetches_one_table_at_a_time_when_the_meta_source_allocates_here() {
        let meta: &'static Reentrant = Box::leak(Box::new(Reentrant {
            arena: std::sync::OnceLock::new(),
            depth: AtomicUsize::new(0),
            deepest: AtomicUsize::new(0),
        }));
        let a: &'static Arena<'static> = Box::leak(Box::new(
            Arena::create(ArenaConfig::new("reentrant", Q).span(0, 1 << 40).meta(meta)).unwrap(),
        ));
        let _ = meta.arena.set(a);
        for _ in 0..20_000 {
            a.alloc(Q, Policy::InstantFit).unwrap();
        }
        a.check().unwrap();
        assert!(a.stats().hash_buckets >= 8192);
        // Before the growth was claimed, the meta source's own allocation
        // asked for the same table again, and that request for another:
        // the nesting only stopped at the source's limit (5).
        assert_eq!(meta.deepest.load(Ordering::Acquire), 1);
    }

    #[test]
    fn defect_6_refused_table_backs_off() {
        let meta = RunCounter::new(true);
        let a: Arena =
            Arena::create(ArenaConfig::new("refused", Q).span(0, 1 << 40).meta(&meta)).unwrap();
        let live: Vec<u64> = (0..100_000)
            .map(|_| a.alloc(Q, Policy::InstantFit).unwrap())
            .collect();
        a.check().unwrap();
        // 100,000 live segments pass the 1-page tables' load (512) after
        // eight doublings, so a meta source asked once per doubling is
        // asked about as often.
        let asked = meta.runs_asked.load(Ordering::Acquire);
        // Today it was asked after every successful call: 99,488 times.
        assert!(asked <= 16, "asked for a table {asked} times");
        for x in live {
            a.free(x, Q).unwrap();
        }
        a.check().unwrap();
    }

    #[test]
    fn defect_9_hash_shrinks_when_the_arena_empties() {
        let meta = RunCounter::new(false);
        let a: Arena =
            Arena::create(ArenaConfig::new("shrinks", Q).span(0, 1 << 40).meta(&meta)).unwrap();
        for round in 0..3 {
            let live: Vec<u64> = (0..20_000)
                .map(|_| a.alloc(Q, Policy::InstantFit).unwrap())
                .collect();
            assert!(a.stats().hash_buckets >= 8192, "round {round}");
            for x in live {
                a.free(x, Q).unwrap();
            }
            a.check().unwrap();
            let s = a.stats();
            assert_eq!(s.hash_buckets, 16, "round {round}: {s:?}");
            assert_eq!(
                meta.out.load(Ordering::Acquire) as u64,
                s.tag_pages,
                "round {round}: the meta pages out are the tag pages alone"
            );
        }
        drop(a);
        assert_eq!(meta.out.load(Ordering::Acquire), 0);
    }

    #[test]
    fn checker_names_the_broken_invariant() {
        let a = arena(0, 0x100000);
        let x = a.alloc(0x2000, Policy::InstantFit).unwrap();
        a.inner.lock().bytes_free += Q;
        let e = a.check().unwrap_err();
        assert_eq!(
            (e.kind(), e.what()),
            (ErrorKind::Corrupt, "byte counts disagree with the segments")
        );
        a.inner.lock().bytes_free -= Q;
        a.check().unwrap();
        {
            // Mark the allocated segment free without listing it.
            let inner = a.inner.lock();
            let seg = inner.seg_head.and_then(|s| s.seg_next()).unwrap();
            assert_eq!(seg.start(), x);
            seg.set_kind(Kind::Free);
        }
        let e = a.check().unwrap_err();
        assert_eq!(
            (e.kind(), e.what(), e.addr()),
            (
                ErrorKind::Corrupt,
                "free segment is not on its freelist",
                Some(x)
            )
        );
        a.inner
            .lock()
            .seg_head
            .and_then(|s| s.seg_next())
            .unwrap()
            .set_kind(Kind::Alloc(AllocBy::Alloc));
        a.check().unwrap();
        a.inner.lock().spans += 1;
        assert_eq!(a.check().unwrap_err().kind(), ErrorKind::Corrupt);
        a.inner.lock().spans -= 1;
        a.free(x, 0x2000).unwrap();
        a.check().unwrap();
    }

    /// A deterministic shuffle of `0..n` (SplitMix64 and Fisher-Yates).
    fn shuffled(n: u64, seed: u64) -> Vec<u64> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut v: Vec<u64> = (0..n).collect();
        for i in (1..v.len()).rev() {
            v.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        v
    }

    #[test]
    fn defect_8_import_cost_does_not_grow_with_spans() {
        // 4096 one-quantum spans with three-quantum gaps, added in a shuffled
        // order; then one span more below, between and above them all. Each
        // addition may look at O(log spans) span markers, not at every span.
        const N: u64 = 4096;
        let budget = 4 * u64::from(N.ilog2()) + 4;
        let base = 0x100_0000;
        let a: Arena = Arena::create(ArenaConfig::new("spans", Q).meta(&HeapMeta)).unwrap();
        for i in shuffled(N, 8) {
            a.add_span(base + i * 4 * Q, Q).unwrap();
        }
        a.check().unwrap();
        for extra in [base - 2 * Q, base + (N / 2) * 4 * Q + Q, base + N * 4 * Q] {
            let before = a.inner.lock().span_steps();
            a.add_span(extra, Q).unwrap();
            let cost = a.inner.lock().span_steps() - before;
            assert!(
                cost <= budget,
                "adding a span at {extra:#x} to {N} looked at {cost} span markers"
            );
            let before = a.inner.lock().span_steps();
            assert_eq!(kind(a.add_span(extra, Q)), ErrorKind::Overlap);
            let cost = a.inner.lock().span_steps() - before;
            assert!(cost <= budget, "refusing an overlap looked at {cost}");
            let before = a.inner.lock().span_steps();
            assert!(a.contains(extra, Q).unwrap());
            let cost = a.inner.lock().span_steps() - before;
            assert!(cost <= budget, "contains looked at {cost}");
        }
        a.check().unwrap();
        // Releasing an imported span (a child's span wholly free again).
        let parent = arena(0x4000_0000, (N + 1) * Q);
        let child: Arena = Arena::create(
            ArenaConfig::new("child", Q)
                .source(&parent, Q)
                .meta(&HeapMeta),
        )
        .unwrap();
        let addrs: Vec<u64> = (0..N)
            .map(|_| child.alloc(Q, Policy::InstantFit).unwrap())
            .collect();
        assert_eq!(child.stats().spans, N);
        for &i in &shuffled(N, 9)[..8] {
            let before = child.inner.lock().span_steps();
            child.free(addrs[i as usize], Q).unwrap();
            let cost = child.inner.lock().span_steps() - before;
            assert!(
                cost <= budget,
                "releasing a span looked at {cost} span markers"
            );
            let before = child.inner.lock().span_steps();
            assert_eq!(
                child.alloc(Q, Policy::InstantFit).unwrap(),
                addrs[i as usize]
            );
            let cost = child.inner.lock().span_steps() - before;
            assert!(
                cost <= budget,
                "importing a span looked at {cost} span markers"
            );
        }
        child.check().unwrap();
    }

    #[test]
    fn span_tree_stays_shallow_in_any_insertion_order() {
        const N: u64 = 10_000;
        let bound = 3 * N.ilog2() as usize + 4;
        // Shuffled, ascending (kmem_default imports 64 KiB spans one after
        // another), and descending.
        let orders: [Vec<u64>; 3] = [shuffled(N, 1), (0..N).collect(), (0..N).rev().collect()];
        for order in orders {
            let a: Arena = Arena::create(ArenaConfig::new("spans", Q).meta(&HeapMeta)).unwrap();
            for &i in &order {
                a.add_span(0x1_0000_0000 + i * 0x10000, 0x10000).unwrap();
            }
            let depth = a.inner.lock().span_tree.depth();
            assert!(depth <= bound, "{N} spans make a tree {depth} deep");
            a.check().unwrap();
        }
    }

    #[test]
    fn spans_overlapping_anywhere_are_refused_and_adjacent_ones_taken() {
        let a: Arena = Arena::create(ArenaConfig::new("spans", Q).meta(&HeapMeta)).unwrap();
        for base in [0x10_0000, 0x30_0000, 0x50_0000] {
            a.add_span(base, 0x10_0000).unwrap();
        }
        let before = segments(&a);
        for (base, size) in [
            (0x0f_f000, 0x2000),    // over the start of the first
            (0x1f_f000, 0x2000),    // over the end of the first
            (0x38_0000, 0x1000),    // inside the second
            (0x30_0000, 0x10_0000), // the second exactly
            (0x2f_f000, 0x10_2000), // enclosing the second
            (0x0, 0x100_0000),      // enclosing them all
            (0x1f_f000, 0x11_2000), // from the first into the second
            (0x5f_f000, 0x1000),    // the last quantum of the last
        ] {
            assert_eq!(
                kind(a.add_span(base, size)),
                ErrorKind::Overlap,
                "{base:#x}+{size:#x}"
            );
        }
        assert_eq!(segments(&a), before);
        a.check().unwrap();
        // Adjacent on either side, filling the gaps exactly, below and above.
        for (base, size) in [
            (0x20_0000, 0x10_0000),
            (0x40_0000, 0x10_0000),
            (0x0f_f000, 0x1000),
            (0x60_0000, 0x1000),
            (0x0, Q),
        ] {
            a.add_span(base, size).unwrap();
            a.check().unwrap();
        }
        let starts: Vec<u64> = segments(&a)
            .into_iter()
            .filter(|s| s.2 == SPAN)
            .map(|s| s.0)
            .collect();
        assert_eq!(
            starts,
            [
                0x0, 0x0f_f000, 0x10_0000, 0x20_0000, 0x30_0000, 0x40_0000, 0x50_0000, 0x60_0000
            ]
        );
        assert!(
            !a.contains(0x1f_f000, 0x2000).unwrap(),
            "two spans are not one"
        );
        assert!(a.contains(0x60_0000, Q).unwrap());
        assert!(!a.contains(0x60_1000, Q).unwrap());
        assert!(!a.contains(Q, Q).unwrap());
    }

    /// Removes the span starting at `start`, which must be wholly free.
    fn remove_free_span(a: &Arena<'_>, start: u64) {
        let mut inner = a.inner.lock();
        let (span, _) = inner.span_tree.around(start + 1);
        let span = span.filter(|s| s.start() == start).unwrap();
        let seg = span.seg_next().unwrap();
        assert!(seg.is_free() && seg.size() == span.size());
        inner.remove_span(span, seg);
    }

    #[test]
    fn spans_removed_in_any_order_leave_the_rest_in_order() {
        const N: u64 = 300;
        let a: Arena = Arena::create(ArenaConfig::new("spans", Q).meta(&HeapMeta)).unwrap();
        for i in shuffled(N, 2) {
            a.add_span(i * 2 * Q, Q).unwrap();
            a.check().unwrap();
        }
        let mut left: std::collections::BTreeSet<u64> = (0..N).map(|i| i * 2 * Q).collect();
        for i in shuffled(N, 3) {
            remove_free_span(&a, i * 2 * Q);
            left.remove(&(i * 2 * Q));
            a.check().unwrap();
            let starts: Vec<u64> = segments(&a)
                .into_iter()
                .filter(|s| s.2 == SPAN)
                .map(|s| s.0)
                .collect();
            assert_eq!(starts, left.iter().copied().collect::<Vec<_>>());
        }
        assert_eq!(a.inner.lock().span_tree.depth(), 0);
    }

    #[test]
    fn checker_names_a_broken_span_tree() {
        let a: Arena = Arena::create(ArenaConfig::new("spans", Q).meta(&HeapMeta)).unwrap();
        for i in shuffled(64, 4) {
            a.add_span(i * 2 * Q, Q).unwrap();
        }
        a.check().unwrap();
        let what = |a: &Arena<'_>| a.check().unwrap_err().what();
        // The first marker in address order that has a lower child.
        let node = {
            let inner = a.inner.lock();
            let mut node = inner.seg_head.unwrap();
            while !node.is_span() || node.lower().is_none() {
                node = node.seg_next().unwrap();
            }
            node
        };
        let (lower, higher) = (node.lower(), node.higher());
        // A child cut off: its spans are missing from the tree.
        node.set_lower(None);
        assert_eq!(what(&a), "span tree does not hold exactly the span markers");
        node.set_lower(lower);
        a.check().unwrap();
        // Children hung on the wrong sides.
        node.set_lower(higher);
        node.set_higher(lower);
        assert_eq!(
            what(&a),
            "span tree is out of order or a child outranks its parent"
        );
        node.set_lower(lower);
        node.set_higher(higher);
        a.check().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Adding, removing and looking up spans agrees with a map of the
        /// spans, and the checker passes after every step.
        #[test]
        fn spans_follow_a_model(
            ops in proptest::collection::vec((0u8..3, 0u64..256, 1u64..8), 1..200)
        ) {
            let a: Arena = Arena::create(ArenaConfig::new("model", Q).meta(&HeapMeta)).unwrap();
            let mut model = std::collections::BTreeMap::<u64, u64>::new();
            for (op, slot, len) in ops {
                let (base, size) = (slot * Q, len * Q);
                match op {
                    0 => {
                        let overlaps = model.range(..base + size).next_back().is_some_and(|(_, &end)| end > base);
                        let got = a.add_span(base, size);
                        if overlaps {
                            proptest::prop_assert_eq!(kind(got), ErrorKind::Overlap);
                        } else {
                            proptest::prop_assert!(got.is_ok());
                            model.insert(base, base + size);
                        }
                    }
                    1 => {
                        if let Some((&start, _)) = model.range(base..).next().or(model.iter().next()) {
                            remove_free_span(&a, start);
                            model.remove(&start);
                        }
                    }
                    _ => {
                        let inside = model.range(..=base).next_back().is_some_and(|(_, &end)| base + size <= end);
                        proptest::prop_assert_eq!(a.contains(base, size).unwrap(), inside);
                    }
                }
                proptest::prop_assert!(a.check().is_ok());
                let spans: Vec<(u64, u64)> = segments(&a)
                    .into_iter()
                    .filter(|s| s.2 == SPAN)
                    .map(|s| (s.0, s.0 + s.1))
                    .collect();
                proptest::prop_assert_eq!(spans, model.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let a: Arena = Arena::new("ééééééééééééééééééééé", Q).unwrap();
        assert_eq!(a.name().len(), 32);
        assert_eq!(
            kind(Arena::<DefaultLock>::new("q", 3)),
            ErrorKind::BadConstraint
        );
    }
}
