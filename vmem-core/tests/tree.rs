//! Trees of arenas: what a parent and the arenas under it may do to each
//! other.
//!
//! - Lock order (issue 12, defect 4): an arena calls its source with its
//!   own lock dropped, so a parent whose meta source allocates from a
//!   descendant (its child, or its grandchild) gets its tag pages and hash
//!   tables while that descendant imports, and takes spans back while it
//!   releases, without a deadlock. Each such test runs in a thread and
//!   fails after a timeout instead of hanging.
//! - Calls that would break the tree (defect 10): releasing a span a child
//!   arena imported, and destroying an arena an object cache is built on,
//!   are refused and change nothing.

use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use vmem_core::{
    Arena, ArenaConfig, ArenaMeta, CPU0, CacheConfig, ErrorKind, HeapMeta, Importer, MetaSource,
    ObjectCache, Policy, Segment, SegmentKind, Source,
};
use vmem_testkit::walk;

const Q: u64 = 0x1000;

/// How long a test body may take before it counts as deadlocked.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `body` in a thread and fails if it neither returns nor panics
/// within [`DEADLINE`] (a deadlock spins forever: the thread is left behind).
fn within_deadline(name: &str, body: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match finished.recv_timeout(DEADLINE) {
        Ok(()) => worker.join().unwrap(),
        // The body panicked: the sender is gone; report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: no result after {DEADLINE:?}: deadlocked")
        }
    }
}

fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// `bytes` of zeroed host memory aligned to a meta page (a page), never freed: the
/// integers of the tree's root, so meta pages from any arena of the tree
/// are real memory.
fn buffer(bytes: usize) -> Range<u64> {
    let base = vmem_testkit::buffer(bytes);
    base..base + bytes as u64
}

/// A parent's meta source that takes pages from an arena under the parent
/// ([`ArenaMeta`] over it) once that arena is made, and from the heap
/// before (or when that arena has no free page).
struct FromDescendant {
    arena: OnceLock<&'static Arena<'static>>,
    /// Integers of the tree: pages from the descendant lie here.
    tree: Range<u64>,
    /// Pages the descendant handed over.
    from_descendant: AtomicUsize,
}

impl FromDescendant {
    fn new(tree: Range<u64>) -> Self {
        FromDescendant {
            arena: OnceLock::new(),
            tree,
            from_descendant: AtomicUsize::new(0),
        }
    }
}

impl MetaSource for FromDescendant {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        if let Some(arena) = self.arena.get() {
            // SAFETY: the tree's integers are addresses in a buffer this
            // test leaked, and each is used only while allocated.
            if let Some(page) = unsafe { ArenaMeta::new(*arena) }.alloc_pages(pages) {
                self.from_descendant.fetch_add(pages, Ordering::AcqRel);
                return Some(page);
            }
        }
        HeapMeta.alloc_pages(pages)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        match self.arena.get() {
            Some(arena) if self.tree.contains(&(base.as_ptr() as u64)) => {
                // SAFETY: as for `alloc_pages`; the pages came from `arena`.
                unsafe { ArenaMeta::new(*arena).free_pages(base, pages) }
            }
            // SAFETY: the caller's promise; pages outside the tree came
            // from the heap.
            _ => unsafe { HeapMeta.free_pages(base, pages) },
        }
    }
}

/// A tree `depth` arenas deep under a root whose meta source allocates from
/// the leaf; the leaf allocates and frees enough that the root needs new
/// tag pages and a larger hash while the leaf (and every arena between)
/// imports and releases.
fn meta_source_over_a_descendant(depth: usize) {
    let tree = buffer(32 << 20);
    let meta = leak(FromDescendant::new(tree.clone()));
    let root: &'static Arena<'static> = leak(
        Arena::create(
            ArenaConfig::new("root", Q)
                .span(tree.start, tree.end - tree.start)
                .meta(meta)
                .static_tags(false),
        )
        .unwrap(),
    );
    let mut arenas = vec![root];
    let mut leaf = root;
    for level in 1..=depth {
        // Deeper arenas import less at a time, so every level imports often.
        let import = (64 >> level) * Q;
        leaf = leak(
            Arena::create(
                ArenaConfig::new("descendant", Q)
                    .source(leaf, import)
                    .meta(&HeapMeta),
            )
            .unwrap(),
        );
        arenas.push(leaf);
    }
    assert!(meta.arena.set(leaf).is_ok());
    let root_before = root.stats();
    // Three quanta do not tile an import, so the leaf keeps a free quantum
    // or two in each span for the root's meta pages.
    let live: Vec<u64> = (0..1000)
        .map(|_| leaf.alloc(3 * Q, Policy::InstantFit).unwrap())
        .collect();
    let root_after = root.stats();
    assert!(
        root_after.tag_pages > root_before.tag_pages
            && root_after.hash_resizes > root_before.hash_resizes,
        "the root needed tags and a larger hash during imports: {root_after:?}"
    );
    assert!(meta.from_descendant.load(Ordering::Acquire) > 0);
    for x in live {
        leaf.free(x, 3 * Q).unwrap();
    }
    for arena in arenas {
        arena.check().unwrap();
        assert!(arena.stats().releases > 0 || std::ptr::eq(arena, root));
    }
}

#[test]
fn defect_4_meta_source_may_allocate_from_a_descendant() {
    within_deadline("meta source over the child", || {
        meta_source_over_a_descendant(1)
    });
    within_deadline("meta source over the grandchild", || {
        meta_source_over_a_descendant(2)
    });
}

/// The imported span of `child` (its only one).
fn imported_span(child: &Arena<'_>) -> (u64, u64) {
    let spans: Vec<Segment> = walk(child)
        .into_iter()
        .filter(|s| s.kind == SegmentKind::Span { imported: true })
        .collect();
    assert_eq!(spans.len(), 1, "{spans:?}");
    (spans[0].start, spans[0].size)
}

/// A source in front of another that remembers who imported last: the
/// only way to learn an arena's importer identity.
struct Spy<'a> {
    source: &'a dyn Source,
    seen: Mutex<Option<Importer>>,
}

impl Source for Spy<'_> {
    fn import(&self, importer: Importer, size: u64, align: u64) -> vmem_core::Result<u64> {
        *self.seen.lock().unwrap() = Some(importer);
        self.source.import(importer, size, align)
    }

    fn release(&self, importer: Importer, base: u64, size: u64) -> vmem_core::Result<()> {
        self.source.release(importer, base, size)
    }
}

#[test]
fn defect_10_release_of_a_childs_span_is_refused() {
    let parent: Arena = Arena::create(
        ArenaConfig::new("parent", Q)
            .span(0x10_0000, 0x10_0000)
            .meta(&HeapMeta),
    )
    .unwrap();
    let child: Arena = Arena::create(
        ArenaConfig::new("child", Q)
            .source(&parent, 0x4000)
            .meta(&HeapMeta),
    )
    .unwrap();
    let spy = Spy {
        source: &parent,
        seen: Mutex::new(None),
    };
    let sibling: Arena = Arena::create(
        ArenaConfig::new("sibling", Q)
            .source(&spy, 0x4000)
            .meta(&HeapMeta),
    )
    .unwrap();
    let x = child.alloc(Q, Policy::InstantFit).unwrap();
    let y = sibling.alloc(Q, Policy::InstantFit).unwrap();
    let (base, size) = imported_span(&child);
    let (sibling_base, sibling_size) = imported_span(&sibling);
    let siblings_importer = spy.seen.lock().unwrap().unwrap();
    let before = (walk(&parent), walk(&child), walk(&sibling), parent.stats());
    for (importer, base, size, what) in [
        (Importer::new(), base, size, "a made-up importer"),
        (siblings_importer, base, size, "another child's importer"),
        (siblings_importer, sibling_base, Q, "part of the span"),
        (
            siblings_importer,
            sibling_base,
            2 * sibling_size,
            "more than the span",
        ),
    ] {
        let refused = Source::release(&parent, importer, base, size);
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(ErrorKind::BadFree),
            "{what}"
        );
        let after = (walk(&parent), walk(&child), walk(&sibling), parent.stats());
        assert_eq!(after, before, "{what}: nothing changed");
    }
    assert_eq!(
        parent.free(base, size).map_err(|e| e.kind()),
        Err(ErrorKind::BadFree),
        "a child's span is not freed with free"
    );
    parent.check().unwrap();
    // The children themselves still give their spans back when they are
    // wholly free.
    child.free(x, Q).unwrap();
    sibling.free(y, Q).unwrap();
    assert_eq!((child.size().total, parent.size().alloc), (0, 0));
    parent.check().unwrap();
    // A caller importing for itself names its own importer to release.
    let me = Importer::new();
    let z = Source::import(&parent, me, 2 * Q, Q).unwrap();
    assert_eq!(
        Source::release(&parent, Importer::new(), z, 2 * Q).map_err(|e| e.kind()),
        Err(ErrorKind::BadFree)
    );
    Source::release(&parent, me, z, 2 * Q).unwrap();
    assert_eq!(parent.size().alloc, 0);
}

#[test]
fn defect_10_destroy_refuses_an_arena_under_a_cache() {
    let arena: Arena = Arena::create(
        ArenaConfig::new("arena", Q)
            .span(0x10_0000, 0x10_0000)
            .meta(&HeapMeta),
    )
    .unwrap();
    let cache = ObjectCache::new(CacheConfig::new("c", 64, &HeapMeta, &CPU0), &arena).unwrap();
    let obj = cache.alloc().unwrap();
    cache.free(obj).unwrap();
    cache.reap().unwrap();
    assert_eq!(arena.size().alloc, 0, "the cache is empty");
    let before = walk(&arena);
    assert_eq!(
        arena.destroy().map_err(|e| e.kind()),
        Err(ErrorKind::InUse),
        "an object cache is built on the arena"
    );
    assert_eq!(walk(&arena), before);
    arena.check().unwrap();
    drop(cache);
    arena.destroy().unwrap();
    assert_eq!(walk(&arena), vec![]);
}
