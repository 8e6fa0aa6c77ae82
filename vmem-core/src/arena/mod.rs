//! The arena: spans and segments under one lock, the allocation policies,
//! import from a source and release back to it, and the checker.
//!
//! Its parts, each importing only those above it in this list:
//! - `front`: what the arena asks of the layers above it;
//! - `span_tree`: span markers by start;
//! - `segment`: the state under the lock and the verbs that change it;
//! - `policy`: instant, best and next fit;
//! - `check`: the checker;
//! - this module: the public API and configuration over them.

use crate::sync::atomic::{AtomicUsize, Ordering};

use lock_api::{Mutex, MutexGuard, RawMutex};

use crate::constraint::{Constraints, Fit, round_up};
use crate::error::{Error, ErrorKind, Result};
use crate::fault::{FaultPlan, FaultSchedule, FaultSite};
use crate::hash::Table;
use crate::meta::{MetaPages, MetaSource};
use crate::name::{self, Name};
use crate::tag::{AllocBy, Importer, Kind, take_static_batch};

mod check;
mod front;
mod policy;
mod segment;
mod span_tree;
#[cfg(test)]
mod tests;

pub(crate) use front::{Backing, FreeError, QuantumFront};
pub use policy::Policy;
use segment::Inner;

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
    /// Buckets in the allocated-segment hash: 16 bytes each, the heads of
    /// two chains.
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
            inner: Mutex::new(Inner::new(config.quantum)),
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

    /// Allocates `size` integers meeting `constraints` by `policy`. Free it
    /// with [`Arena::xfree`].
    ///
    /// A request constrained by alignment and phase alone imports when no
    /// free segment holds a placement, as illumos's and FreeBSD's
    /// `vmem_xalloc` do: the arena asks its source for a span of `size +
    /// phase` (at least its minimum import) aligned to `align`, and places
    /// the allocation at the span's start plus the phase. So such a request
    /// fails only when the arena's free space holds no placement and the
    /// source cannot supply an aligned span (`ImportFailed`; `NoSpace`
    /// without a source). A request with a `nocross` boundary or a `[min,
    /// max)` window never imports: a source cannot promise constraints on
    /// the child's address space, so only the arena's spans are searched.
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
        inner.check()
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
        let attached = inner.detach(release_to(self.source, self.importer));
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
            Some((seg, addr)) => Ok(inner.allocate_in(seg, addr, fit.size, by, policy)),
            None if fit.may_import() => {
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
            let e = if by == AllocBy::Xalloc {
                Error::new(ErrorKind::NoSpace, "no free segment meets the request")
            } else {
                Error::new(ErrorKind::NoSpace, "no free segment is large enough")
            };
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
        // An aligned request (an xalloc, a slab, a child's aligned import)
        // asks for an aligned span, so the source decides whether it has
        // one: the request then fails only when the source cannot supply
        // it.
        let (size, align) = match fit.import_request(self.quantum) {
            Ok(request) => request,
            Err(e) => return (inner, Err(e)),
        };
        let size = size.max(self.import_min);
        drop(inner);
        let Ok(base) = source.import(self.importer, size, align) else {
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
        if let Some(addr) = fit.place_in(seg.start(), seg.end()) {
            inner.imports += 1;
            event!(arena = self.name(), base, size, "imported span");
            let addr = inner.allocate_in(seg, addr, fit.size, by, policy);
            return (inner, Ok(addr));
        }
        // Reached only when a source ignores the alignment asked of it: the
        // span goes back at once, as an unusable one does.
        if let Some(span) = seg.seg_prev() {
            inner.remove_span(span, seg);
        }
        inner.import_fails += 1;
        event!(arena = self.name(), base, size, "import misaligned");
        drop(inner);
        give_back();
        let e = Error::new(
            ErrorKind::ImportFailed,
            "the source supplied a span without the asked alignment",
        );
        (self.inner.lock(), Err(e.at(base)))
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
        let Some(found) = inner.hash.lookup(addr) else {
            return Err(Error::new(ErrorKind::BadFree, "address is not allocated").at(addr));
        };
        let seg = found.seg;
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
        let released = inner.free_segment(found);
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

/// Gives each span it is called with back to `source` as `importer`, if
/// there is a source (for [`Inner::detach`], which has no source of its
/// own).
fn release_to<'a>(source: Option<&'a dyn Source>, importer: Importer) -> impl FnMut(u64, u64) + 'a {
    move |base, size| {
        if let Some(source) = source {
            let _ = source.release(importer, base, size);
        }
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
        if inner.detach(release_to(self.source, self.importer))
            && let Some(source) = self.source
        {
            source.detach();
        }
        // SAFETY: the hash's tables come from `self.meta`.
        unsafe { inner.hash.reset().give_back(self.meta) };
        inner.tags.dispose(self.meta);
    }
}
