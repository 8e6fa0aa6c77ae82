//! Arenas: spans, alloc, free, destroy, quantum caches.

use std::sync::Mutex;

use vmem_core::ErrorKind::*;
use vmem_core::Policy::{BestFit, InstantFit, NextFit};
use vmem_core::{
    Arena, ArenaConfig, ArenaMeta, CPU0, HeapMeta, Importer, QuantumCaches, SegmentKind, Source,
};

use crate::Case;
use crate::harness::{
    Outcome, Q, after_alloc, alone, arena, cache, child, on_standard, probe, standard,
};

/// The layer's cases, in the page's order; the longer ones are functions
/// below, named after their ids.
#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("arena/quantum-zero", "`ArenaConfig::new(name, 0)`: quantum zero", BadConstraint,
            || alone(|| create_plain("a", 0))),
        Case::new("arena/quantum-not-power-of-two", "quantum 0x3000, not a power of two", BadConstraint,
            || alone(|| create_plain("a", 0x3000))),
        Case::new("arena/create-span-misaligned", "`create` with a first span whose base is off the quantum", Misaligned,
            || alone(|| create(ArenaConfig::new("a", Q).span(0x800, Q)))),
        Case::new("arena/create-import-min-overflow", "a source with a minimum import of 2^64 - 1 (rounding it up passes 2^64)", Overflow,
            create_import_min_overflow),
        Case::new("arena/create-qcache-span-misaligned", "`create` with quantum caches and a misaligned first span", Misaligned,
            create_qcache_span_misaligned),
        Case::new("arena/span-zero", "`add_span(base, 0)`", ZeroSize,
            add_span(0x40_0000, 0)),
        Case::new("arena/span-overflow", "a span whose end passes 2^64 (`add_span(2^64 - 0x1000, 0x2000)`)", Overflow,
            add_span(u64::MAX - 0xfff, 0x2000)),
        Case::new("arena/span-ends-at-2^64", "a span ending exactly at 2^64 (`add_span(2^64 - 0x1000, 0x1000)`): its end does not fit in a `u64`", Overflow,
            add_span(u64::MAX - 0xfff, 0x1000)),
        Case::new("arena/span-base-misaligned", "a span base off the quantum (0x400800)", Misaligned,
            add_span(0x40_0800, Q)),
        Case::new("arena/span-size-misaligned", "a span size off the quantum (0x1800)", Misaligned,
            add_span(0x40_0000, 0x1800)),
        Case::new("arena/span-overlap-partial", "a span overlapping the end of an existing one", Overlap,
            add_span(0x1f_0000, 0x2_0000)),
        Case::new("arena/span-overlap-inside", "a span inside an existing one", Overlap,
            add_span(0x18_0000, Q)),
        Case::new("arena/span-overlap-around", "a span that contains an existing one", Overlap,
            add_span(0, 0x100_0000)),
        Case::new("arena/span-twice", "the same span added twice", Overlap,
            add_span(0x10_0000, 0x10_0000)),
        Case::new("arena/alloc-zero", "`alloc(0)`", ZeroSize,
            || on_standard(|a| a.alloc(0, InstantFit))),
        Case::new("arena/alloc-overflow", "`alloc(2^64 - 1)`: rounding up to the quantum passes 2^64", Overflow,
            || on_standard(|a| a.alloc(u64::MAX, BestFit))),
        Case::new("arena/alloc-too-large", "`alloc` larger than every free segment", NoSpace,
            || after_alloc(Q, |a, _| a.alloc(0x10_0000, InstantFit))),
        Case::new("arena/alloc-no-spans", "`alloc` from an arena with no span and no source", NoSpace,
            alloc_no_spans),
        Case::new("arena/import-source-full", "`alloc` on an importing arena whose source has no room", ImportFailed,
            import_source_full),
        Case::new("arena/import-crooked-source", "a source that hands back a span off the child's quantum", ImportFailed,
            import_crooked_source),
        Case::new("arena/meta-arena-at-zero", "tags from an `ArenaMeta` over an arena whose only page is at address 0 (no static tags)", NoSpace,
            meta_arena_at_zero),
        Case::new("arena/free-zero", "`free(addr, 0)`", ZeroSize,
            || after_alloc(Q, |a, x| a.free(x, 0))),
        Case::new("arena/free-size-overflow", "`free(addr, 2^64 - 1)`: the size cannot be rounded", Overflow,
            || after_alloc(Q, |a, x| a.free(x, u64::MAX))),
        Case::new("arena/free-never-allocated", "`free` of an address in a free segment", BadFree,
            || after_alloc(Q, |a, _| a.free(0x18_0000, Q))),
        Case::new("arena/free-outside-spans", "`free` of an address in no span", BadFree,
            || on_standard(|a| a.free(0x4000_0000, Q))),
        Case::new("arena/free-interior", "`free` of an address inside an allocated segment", BadFree,
            || after_alloc(0x4000, |a, x| a.free(x + Q, Q))),
        Case::new("arena/free-double", "the same segment freed twice", BadFree,
            free_double),
        Case::new("arena/free-smaller", "`free` with a size smaller than allocated", BadFree,
            || after_alloc(0x3000, |a, x| a.free(x, 0x2000))),
        Case::new("arena/free-larger", "`free` with a size larger than allocated", BadFree,
            || after_alloc(0x3000, |a, x| a.free(x, 0x4000))),
        Case::new("arena/free-wrong-arena", "`free` to another arena than the one that allocated", BadFree,
            free_wrong_arena),
        Case::new("arena/free-child-span", "`free` on a source of a span a child imported", BadFree,
            free_child_span),
        Case::new("arena/free-cache-slab", "`free` on an arena of a slab its object cache holds", BadFree,
            free_cache_slab),
        Case::new("arena/contains-zero", "`contains(addr, 0)`", ZeroSize,
            || on_standard(|a| a.contains(0x10_0000, 0))),
        Case::new("arena/contains-overflow", "`contains` of a range passing 2^64", Overflow,
            || on_standard(|a| a.contains(u64::MAX, 2))),
        Case::new("arena/destroy-live", "`destroy` with a live allocation", InUse,
            || after_alloc(Q, |a, _| a.destroy())),
        Case::new("arena/destroy-child", "`destroy` of a source a child arena imports from (the child has nothing live)", InUse,
            || with_child(0, |_| ())),
        Case::new("arena/destroy-child-live", "`destroy` of a source a child arena holds an imported span of", InUse,
            || with_child(0, |c| c.alloc(Q, InstantFit).unwrap())),
        Case::new("arena/destroy-cache-slabs", "`destroy` of an arena an object cache holds slabs of", InUse,
            || destroy_under_cache(false)),
        Case::new("arena/destroy-qcache-live", "`destroy` with an object live in its quantum caches", InUse,
            || on_qcache_arena(|a| a.alloc(Q, InstantFit).unwrap(), |a, _| a.destroy())),
        Case::new("arena/qcache-quantum", "`QuantumCaches::new` with quantum 0x3000", BadConstraint,
            || alone(|| QuantumCaches::new(0x3000, 0x6000, &HeapMeta, &CPU0))),
        Case::new("arena/qcache-max-zero", "`QuantumCaches::new` with `qcache_max` zero", ZeroSize,
            || alone(|| QuantumCaches::new(Q, 0, &HeapMeta, &CPU0))),
        Case::new("arena/qcache-max-too-large", "`qcache_max` above 16 quanta", BadConstraint,
            || alone(|| QuantumCaches::new(Q, 17 * Q, &HeapMeta, &CPU0))),
        Case::new("arena/qcache-other-quantum", "quantum caches made for quantum 0x1000 given to an arena of quantum 0x200", BadConstraint,
            qcache_other_quantum),
        Case::new("arena/qcache-shared", "the same quantum caches given to a second arena", InUse,
            qcache_shared),
        Case::new("arena/qcache-free-wrong-size", "`free` of a quantum-cached segment with another cached size", BadFree,
            || on_qcache_arena(|a| a.alloc(Q, InstantFit).unwrap(), |a, x| a.free(x, 2 * Q))),
        Case::new("arena/qcache-free-double", "a quantum-cached segment freed twice", BadFree,
            qcache_free_double),
        Case::new("arena/qcache-xfree", "`xfree` of a segment a quantum cache handed out", BadFree,
            || on_qcache_arena(|a| a.alloc(Q, InstantFit).unwrap(), |a, x| a.xfree(x, Q))),
        Case::new("arena/qcache-free-wrong-arena", "a quantum-cached segment freed to another arena with quantum caches", BadFree,
            qcache_free_wrong_arena),
        Case::new("arena/source-import-zero", "`Source::import(arena, importer, 0, quantum)` called directly", ZeroSize,
            || on_standard(|a| Source::import(a, Importer::new(), 0, Q))),
        Case::new("arena/source-import-bad-align", "`Source::import` with align 0x3000", BadConstraint,
            || on_standard(|a| Source::import(a, Importer::new(), Q, 0x3000))),
        Case::new("arena/source-release-of-alloc", "`Source::release` of a segment `alloc` returned", BadFree,
            || after_alloc(Q, |a, x| Source::release(a, Importer::new(), x, Q))),
        Case::new("arena/source-release-childs-span", "`Source::release` of a span a child arena imported, by a made-up importer", BadFree,
            source_release_childs_span),
        Case::new("arena/source-release-other-importer", "`Source::release` of a child's span by another child's importer", BadFree,
            source_release_other_importer),
        Case::new("arena/source-release-part", "`Source::release` of part of a span, by its importer", BadFree,
            source_release_part),
        Case::new("arena/destroy-under-cache", "`destroy` of an arena an empty object cache is built on", InUse,
            || destroy_under_cache(true)),
    ]
}

/// A case that adds the span `[base, base + size)` to a fresh `standard`
/// arena.
fn add_span(base: u64, size: u64) -> impl Fn() -> Outcome {
    move || on_standard(|a| a.add_span(base, size))
}

/// `Arena::create` with the default lock.
fn create(config: ArenaConfig<'_>) -> vmem_core::Result<Arena<'_>> {
    Arena::create(config)
}

/// `Arena::new` with the default lock.
fn create_plain(name: &str, quantum: u64) -> vmem_core::Result<Arena<'static>> {
    Arena::new(name, quantum)
}

/// Quantum caches for sizes up to four quanta.
fn qcaches() -> QuantumCaches<'static> {
    QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap()
}

/// An arena with a span of 1 MiB at `base` served by quantum caches `qc`.
fn qcache_arena<'a>(name: &str, base: u64, qc: &'a QuantumCaches<'a>) -> Arena<'a> {
    Arena::create(
        ArenaConfig::new(name, Q)
            .span(base, 0x10_0000)
            .meta(&HeapMeta)
            .qcache(qc),
    )
    .unwrap()
}

/// Runs `setup` on a fresh arena with quantum caches, then makes `call`
/// on the arena and what `setup` gave.
fn on_qcache_arena<T>(
    setup: impl FnOnce(&Arena<'_>) -> u64,
    call: impl FnOnce(&Arena<'_>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    let qc = qcaches();
    let a = qcache_arena("a", 0x10_0000, &qc);
    let x = setup(&a);
    probe(&[&a], || call(&a, x))
}

/// Whether quantum-cache storage can still be given to an arena (a failed
/// `Arena::create` must not keep it).
fn still_claimable(qc: &QuantumCaches<'_>) -> Result<(), String> {
    match create(ArenaConfig::new("again", Q).qcache(qc)) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "the quantum caches stayed claimed by the failed create: {e}"
        )),
    }
}

/// A source that hands out ranges its child cannot take: off the quantum.
struct CrookedSource;

impl Source for CrookedSource {
    fn import(&self, _importer: Importer, _size: u64, _align: u64) -> vmem_core::Result<u64> {
        Ok(0x10_0800)
    }

    fn release(&self, _importer: Importer, _base: u64, _size: u64) -> vmem_core::Result<()> {
        Ok(())
    }
}

/// A source in front of an arena that keeps the importer identity it was
/// shown: the one way a caller can learn an arena's.
struct Spy<'a> {
    parent: &'a Arena<'a>,
    seen: Mutex<Option<Importer>>,
}

impl Source for Spy<'_> {
    fn import(&self, importer: Importer, size: u64, align: u64) -> vmem_core::Result<u64> {
        *self.seen.lock().unwrap() = Some(importer);
        self.parent.import(importer, size, align)
    }

    fn release(&self, importer: Importer, base: u64, size: u64) -> vmem_core::Result<()> {
        self.parent.release(importer, base, size)
    }
}

/// The imported span of `child` (the first).
fn imported_span(child: &Arena<'_>) -> (u64, u64) {
    let mut span = (0, 0);
    child.walk(|s| {
        if s.kind == (SegmentKind::Span { imported: true }) && span.1 == 0 {
            span = (s.start, s.size);
        }
    });
    span
}

/// A child arena importing from a `standard` root, prepared by `setup`;
/// then the root is destroyed.
fn with_child<T>(import: u64, setup: impl FnOnce(&Arena<'_>) -> T) -> Outcome {
    let root = standard();
    let c = child(&root, import);
    let _kept = setup(&c);
    probe(&[&root, &c], || root.destroy())
}

/// An object cache over a `standard` arena has had an object and given it
/// back (and was reaped, if `reaped`); then the arena is destroyed.
fn destroy_under_cache(reaped: bool) -> Outcome {
    let a = standard();
    let objects = cache(&a, "c", 64, 4);
    let o = objects.alloc().unwrap();
    objects.free(o).unwrap();
    if reaped {
        objects.reap().unwrap();
    }
    probe(&[&a, &objects], || a.destroy())
}

fn create_import_min_overflow() -> Outcome {
    let root = standard();
    probe(&[&root], || {
        create(ArenaConfig::new("a", Q).source(&root, u64::MAX))
    })
}

fn create_qcache_span_misaligned() -> Outcome {
    let qc = qcaches();
    alone(|| create(ArenaConfig::new("a", Q).span(0x800, Q).qcache(&qc))).and(still_claimable(&qc))
}

fn alloc_no_spans() -> Outcome {
    let a: Arena = Arena::create(ArenaConfig::new("a", Q).meta(&HeapMeta)).unwrap();
    probe(&[&a], || a.alloc(Q, NextFit))
}

fn import_source_full() -> Outcome {
    let root = arena(0, 0x1_0000);
    let c = child(&root, 0);
    let _x = c.alloc(0x8000, InstantFit).unwrap();
    probe(&[&root, &c], || c.alloc(0x1_0000, InstantFit))
}

fn import_crooked_source() -> Outcome {
    let c: Arena = Arena::create(
        ArenaConfig::new("child", Q)
            .source(&CrookedSource, 0)
            .meta(&HeapMeta),
    )
    .unwrap();
    probe(&[&c], || c.alloc(Q, InstantFit))
}

fn meta_arena_at_zero() -> Outcome {
    let zero = create(ArenaConfig::new("zero", Q).span(0, Q).meta(&HeapMeta)).unwrap();
    // SAFETY: `ArenaMeta` never hands out the page at 0, the only one
    // `zero` has.
    let meta = unsafe { ArenaMeta::new(&zero) };
    let a = create(ArenaConfig::new("a", Q).meta(&meta).static_tags(false)).unwrap();
    probe(&[&zero, &a], || a.add_span(0x10_0000, 0x10_0000))
}

fn free_double() -> Outcome {
    let a = standard();
    let x = a.alloc(0x2000, InstantFit).unwrap();
    let _y = a.alloc(0x2000, InstantFit).unwrap();
    a.free(x, 0x2000).unwrap();
    probe(&[&a], || a.free(x, 0x2000))
}

fn free_wrong_arena() -> Outcome {
    let a = standard();
    let b = standard();
    let x = a.alloc(Q, InstantFit).unwrap();
    let _y = b.alloc(0x2000, InstantFit).unwrap();
    probe(&[&a, &b], || b.free(x, Q))
}

fn free_child_span() -> Outcome {
    let root = standard();
    let c = child(&root, 0x4000);
    let x = c.alloc(Q, InstantFit).unwrap();
    probe(&[&root, &c], || root.free(x, 0x4000))
}

fn free_cache_slab() -> Outcome {
    let a = standard();
    let objects = cache(&a, "c", 0x1000, 4);
    let _o = objects.alloc().unwrap();
    assert_eq!(a.stats().alloc_segments, 1);
    let mut base = 0;
    a.walk(|s| {
        if s.kind == SegmentKind::Alloc {
            base = s.start
        }
    });
    probe(&[&a, &objects], || a.free(base, objects.stats().slab_size))
}

fn qcache_other_quantum() -> Outcome {
    let qc = qcaches();
    alone(|| create(ArenaConfig::new("a", 0x200).qcache(&qc))).and(still_claimable(&qc))
}

fn qcache_shared() -> Outcome {
    let qc = qcaches();
    let a = qcache_arena("a", 0x10_0000, &qc);
    let _x = a.alloc(Q, InstantFit).unwrap();
    probe(&[&a], || create(ArenaConfig::new("b", Q).qcache(&qc)))
}

fn qcache_free_double() -> Outcome {
    on_qcache_arena(
        |a| {
            let x = a.alloc(2 * Q, InstantFit).unwrap();
            let _y = a.alloc(2 * Q, InstantFit).unwrap();
            a.free(x, 2 * Q).unwrap();
            x
        },
        |a, x| a.free(x, 2 * Q),
    )
}

fn qcache_free_wrong_arena() -> Outcome {
    let qa = qcaches();
    let qb = qcaches();
    let a = qcache_arena("a", 0x10_0000, &qa);
    let b = qcache_arena("b", 0x30_0000, &qb);
    let x = a.alloc(Q, InstantFit).unwrap();
    let _y = b.alloc(Q, InstantFit).unwrap();
    probe(&[&a, &b], || b.free(x, Q))
}

fn source_release_childs_span() -> Outcome {
    let root = standard();
    let c = child(&root, 0x4000);
    let _x = c.alloc(Q, InstantFit).unwrap();
    let (base, size) = imported_span(&c);
    probe(&[&root, &c], || {
        Source::release(&root, Importer::new(), base, size)
    })
}

fn source_release_other_importer() -> Outcome {
    let root = standard();
    let spy = Spy {
        parent: &root,
        seen: Mutex::new(None),
    };
    let c = child(&root, 0x4000);
    let sibling = Arena::create(
        ArenaConfig::new("sibling", Q)
            .source(&spy, 0x4000)
            .meta(&HeapMeta),
    )
    .unwrap();
    let _x = c.alloc(Q, InstantFit).unwrap();
    let _y = sibling.alloc(Q, InstantFit).unwrap();
    let (base, size) = imported_span(&c);
    let other = spy.seen.lock().unwrap().unwrap();
    probe(&[&root, &c, &sibling], || {
        Source::release(&root, other, base, size)
    })
}

fn source_release_part() -> Outcome {
    let a = standard();
    let me = Importer::new();
    let x = Source::import(&a, me, 2 * Q, Q).unwrap();
    probe(&[&a], || Source::release(&a, me, x, Q))
}
