//! The misuse catalogue: every bad input a user can give vmem-core, each
//! tried on a fresh setup.
//!
//! A case passes when its call fails with the kind the catalogue names and
//! leaves everything it touched as it was: the same segments, sizes and
//! gauges (live objects, slabs, magazines, spans; the crate documentation
//! lets a failed call move its counters), and the checker still passes.
//! The catalogue is also the docs page `docs/src/misuse.md`: the part
//! between its two marker comments is rendered from the cases below, and
//! the test fails when the page differs.
//! `VMEM_BLESS=1 cargo test -p vmem-core --test misuse` rewrites that part
//! (the hand-written introduction above it is kept).

use std::alloc::{Layout, alloc_zeroed};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use vmem_core::scenario::Interpreter;
use vmem_core::{
    Arena, ArenaConfig, ArenaMeta, CPU0, CacheConfig, Constraints, ErrorKind, HeapMeta, Importer,
    ObjectCache, Policy, QuantumCaches, Reserve, SizeClasses, Source,
};

// ---------------------------------------------------------------------
// The catalogue's shape.
// ---------------------------------------------------------------------

/// Which part of the API a case misuses; one table each on the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Arena,
    Xalloc,
    Cache,
    Reserve,
    SizeClasses,
    Scenario,
}

impl Layer {
    const ALL: [Layer; 6] = [
        Layer::Arena,
        Layer::Xalloc,
        Layer::Cache,
        Layer::Reserve,
        Layer::SizeClasses,
        Layer::Scenario,
    ];

    /// The prefix every case id of the layer starts with.
    fn prefix(self) -> &'static str {
        match self {
            Layer::Arena => "arena/",
            Layer::Xalloc => "xalloc/",
            Layer::Cache => "cache/",
            Layer::Reserve => "reserve/",
            Layer::SizeClasses => "size/",
            Layer::Scenario => "scenario/",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Layer::Arena => "Arenas: spans, alloc, free, destroy, quantum caches",
            Layer::Xalloc => "Constrained allocation: xalloc and xfree",
            Layer::Cache => "Object caches",
            Layer::Reserve => "Reserves",
            Layer::SizeClasses => "Size classes",
            Layer::Scenario => "The scenario interpreter",
        }
    }

    fn setup(self) -> &'static str {
        match self {
            Layer::Arena => {
                "Each case starts from a fresh arena of quantum 0x1000 (and, where it \
                 needs them, a child arena, an object cache or quantum caches)."
            }
            Layer::Xalloc => {
                "Each case starts from a fresh arena of quantum 0x1000 with a span \
                 [0x100000, 0x200000) unless it says otherwise."
            }
            Layer::Cache => {
                "Caches with debug checks on. \"Memory mode\" cases run over a host \
                 buffer, so freed objects are poisoned and each object has a red zone \
                 and a buffer tag after it."
            }
            Layer::Reserve => {
                "A reserve over a debug cache of 64-byte objects whose arena holds 64 \
                 of them."
            }
            Layer::SizeClasses => {
                "Size classes with debug checks on, over a memory-mode arena of a host \
                 buffer."
            }
            Layer::Scenario => {
                "Each line runs after this setup script, and the kind is the \
                 `error.kind` of its JSON line:"
            }
        }
    }
}

/// One misuse: what is done, what must come back.
struct Case {
    id: &'static str,
    layer: Layer,
    /// The bad input, in one line of Markdown.
    bad: &'static str,
    expect: ErrorKind,
    /// Builds a fresh setup, makes the bad call, and reports what happened.
    run: fn() -> Outcome,
}

/// What a case's call did.
struct Outcome {
    /// `Ok(())` when the call succeeded, else its error kind.
    result: Result<(), ErrorKind>,
    /// Everything observed that differs after the call (empty: nothing changed).
    changed: Vec<String>,
    /// The first checker complaint after the call, if any.
    broken: Option<String>,
}

impl Outcome {
    /// Adds a finding of the case's own (something `probe` cannot see).
    fn and(mut self, extra: Result<(), String>) -> Self {
        if let Err(e) = extra {
            self.changed.push(e);
        }
        self
    }
}

const ALL_KINDS: [ErrorKind; 16] = [
    ErrorKind::Parse,
    ErrorKind::UnknownArena,
    ErrorKind::UnknownCache,
    ErrorKind::UnknownHandle,
    ErrorKind::DuplicateName,
    ErrorKind::ZeroSize,
    ErrorKind::Misaligned,
    ErrorKind::BadConstraint,
    ErrorKind::Overconstrained,
    ErrorKind::Overflow,
    ErrorKind::NoSpace,
    ErrorKind::BadFree,
    ErrorKind::Overlap,
    ErrorKind::InUse,
    ErrorKind::ImportFailed,
    ErrorKind::Corrupt,
];

// ---------------------------------------------------------------------
// Observing that a failed call changed nothing.
// ---------------------------------------------------------------------

/// Something whose state a case compares before and after its call.
trait Observed {
    /// Everything a failed call must leave alone, as text.
    fn state(&self) -> String;
    /// The checker's verdict.
    fn verify(&self) -> Result<(), String>;
}

impl Observed for Arena<'_> {
    fn state(&self) -> String {
        let mut out = String::new();
        self.walk(|s| {
            let _ = write!(out, "{:?}@{:#x}+{:#x} ", s.kind, s.start, s.size);
        });
        let z = self.size();
        let s = self.stats();
        // Gauges only: the crate lets a failed call move its counters
        // (refusals, and operations it undid, such as a reserve that could
        // not be filled giving its slabs back), and take spare tags.
        let _ = write!(
            out,
            "| alloc {:#x} free {:#x} total {:#x} | spans {} alloc_segments {} \
             free_segments {} hash_buckets {} children {}",
            z.alloc,
            z.free,
            z.total,
            s.spans,
            s.alloc_segments,
            s.free_segments,
            s.hash_buckets,
            s.children
        );
        if let Some(qc) = self.qcaches() {
            for (size, s) in qc.stats() {
                let _ = write!(
                    out,
                    " | qcache {size:#x}: in_use {} slabs {} empty {} magazines {}",
                    s.in_use, s.slabs, s.slabs_empty, s.magazines
                );
            }
        }
        format!("arena {}: {out}", self.name())
    }

    fn verify(&self) -> Result<(), String> {
        self.check()
            .map_err(|e| format!("arena {}: {e}", self.name()))
    }
}

impl Observed for ObjectCache<'_> {
    fn state(&self) -> String {
        let s = self.stats();
        // Gauges only, as for arenas.
        format!(
            "cache {}: in_use {} slabs {} empty {} magazines {} depot_full {} \
             depot_empty {} magazine_size {}",
            self.name(),
            s.in_use,
            s.slabs,
            s.slabs_empty,
            s.magazines,
            s.depot_full,
            s.depot_empty,
            s.magazine_size
        )
    }

    fn verify(&self) -> Result<(), String> {
        self.check()
            .map_err(|e| format!("cache {}: {e}", self.name()))
    }
}

impl Observed for SizeClasses<'_> {
    fn state(&self) -> String {
        let mut out = self.arena().state();
        for cache in self.caches() {
            out.push('\n');
            out.push_str(&cache.state());
        }
        out
    }

    fn verify(&self) -> Result<(), String> {
        self.check().map_err(|e| format!("size classes: {e}"))?;
        self.arena().verify()
    }
}

impl Observed for Reserve<'_> {
    fn state(&self) -> String {
        format!(
            "reserve: available {} of {}",
            self.available(),
            self.capacity()
        )
    }

    fn verify(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Makes `call` with `observed` looked at before and after it.
fn probe<T>(observed: &[&dyn Observed], call: impl FnOnce() -> vmem_core::Result<T>) -> Outcome {
    let before: Vec<String> = observed.iter().map(|o| o.state()).collect();
    let result = call().map(|_| ()).map_err(|e| e.kind());
    let changed = observed
        .iter()
        .zip(&before)
        .filter_map(|(o, was)| {
            let now = o.state();
            (now != *was).then(|| format!("before: {was}\n  after:  {now}"))
        })
        .collect();
    let broken = observed.iter().find_map(|o| o.verify().err());
    Outcome {
        result,
        changed,
        broken,
    }
}

// ---------------------------------------------------------------------
// Fresh setups.
// ---------------------------------------------------------------------

const Q: u64 = 0x1000;

/// `Arena::create` with the default lock.
fn create(config: ArenaConfig<'_>) -> vmem_core::Result<Arena<'_>> {
    Arena::create(config)
}

/// `Arena::new` with the default lock.
fn create_plain(name: &str, quantum: u64) -> vmem_core::Result<Arena<'static>> {
    Arena::new(name, quantum)
}

/// An arena of quantum `Q` with the span `[base, base + size)`.
fn arena(base: u64, size: u64) -> Arena<'static> {
    Arena::create(ArenaConfig::new("a", Q).span(base, size).meta(&HeapMeta)).unwrap()
}

/// The arena most cases start from: one span [0x100000, 0x200000).
fn standard() -> Arena<'static> {
    arena(0x10_0000, 0x10_0000)
}

fn child<'a>(parent: &'a Arena<'a>, import: u64) -> Arena<'a> {
    Arena::create(
        ArenaConfig::new("child", Q)
            .source(parent, import)
            .meta(&HeapMeta),
    )
    .unwrap()
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

/// A leaked, page-aligned host buffer whose addresses memory-mode arenas
/// hand out.
fn buffer(bytes: usize) -> u64 {
    let layout = Layout::from_size_align(bytes, 4096).unwrap();
    // SAFETY: non-zero size; the buffer is leaked, so it outlives every use.
    let p = unsafe { alloc_zeroed(layout) };
    assert!(!p.is_null());
    p as u64
}

/// An arena over a fresh 2 MiB host buffer.
fn memory_arena() -> Arena<'static> {
    let bytes = 2 << 20;
    Arena::create(
        ArenaConfig::new("mem", Q)
            .span(buffer(bytes), bytes as u64)
            .meta(&HeapMeta),
    )
    .unwrap()
}

/// A no-touch cache with debug checks, `magazine` rounds per magazine.
fn cache<'a>(arena: &'a Arena<'a>, name: &str, size: u64, magazine: u32) -> ObjectCache<'a> {
    let config = CacheConfig::new(name, size, &HeapMeta, &CPU0)
        .magazine(magazine)
        .debug(true);
    ObjectCache::new(config, arena).unwrap()
}

/// A memory-mode cache with debug checks over `arena` (a `memory_arena`).
fn memory_cache<'a>(arena: &'a Arena<'a>, size: u64, magazine: u32) -> ObjectCache<'a> {
    // SAFETY: every memory-mode arena here hands out addresses of a leaked
    // host buffer that nothing else uses.
    let config = unsafe { CacheConfig::new("obj", size, &HeapMeta, &CPU0).memory() }
        .magazine(magazine)
        .debug(true);
    ObjectCache::new(config, arena).unwrap()
}

/// Size classes with debug checks over `arena` (a `memory_arena`).
fn classes<'a>(arena: &'a Arena<'a>) -> SizeClasses<'a> {
    // SAFETY: as for `memory_cache`.
    unsafe { SizeClasses::new(arena, &HeapMeta, &CPU0, true) }.unwrap()
}

/// The arena reserves sit on: exactly 64 objects of 64 integers.
fn reserve_arena() -> Arena<'static> {
    Arena::create(ArenaConfig::new("r", 64).span(0, 64 * 64).meta(&HeapMeta)).unwrap()
}

/// Writes `byte` at `addr` (inside a leaked host buffer).
fn poke(addr: u64, byte: u8) {
    // SAFETY: callers pass addresses inside a buffer from `buffer`.
    unsafe { (addr as *mut u8).write(byte) }
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
    seen: std::sync::Mutex<Option<Importer>>,
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
        if s.kind == (vmem_core::SegmentKind::Span { imported: true }) && span.1 == 0 {
            span = (s.start, s.size);
        }
    });
    span
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

// ---------------------------------------------------------------------
// The scenario interpreter.
// ---------------------------------------------------------------------

/// What every scenario case starts from.
const WORLD: &str = "\
arena a quantum=4K base=1M size=1M
arena b quantum=1 base=100 size=100
arena p quantum=4K base=16M size=1M
arena k quantum=4K source=p import=64K
cache c size=64 arena=a
cache d size=32 arena=a
reserve r cache=c count=2
h = alloc a 8K
x = xalloc a 4K align=64K
id = alloc b 1
kh = alloc k 4K
o = cache_alloc c
od = cache_alloc d
ro = reserve_alloc r
gone = alloc a 4K
free a gone
";

/// Runs `WORLD`, then `line`, and reports the line's error kind and whether
/// the interpreter's state moved.
fn scenario(line: &str) -> Outcome {
    let mut interpreter = Interpreter::new();
    for (i, setup) in WORLD.lines().enumerate() {
        let out = interpreter.run_line(i + 1, setup).unwrap_or_default();
        assert!(out.contains("\"ok\":true"), "setup line failed: {out}");
    }
    let before = interpreter.render();
    let out = interpreter.run_line(100, line).unwrap_or_default();
    let result = if out.contains("\"ok\":true") {
        Ok(())
    } else {
        let kind = out
            .split_once("\"kind\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(kind, _)| kind)
            .unwrap_or("");
        Err(ALL_KINDS
            .into_iter()
            .find(|k| k.name() == kind)
            .unwrap_or_else(|| panic!("no error kind in {out}")))
    };
    let after = interpreter.render();
    let changed = if after == before {
        Vec::new()
    } else {
        vec![format!("before:\n{before}\n  after:\n{after}")]
    };
    let check = interpreter.run_line(101, "check").unwrap_or_default();
    let broken = (!check.contains("\"ok\":true")).then_some(check);
    Outcome {
        result,
        changed,
        broken,
    }
}

// ---------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------

/// A row of the catalogue.
fn case(
    layer: Layer,
    id: &'static str,
    bad: &'static str,
    expect: ErrorKind,
    run: fn() -> Outcome,
) -> Case {
    Case {
        id,
        layer,
        bad,
        expect,
        run,
    }
}

fn arena_cases() -> Vec<Case> {
    use ErrorKind::*;
    let l = Layer::Arena;
    vec![
        case(
            l,
            "arena/quantum-zero",
            "`ArenaConfig::new(name, 0)`: quantum zero",
            BadConstraint,
            || probe(&[], || create_plain("a", 0)),
        ),
        case(
            l,
            "arena/quantum-not-power-of-two",
            "quantum 0x3000, not a power of two",
            BadConstraint,
            || probe(&[], || create_plain("a", 0x3000)),
        ),
        case(
            l,
            "arena/create-span-misaligned",
            "`create` with a first span whose base is off the quantum",
            Misaligned,
            || probe(&[], || create(ArenaConfig::new("a", Q).span(0x800, Q))),
        ),
        case(
            l,
            "arena/create-import-min-overflow",
            "a source with a minimum import of 2^64 - 1 (rounding it up passes 2^64)",
            Overflow,
            || {
                let root = standard();
                probe(&[&root], || {
                    create(ArenaConfig::new("a", Q).source(&root, u64::MAX))
                })
            },
        ),
        case(
            l,
            "arena/create-qcache-span-misaligned",
            "`create` with quantum caches and a misaligned first span",
            Misaligned,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                probe(&[], || {
                    create(ArenaConfig::new("a", Q).span(0x800, Q).qcache(&qc))
                })
                .and(still_claimable(&qc))
            },
        ),
        case(
            l,
            "arena/span-zero",
            "`add_span(base, 0)`",
            ZeroSize,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0x40_0000, 0))
            },
        ),
        case(
            l,
            "arena/span-overflow",
            "a span whose end passes 2^64 (`add_span(2^64 - 0x1000, 0x2000)`)",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(u64::MAX - 0xfff, 0x2000))
            },
        ),
        case(
            l,
            "arena/span-ends-at-2^64",
            "a span ending exactly at 2^64 (`add_span(2^64 - 0x1000, 0x1000)`): its end does not fit in a `u64`",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(u64::MAX - 0xfff, 0x1000))
            },
        ),
        case(
            l,
            "arena/span-base-misaligned",
            "a span base off the quantum (0x400800)",
            Misaligned,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0x40_0800, Q))
            },
        ),
        case(
            l,
            "arena/span-size-misaligned",
            "a span size off the quantum (0x1800)",
            Misaligned,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0x40_0000, 0x1800))
            },
        ),
        case(
            l,
            "arena/span-overlap-partial",
            "a span overlapping the end of an existing one",
            Overlap,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0x1f_0000, 0x2_0000))
            },
        ),
        case(
            l,
            "arena/span-overlap-inside",
            "a span inside an existing one",
            Overlap,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0x18_0000, Q))
            },
        ),
        case(
            l,
            "arena/span-overlap-around",
            "a span that contains an existing one",
            Overlap,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0, 0x100_0000))
            },
        ),
        case(
            l,
            "arena/span-twice",
            "the same span added twice",
            Overlap,
            || {
                let a = standard();
                probe(&[&a], || a.add_span(0x10_0000, 0x10_0000))
            },
        ),
        case(l, "arena/alloc-zero", "`alloc(0)`", ZeroSize, || {
            let a = standard();
            probe(&[&a], || a.alloc(0, Policy::InstantFit))
        }),
        case(
            l,
            "arena/alloc-overflow",
            "`alloc(2^64 - 1)`: rounding up to the quantum passes 2^64",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || a.alloc(u64::MAX, Policy::BestFit))
            },
        ),
        case(
            l,
            "arena/alloc-too-large",
            "`alloc` larger than every free segment",
            NoSpace,
            || {
                let a = standard();
                let _x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.alloc(0x10_0000, Policy::InstantFit))
            },
        ),
        case(
            l,
            "arena/alloc-no-spans",
            "`alloc` from an arena with no span and no source",
            NoSpace,
            || {
                let a: Arena = Arena::create(ArenaConfig::new("a", Q).meta(&HeapMeta)).unwrap();
                probe(&[&a], || a.alloc(Q, Policy::NextFit))
            },
        ),
        case(
            l,
            "arena/import-source-full",
            "`alloc` on an importing arena whose source has no room",
            ImportFailed,
            || {
                let root = arena(0, 0x1_0000);
                let c = child(&root, 0);
                let _x = c.alloc(0x8000, Policy::InstantFit).unwrap();
                probe(&[&root, &c], || c.alloc(0x1_0000, Policy::InstantFit))
            },
        ),
        case(
            l,
            "arena/import-crooked-source",
            "a source that hands back a span off the child's quantum",
            ImportFailed,
            || {
                let c: Arena = Arena::create(
                    ArenaConfig::new("child", Q)
                        .source(&CrookedSource, 0)
                        .meta(&HeapMeta),
                )
                .unwrap();
                probe(&[&c], || c.alloc(Q, Policy::InstantFit))
            },
        ),
        case(
            l,
            "arena/meta-arena-at-zero",
            "tags from an `ArenaMeta` over an arena whose only page is at address 0 \
             (no static tags)",
            NoSpace,
            || {
                let zero = create(ArenaConfig::new("zero", Q).span(0, Q).meta(&HeapMeta)).unwrap();
                // SAFETY: `ArenaMeta` never hands out the page at 0, the only
                // one `zero` has.
                let meta = unsafe { ArenaMeta::new(&zero) };
                let a = create(ArenaConfig::new("a", Q).meta(&meta).static_tags(false)).unwrap();
                probe(&[&zero, &a], || a.add_span(0x10_0000, 0x10_0000))
            },
        ),
        case(l, "arena/free-zero", "`free(addr, 0)`", ZeroSize, || {
            let a = standard();
            let x = a.alloc(Q, Policy::InstantFit).unwrap();
            probe(&[&a], || a.free(x, 0))
        }),
        case(
            l,
            "arena/free-size-overflow",
            "`free(addr, 2^64 - 1)`: the size cannot be rounded",
            Overflow,
            || {
                let a = standard();
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.free(x, u64::MAX))
            },
        ),
        case(
            l,
            "arena/free-never-allocated",
            "`free` of an address in a free segment",
            BadFree,
            || {
                let a = standard();
                let _x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.free(0x18_0000, Q))
            },
        ),
        case(
            l,
            "arena/free-outside-spans",
            "`free` of an address in no span",
            BadFree,
            || {
                let a = standard();
                probe(&[&a], || a.free(0x4000_0000, Q))
            },
        ),
        case(
            l,
            "arena/free-interior",
            "`free` of an address inside an allocated segment",
            BadFree,
            || {
                let a = standard();
                let x = a.alloc(0x4000, Policy::InstantFit).unwrap();
                probe(&[&a], || a.free(x + Q, Q))
            },
        ),
        case(
            l,
            "arena/free-double",
            "the same segment freed twice",
            BadFree,
            || {
                let a = standard();
                let x = a.alloc(0x2000, Policy::InstantFit).unwrap();
                let _y = a.alloc(0x2000, Policy::InstantFit).unwrap();
                a.free(x, 0x2000).unwrap();
                probe(&[&a], || a.free(x, 0x2000))
            },
        ),
        case(
            l,
            "arena/free-smaller",
            "`free` with a size smaller than allocated",
            BadFree,
            || {
                let a = standard();
                let x = a.alloc(0x3000, Policy::InstantFit).unwrap();
                probe(&[&a], || a.free(x, 0x2000))
            },
        ),
        case(
            l,
            "arena/free-larger",
            "`free` with a size larger than allocated",
            BadFree,
            || {
                let a = standard();
                let x = a.alloc(0x3000, Policy::InstantFit).unwrap();
                probe(&[&a], || a.free(x, 0x4000))
            },
        ),
        case(
            l,
            "arena/free-wrong-arena",
            "`free` to another arena than the one that allocated",
            BadFree,
            || {
                let a = standard();
                let b = standard();
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                let _y = b.alloc(0x2000, Policy::InstantFit).unwrap();
                probe(&[&a, &b], || b.free(x, Q))
            },
        ),
        case(
            l,
            "arena/free-child-span",
            "`free` on a source of a span a child imported",
            BadFree,
            || {
                let root = standard();
                let c = child(&root, 0x4000);
                let x = c.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&root, &c], || root.free(x, 0x4000))
            },
        ),
        case(
            l,
            "arena/free-cache-slab",
            "`free` on an arena of a slab its object cache holds",
            BadFree,
            || {
                let a = standard();
                let objects = cache(&a, "c", 0x1000, 4);
                let _o = objects.alloc().unwrap();
                let slab = a.stats();
                assert_eq!(slab.alloc_segments, 1);
                let mut base = 0;
                a.walk(|s| {
                    if s.kind == vmem_core::SegmentKind::Alloc {
                        base = s.start
                    }
                });
                probe(&[&a, &objects], || a.free(base, objects.stats().slab_size))
            },
        ),
        case(
            l,
            "arena/contains-zero",
            "`contains(addr, 0)`",
            ZeroSize,
            || {
                let a = standard();
                probe(&[&a], || a.contains(0x10_0000, 0))
            },
        ),
        case(
            l,
            "arena/contains-overflow",
            "`contains` of a range passing 2^64",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || a.contains(u64::MAX, 2))
            },
        ),
        case(
            l,
            "arena/destroy-live",
            "`destroy` with a live allocation",
            InUse,
            || {
                let a = standard();
                let _x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.destroy())
            },
        ),
        case(
            l,
            "arena/destroy-child",
            "`destroy` of a source a child arena imports from (the child has nothing live)",
            InUse,
            || {
                let root = standard();
                let c = child(&root, 0);
                probe(&[&root, &c], || root.destroy())
            },
        ),
        case(
            l,
            "arena/destroy-child-live",
            "`destroy` of a source a child arena holds an imported span of",
            InUse,
            || {
                let root = standard();
                let c = child(&root, 0);
                let _x = c.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&root, &c], || root.destroy())
            },
        ),
        case(
            l,
            "arena/destroy-cache-slabs",
            "`destroy` of an arena an object cache holds slabs of",
            InUse,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 4);
                let o = objects.alloc().unwrap();
                objects.free(o).unwrap();
                probe(&[&a, &objects], || a.destroy())
            },
        ),
        case(
            l,
            "arena/destroy-qcache-live",
            "`destroy` with an object live in its quantum caches",
            InUse,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let a = qcache_arena("a", 0x10_0000, &qc);
                let _x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.destroy())
            },
        ),
        case(
            l,
            "arena/qcache-quantum",
            "`QuantumCaches::new` with quantum 0x3000",
            BadConstraint,
            || probe(&[], || QuantumCaches::new(0x3000, 0x6000, &HeapMeta, &CPU0)),
        ),
        case(
            l,
            "arena/qcache-max-zero",
            "`QuantumCaches::new` with `qcache_max` zero",
            ZeroSize,
            || probe(&[], || QuantumCaches::new(Q, 0, &HeapMeta, &CPU0)),
        ),
        case(
            l,
            "arena/qcache-max-too-large",
            "`qcache_max` above 16 quanta",
            BadConstraint,
            || probe(&[], || QuantumCaches::new(Q, 17 * Q, &HeapMeta, &CPU0)),
        ),
        case(
            l,
            "arena/qcache-other-quantum",
            "quantum caches made for quantum 0x1000 given to an arena of quantum 0x200",
            BadConstraint,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                probe(&[], || create(ArenaConfig::new("a", 0x200).qcache(&qc)))
                    .and(still_claimable(&qc))
            },
        ),
        case(
            l,
            "arena/qcache-shared",
            "the same quantum caches given to a second arena",
            InUse,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let a = qcache_arena("a", 0x10_0000, &qc);
                let _x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || create(ArenaConfig::new("b", Q).qcache(&qc)))
            },
        ),
        case(
            l,
            "arena/qcache-free-wrong-size",
            "`free` of a quantum-cached segment with another cached size",
            BadFree,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let a = qcache_arena("a", 0x10_0000, &qc);
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.free(x, 2 * Q))
            },
        ),
        case(
            l,
            "arena/qcache-free-double",
            "a quantum-cached segment freed twice",
            BadFree,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let a = qcache_arena("a", 0x10_0000, &qc);
                let x = a.alloc(2 * Q, Policy::InstantFit).unwrap();
                let _y = a.alloc(2 * Q, Policy::InstantFit).unwrap();
                a.free(x, 2 * Q).unwrap();
                probe(&[&a], || a.free(x, 2 * Q))
            },
        ),
        case(
            l,
            "arena/qcache-xfree",
            "`xfree` of a segment a quantum cache handed out",
            BadFree,
            || {
                let qc = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let a = qcache_arena("a", 0x10_0000, &qc);
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.xfree(x, Q))
            },
        ),
        case(
            l,
            "arena/qcache-free-wrong-arena",
            "a quantum-cached segment freed to another arena with quantum caches",
            BadFree,
            || {
                let qa = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let qb = QuantumCaches::new(Q, 4 * Q, &HeapMeta, &CPU0).unwrap();
                let a = qcache_arena("a", 0x10_0000, &qa);
                let b = qcache_arena("b", 0x30_0000, &qb);
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                let _y = b.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a, &b], || b.free(x, Q))
            },
        ),
        case(
            l,
            "arena/source-import-zero",
            "`Source::import(arena, importer, 0, quantum)` called directly",
            ZeroSize,
            || {
                let a = standard();
                probe(&[&a], || Source::import(&a, Importer::new(), 0, Q))
            },
        ),
        case(
            l,
            "arena/source-import-bad-align",
            "`Source::import` with align 0x3000",
            BadConstraint,
            || {
                let a = standard();
                probe(&[&a], || Source::import(&a, Importer::new(), Q, 0x3000))
            },
        ),
        case(
            l,
            "arena/source-release-of-alloc",
            "`Source::release` of a segment `alloc` returned",
            BadFree,
            || {
                let a = standard();
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || Source::release(&a, Importer::new(), x, Q))
            },
        ),
        case(
            l,
            "arena/source-release-childs-span",
            "`Source::release` of a span a child arena imported, by a made-up importer",
            BadFree,
            || {
                let root = standard();
                let c = child(&root, 0x4000);
                let _x = c.alloc(Q, Policy::InstantFit).unwrap();
                let (base, size) = imported_span(&c);
                probe(&[&root, &c], || {
                    Source::release(&root, Importer::new(), base, size)
                })
            },
        ),
        case(
            l,
            "arena/source-release-other-importer",
            "`Source::release` of a child's span by another child's importer",
            BadFree,
            || {
                let root = standard();
                let spy = Spy {
                    parent: &root,
                    seen: std::sync::Mutex::new(None),
                };
                let c = child(&root, 0x4000);
                let sibling = Arena::create(
                    ArenaConfig::new("sibling", Q)
                        .source(&spy, 0x4000)
                        .meta(&HeapMeta),
                )
                .unwrap();
                let _x = c.alloc(Q, Policy::InstantFit).unwrap();
                let _y = sibling.alloc(Q, Policy::InstantFit).unwrap();
                let (base, size) = imported_span(&c);
                let other = spy.seen.lock().unwrap().unwrap();
                probe(&[&root, &c, &sibling], || {
                    Source::release(&root, other, base, size)
                })
            },
        ),
        case(
            l,
            "arena/source-release-part",
            "`Source::release` of part of a span, by its importer",
            BadFree,
            || {
                let a = standard();
                let me = Importer::new();
                let x = Source::import(&a, me, 2 * Q, Q).unwrap();
                probe(&[&a], || Source::release(&a, me, x, Q))
            },
        ),
        case(
            l,
            "arena/destroy-under-cache",
            "`destroy` of an arena an empty object cache is built on",
            InUse,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 4);
                let o = objects.alloc().unwrap();
                objects.free(o).unwrap();
                objects.reap().unwrap();
                probe(&[&a, &objects], || a.destroy())
            },
        ),
    ]
}

fn xalloc_cases() -> Vec<Case> {
    use ErrorKind::*;
    let l = Layer::Xalloc;
    vec![
        case(
            l,
            "xalloc/size-zero",
            "`xalloc(0, align 0x2000)`",
            ZeroSize,
            || {
                let a = standard();
                probe(&[&a], || {
                    a.xalloc(0, &Constraints::aligned(0x2000), Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/size-overflow",
            "`xalloc(2^64 - 1, align 0x2000)`",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || {
                    a.xalloc(u64::MAX, &Constraints::aligned(0x2000), Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/align-off-quantum",
            "align 0x800, below the quantum",
            Misaligned,
            || {
                let a = standard();
                probe(&[&a], || {
                    a.xalloc(Q, &Constraints::aligned(0x800), Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/align-not-power-of-two",
            "align 0x3000",
            BadConstraint,
            || {
                let a = standard();
                probe(&[&a], || {
                    a.xalloc(Q, &Constraints::aligned(0x3000), Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/phase-off-quantum",
            "phase 0x800",
            Misaligned,
            || {
                let a = standard();
                let c = Constraints {
                    align: 0x4000,
                    phase: 0x800,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/phase-equals-align",
            "phase 0x4000 with align 0x4000",
            BadConstraint,
            || {
                let a = standard();
                let c = Constraints {
                    align: 0x4000,
                    phase: 0x4000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/phase-without-align",
            "phase 0x2000 with the default align (the quantum)",
            BadConstraint,
            || {
                let a = standard();
                let c = Constraints {
                    phase: 0x2000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::BestFit))
            },
        ),
        case(
            l,
            "xalloc/nocross-off-quantum",
            "nocross 0x800",
            Misaligned,
            || {
                let a = standard();
                let c = Constraints {
                    nocross: 0x800,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/nocross-not-power-of-two",
            "nocross 0x3000",
            BadConstraint,
            || {
                let a = standard();
                let c = Constraints {
                    nocross: 0x3000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/nocross-below-size",
            "nocross 0x2000 for a request of 0x3000",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    nocross: 0x2000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(0x3000, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/align-above-nocross",
            "align 0x8000 with nocross 0x4000",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    align: 0x8000,
                    nocross: 0x4000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/phase-and-size-cross",
            "phase 0x3000 + size 0x2000 past nocross 0x4000",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    align: 0x4000,
                    phase: 0x3000,
                    nocross: 0x4000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(0x2000, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/min-equals-max",
            "min 0x150000 = max 0x150000",
            BadConstraint,
            || {
                let a = standard();
                let c = Constraints {
                    min: 0x15_0000,
                    max: 0x15_0000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/min-above-max",
            "min 0x180000 above max 0x150000",
            BadConstraint,
            || {
                let a = standard();
                let c = Constraints {
                    min: 0x18_0000,
                    max: 0x15_0000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/window-too-small",
            "a [min, max) window of 0x1000 for a request of 0x2000",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    min: 0x15_0000,
                    max: 0x15_1000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(0x2000, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/window-without-aligned-spot",
            "window [0x151000, 0x154000) with align 0x4000",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    align: 0x4000,
                    min: 0x15_1000,
                    max: 0x15_4000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/align-above-every-span",
            "align 0x1000000 in an arena whose only span holds no such address",
            NoSpace,
            || {
                let a = standard();
                probe(&[&a], || {
                    a.xalloc(Q, &Constraints::aligned(0x100_0000), Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/min-above-every-span",
            "min 0x400000, above every span",
            NoSpace,
            || {
                let a = standard();
                let c = Constraints {
                    min: 0x40_0000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::NextFit))
            },
        ),
        case(
            l,
            "xalloc/max-below-every-span",
            "max 0x80000, below every span",
            NoSpace,
            || {
                let a = standard();
                let c = Constraints {
                    max: 0x8_0000,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::BestFit))
            },
        ),
        case(
            l,
            "xalloc/exact-taken",
            "`Constraints::exact` at an address already allocated",
            NoSpace,
            || {
                let a = standard();
                let x = a.alloc(0x2000, Policy::InstantFit).unwrap();
                probe(&[&a], || {
                    a.xalloc(Q, &Constraints::exact(x + Q, Q)?, Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/exact-overflow",
            "`Constraints::exact(2^64 - 0x1000, 0x2000)`",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || {
                    a.xalloc(
                        0x2000,
                        &Constraints::exact(u64::MAX - 0xfff, 0x2000)?,
                        Policy::InstantFit,
                    )
                })
            },
        ),
        case(
            l,
            "xalloc/never-imports",
            "a constrained request on an importing arena that has no span yet (xalloc never imports)",
            NoSpace,
            || {
                let root = standard();
                let c = child(&root, 0);
                probe(&[&root, &c], || {
                    c.xalloc(Q, &Constraints::aligned(0x4000), Policy::InstantFit)
                })
            },
        ),
        case(
            l,
            "xalloc/xfree-of-alloc",
            "`xfree` of what `alloc` returned",
            BadFree,
            || {
                let a = standard();
                let x = a.alloc(Q, Policy::InstantFit).unwrap();
                probe(&[&a], || a.xfree(x, Q))
            },
        ),
        case(
            l,
            "xalloc/free-of-xalloc",
            "`free` of what `xalloc` returned",
            BadFree,
            || {
                let a = standard();
                let x = a
                    .xalloc(Q, &Constraints::aligned(0x4000), Policy::InstantFit)
                    .unwrap();
                probe(&[&a], || a.free(x, Q))
            },
        ),
        case(
            l,
            "xalloc/xfree-wrong-size",
            "`xfree` with another size than allocated",
            BadFree,
            || {
                let a = standard();
                let x = a
                    .xalloc(0x2000, &Constraints::aligned(0x4000), Policy::InstantFit)
                    .unwrap();
                probe(&[&a], || a.xfree(x, Q))
            },
        ),
        case(
            l,
            "xalloc/xfree-double",
            "the same `xalloc` result freed twice",
            BadFree,
            || {
                let a = standard();
                let x = a
                    .xalloc(Q, &Constraints::aligned(0x4000), Policy::InstantFit)
                    .unwrap();
                a.xfree(x, Q).unwrap();
                probe(&[&a], || a.xfree(x, Q))
            },
        ),
        case(l, "xalloc/xfree-zero", "`xfree(addr, 0)`", ZeroSize, || {
            let a = standard();
            let x = a
                .xalloc(Q, &Constraints::aligned(0x4000), Policy::InstantFit)
                .unwrap();
            probe(&[&a], || a.xfree(x, 0))
        }),
        case(
            l,
            "xalloc/min-at-the-top",
            "min 2^64 - 1 with no max: no aligned start fits below 2^64",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    min: u64::MAX,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(Q, &c, Policy::InstantFit))
            },
        ),
        case(
            l,
            "xalloc/phase-and-size-near-2^64",
            "size 2^64 - 0x1000 with align 0x2000, phase 0x1000, nocross 2^63 (phase + size passes 2^64)",
            Overconstrained,
            || {
                let a = standard();
                let c = Constraints {
                    align: 0x2000,
                    phase: 0x1000,
                    nocross: 1 << 63,
                    ..Constraints::NONE
                };
                probe(&[&a], || a.xalloc(u64::MAX - 0xfff, &c, Policy::InstantFit))
            },
        ),
    ]
}

fn cache_cases() -> Vec<Case> {
    use ErrorKind::*;
    let l = Layer::Cache;
    vec![
        case(
            l,
            "cache/size-zero",
            "`CacheConfig::new(name, 0, ..)`: objects of size zero",
            ZeroSize,
            || {
                let a = standard();
                probe(&[&a], || {
                    ObjectCache::new(CacheConfig::new("c", 0, &HeapMeta, &CPU0), &a)
                })
            },
        ),
        case(
            l,
            "cache/align-zero",
            "object alignment 0",
            BadConstraint,
            || {
                let a = standard();
                probe(&[&a], || {
                    ObjectCache::new(CacheConfig::new("c", 64, &HeapMeta, &CPU0).align(0), &a)
                })
            },
        ),
        case(
            l,
            "cache/align-not-power-of-two",
            "object alignment 24",
            BadConstraint,
            || {
                let a = standard();
                probe(&[&a], || {
                    ObjectCache::new(CacheConfig::new("c", 64, &HeapMeta, &CPU0).align(24), &a)
                })
            },
        ),
        case(
            l,
            "cache/size-overflow",
            "objects of 2^64 - 1 integers (no slab can hold them)",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || {
                    ObjectCache::new(CacheConfig::new("c", u64::MAX, &HeapMeta, &CPU0), &a)
                })
            },
        ),
        case(
            l,
            "cache/alloc-arena-too-small",
            "`alloc` when the arena cannot hold one slab",
            NoSpace,
            || {
                let a = arena(0x10_0000, Q);
                let objects = cache(&a, "c", 0x1000, 4);
                probe(&[&a, &objects], || objects.alloc())
            },
        ),
        case(
            l,
            "cache/free-double-magazine",
            "an object freed twice (the first free left it in a magazine)",
            BadFree,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 4);
                let o = objects.alloc().unwrap();
                objects.free(o).unwrap();
                probe(&[&a, &objects], || objects.free(o))
            },
        ),
        case(
            l,
            "cache/free-double-slab",
            "an object freed twice, magazines off (the first free put it back in its slab)",
            BadFree,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 0);
                let o = objects.alloc().unwrap();
                let _p = objects.alloc().unwrap();
                objects.free(o).unwrap();
                probe(&[&a, &objects], || objects.free(o))
            },
        ),
        case(
            l,
            "cache/free-wrong-cache",
            "an object freed to another cache of the same size over the same arena",
            BadFree,
            || {
                let a = standard();
                let first = cache(&a, "c1", 64, 4);
                let second = cache(&a, "c2", 64, 4);
                let o = first.alloc().unwrap();
                let _p = second.alloc().unwrap();
                probe(&[&a, &first, &second], || second.free(o))
            },
        ),
        case(
            l,
            "cache/free-interior",
            "`free` of an address inside an object",
            BadFree,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 4);
                let o = objects.alloc().unwrap();
                probe(&[&a, &objects], || objects.free(o + 8))
            },
        ),
        case(
            l,
            "cache/free-never-allocated",
            "`free` of an address in none of the cache's slabs",
            BadFree,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 4);
                let _o = objects.alloc().unwrap();
                probe(&[&a, &objects], || objects.free(0x1_0000))
            },
        ),
        case(
            l,
            "cache/free-never-handed-out",
            "`free` of an object still free in its slab",
            BadFree,
            || {
                let a = standard();
                let objects = cache(&a, "c", 64, 0);
                let o = objects.alloc().unwrap();
                probe(&[&a, &objects], || objects.free(o + 64))
            },
        ),
        case(
            l,
            "cache/memory-double-free",
            "memory mode: an object freed twice",
            BadFree,
            || {
                let a = memory_arena();
                let objects = memory_cache(&a, 24, 4);
                let o = objects.alloc().unwrap();
                objects.free(o).unwrap();
                probe(&[&a, &objects], || objects.free(o))
            },
        ),
        case(
            l,
            "cache/memory-write-after-free",
            "memory mode: a freed object written, then the next `alloc` (from a magazine)",
            Corrupt,
            || {
                let a = memory_arena();
                let objects = memory_cache(&a, 24, 4);
                let o = objects.alloc().unwrap();
                objects.free(o).unwrap();
                poke(o + 3, 0x42);
                probe(&[&a, &objects], || objects.alloc())
            },
        ),
        case(
            l,
            "cache/memory-write-after-free-slab",
            "memory mode, magazines off: a freed object written, then the next `alloc` (from its slab)",
            Corrupt,
            || {
                let a = memory_arena();
                let objects = memory_cache(&a, 24, 0);
                let o = objects.alloc().unwrap();
                let _p = objects.alloc().unwrap();
                objects.free(o).unwrap();
                poke(o + 16, 0);
                probe(&[&a, &objects], || objects.alloc())
            },
        ),
        case(
            l,
            "cache/memory-red-zone",
            "memory mode: a write just past the object's 8-byte-rounded end (its red zone), then `free`",
            Corrupt,
            || {
                let a = memory_arena();
                let objects = memory_cache(&a, 24, 4);
                let o = objects.alloc().unwrap();
                poke(o + 24, 0);
                probe(&[&a, &objects], || objects.free(o))
            },
        ),
        case(
            l,
            "cache/memory-pad",
            "memory mode: a one-byte overrun of a 20-byte object (into its pad), then `free`",
            Corrupt,
            || {
                let a = memory_arena();
                let objects = memory_cache(&a, 20, 4);
                let o = objects.alloc().unwrap();
                poke(o + 20, 0);
                probe(&[&a, &objects], || objects.free(o))
            },
        ),
        case(
            l,
            "cache/memory-buffer-tag",
            "memory mode: the buffer tag after the red zone overwritten, then `free`",
            Corrupt,
            || {
                let a = memory_arena();
                let objects = memory_cache(&a, 24, 4);
                let o = objects.alloc().unwrap();
                poke(o + 32, 0);
                probe(&[&a, &objects], || objects.free(o))
            },
        ),
        case(
            l,
            "cache/align-overflow",
            "object alignment 2^63 (a slab of eight such objects passes 2^64)",
            Overflow,
            || {
                let a = standard();
                probe(&[&a], || {
                    ObjectCache::new(
                        CacheConfig::new("c", 64, &HeapMeta, &CPU0).align(1 << 63),
                        &a,
                    )
                })
            },
        ),
        case(
            l,
            "cache/memory-size-near-2^64",
            "memory mode, debug: objects of 2^64 - 16 integers (the red zone and buffer tag after each take it past 2^64)",
            Overflow,
            || {
                let a = memory_arena();
                // SAFETY: as for `memory_cache`.
                let config =
                    unsafe { CacheConfig::new("c", u64::MAX - 15, &HeapMeta, &CPU0).memory() }
                        .debug(true);
                probe(&[&a], || ObjectCache::new(config, &a))
            },
        ),
    ]
}

fn reserve_cases() -> Vec<Case> {
    use ErrorKind::*;
    let l = Layer::Reserve;
    vec![
        case(
            l,
            "reserve/count-zero",
            "`Reserve::new(cache, 0, ..)`",
            ZeroSize,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 0);
                probe(&[&a, &objects], || Reserve::new(&objects, 0, &HeapMeta))
            },
        ),
        case(
            l,
            "reserve/count-too-many",
            "a reserve of 65 objects when the arena holds 64",
            NoSpace,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 4);
                let _o = objects.alloc().unwrap();
                probe(&[&a, &objects], || Reserve::new(&objects, 65, &HeapMeta))
            },
        ),
        case(
            l,
            "reserve/alloc-exhausted",
            "`alloc` when the reserve is empty and the arena full",
            NoSpace,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 0);
                let r = Reserve::new(&objects, 2, &HeapMeta).unwrap();
                let _rest: Vec<u64> = (0..62).map(|_| objects.alloc().unwrap()).collect();
                let _x = r.alloc().unwrap();
                let _y = r.alloc().unwrap();
                probe(&[&a, &objects, &r], || r.alloc())
            },
        ),
        case(
            l,
            "reserve/free-double",
            "an object freed twice (the first free put it back in the reserve)",
            BadFree,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 0);
                let r = Reserve::new(&objects, 2, &HeapMeta).unwrap();
                let x = r.alloc().unwrap();
                let _y = r.alloc().unwrap();
                r.free(x).unwrap();
                probe(&[&a, &objects, &r], || r.free(x))
            },
        ),
        case(
            l,
            "reserve/free-foreign",
            "`free` of an address not of the cache while the reserve has room",
            BadFree,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 0);
                let r = Reserve::new(&objects, 2, &HeapMeta).unwrap();
                let _x = r.alloc().unwrap();
                probe(&[&a, &objects, &r], || r.free(0x10_0000))
            },
        ),
        case(
            l,
            "reserve/free-after-cache-free",
            "an object from the reserve freed to the cache, then to the reserve",
            BadFree,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 0);
                let r = Reserve::new(&objects, 2, &HeapMeta).unwrap();
                let x = r.alloc().unwrap();
                objects.free(x).unwrap();
                probe(&[&a, &objects, &r], || r.free(x))
            },
        ),
        case(
            l,
            "reserve/free-foreign-when-full",
            "`free` of an address not of the cache while the reserve is full (it goes to the cache)",
            BadFree,
            || {
                let a = reserve_arena();
                let objects = cache(&a, "c", 64, 0);
                let r = Reserve::new(&objects, 2, &HeapMeta).unwrap();
                probe(&[&a, &objects, &r], || r.free(0x10_0000))
            },
        ),
    ]
}

fn size_class_cases() -> Vec<Case> {
    use ErrorKind::*;
    let l = Layer::SizeClasses;
    vec![
        case(l, "size/alloc-zero", "`alloc(0, 8)`", ZeroSize, || {
            let a = memory_arena();
            let k = classes(&a);
            probe(&[&k], || k.alloc(0, 8))
        }),
        case(
            l,
            "size/align-zero",
            "`alloc(64, 0)`",
            BadConstraint,
            || {
                let a = memory_arena();
                let k = classes(&a);
                probe(&[&k], || k.alloc(64, 0))
            },
        ),
        case(
            l,
            "size/align-not-power-of-two",
            "`alloc(64, 24)`",
            BadConstraint,
            || {
                let a = memory_arena();
                let k = classes(&a);
                probe(&[&k], || k.alloc(64, 24))
            },
        ),
        case(
            l,
            "size/alloc-overflow",
            "`alloc(2^64 - 1, 8)`",
            Overflow,
            || {
                let a = memory_arena();
                let k = classes(&a);
                probe(&[&k], || k.alloc(u64::MAX, 8))
            },
        ),
        case(
            l,
            "size/alloc-too-large",
            "`alloc` of 64 MiB from a 2 MiB arena",
            NoSpace,
            || {
                let a = memory_arena();
                let k = classes(&a);
                probe(&[&k], || k.alloc(64 << 20, 8))
            },
        ),
        case(
            l,
            "size/align-too-large",
            "`alloc(8, 2^40)`: no address of the arena has that alignment",
            NoSpace,
            || {
                let a = memory_arena();
                let k = classes(&a);
                probe(&[&k], || k.alloc(8, 1 << 40))
            },
        ),
        case(l, "size/free-zero", "`free(addr, 0, 8)`", ZeroSize, || {
            let a = memory_arena();
            let k = classes(&a);
            let x = k.alloc(8, 8).unwrap();
            probe(&[&k], || k.free(x, 0, 8))
        }),
        case(
            l,
            "size/free-align-not-power-of-two",
            "`free(addr, 8, 3)`: an alignment no `alloc` accepts",
            BadConstraint,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(8, 8).unwrap();
                probe(&[&k], || k.free(x, 8, 3))
            },
        ),
        case(
            l,
            "size/free-wrong-class",
            "an 8-byte block freed as 100 bytes (another class)",
            BadFree,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(8, 8).unwrap();
                let _y = k.alloc(100, 8).unwrap();
                probe(&[&k], || k.free(x, 100, 8))
            },
        ),
        case(
            l,
            "size/free-wrong-large-size",
            "a 100,000-byte block freed as 50,000 bytes",
            BadFree,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(100_000, 8).unwrap();
                probe(&[&k], || k.free(x, 50_000, 8))
            },
        ),
        case(
            l,
            "size/free-wrong-align",
            "a 100,000-byte block allocated with align 8, freed with align 2^16",
            BadFree,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(100_000, 8).unwrap();
                probe(&[&k], || k.free(x, 100_000, 1 << 16))
            },
        ),
        case(
            l,
            "size/free-double-small",
            "a 24-byte block freed twice",
            BadFree,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(24, 8).unwrap();
                k.free(x, 24, 8).unwrap();
                probe(&[&k], || k.free(x, 24, 8))
            },
        ),
        case(
            l,
            "size/free-double-large",
            "a 100,000-byte block freed twice",
            BadFree,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(100_000, 8).unwrap();
                let _y = k.alloc(100_000, 8).unwrap();
                k.free(x, 100_000, 8).unwrap();
                probe(&[&k], || k.free(x, 100_000, 8))
            },
        ),
        case(
            l,
            "size/free-never-allocated",
            "`free` of an address no class or arena handed out",
            BadFree,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let _x = k.alloc(100_000, 8).unwrap();
                probe(&[&k], || k.free(0x1000, 64, 8))
            },
        ),
        case(
            l,
            "size/overrun",
            "a 24-byte block written one byte past its end, then `free`",
            Corrupt,
            || {
                let a = memory_arena();
                let k = classes(&a);
                let x = k.alloc(24, 8).unwrap();
                poke(x + 24, 0);
                probe(&[&k], || k.free(x, 24, 8))
            },
        ),
    ]
}

fn scenario_cases() -> Vec<Case> {
    use ErrorKind::*;
    let l = Layer::Scenario;
    vec![
        case(
            l,
            "scenario/unknown-command",
            "`frobnicate a`",
            Parse,
            || scenario("frobnicate a"),
        ),
        case(l, "scenario/bad-number", "`alloc a 12q`", Parse, || {
            scenario("alloc a 12q")
        }),
        case(
            l,
            "scenario/number-too-large",
            "`alloc a 18446744073709551616` (2^64)",
            Parse,
            || scenario("alloc a 18446744073709551616"),
        ),
        case(
            l,
            "scenario/suffix-overflow",
            "`alloc a 16777216T` (the suffix passes 2^64)",
            Parse,
            || scenario("alloc a 16777216T"),
        ),
        case(
            l,
            "scenario/bad-name",
            "`arena 9lives quantum=4K`",
            Parse,
            || scenario("arena 9lives quantum=4K"),
        ),
        case(
            l,
            "scenario/bad-handle-name",
            "`h-1! = alloc a 4K`",
            Parse,
            || scenario("h-1! = alloc a 4K"),
        ),
        case(
            l,
            "scenario/missing-option",
            "`arena e` (no quantum)",
            Parse,
            || scenario("arena e"),
        ),
        case(
            l,
            "scenario/unknown-option",
            "`alloc a 4K align=8K` (alloc takes no options)",
            Parse,
            || scenario("alloc a 4K align=8K"),
        ),
        case(
            l,
            "scenario/option-twice",
            "`xalloc a 4K align=8K align=16K`",
            Parse,
            || scenario("xalloc a 4K align=8K align=16K"),
        ),
        case(
            l,
            "scenario/positional-after-option",
            "`xalloc a align=8K 4K`",
            Parse,
            || scenario("xalloc a align=8K 4K"),
        ),
        case(l, "scenario/too-few-arguments", "`alloc a`", Parse, || {
            scenario("alloc a")
        }),
        case(
            l,
            "scenario/too-many-arguments",
            "`walk a b`",
            Parse,
            || scenario("walk a b"),
        ),
        case(
            l,
            "scenario/handle-on-non-allocation",
            "`w = walk a`",
            Parse,
            || scenario("w = walk a"),
        ),
        case(
            l,
            "scenario/policy-twice",
            "`alloc a 4K best next`",
            Parse,
            || scenario("alloc a 4K best next"),
        ),
        case(
            l,
            "scenario/base-without-size",
            "`arena e quantum=4K base=0`",
            Parse,
            || scenario("arena e quantum=4K base=0"),
        ),
        case(
            l,
            "scenario/import-without-source",
            "`arena e quantum=4K import=64K`",
            Parse,
            || scenario("arena e quantum=4K import=64K"),
        ),
        case(
            l,
            "scenario/fail-without-import",
            "`fail k export`",
            Parse,
            || scenario("fail k export"),
        ),
        case(
            l,
            "scenario/magazine-too-large",
            "`cache e size=64 arena=a magazine=0x100000000`",
            Parse,
            || scenario("cache e size=64 arena=a magazine=0x100000000"),
        ),
        case(
            l,
            "scenario/reserve-too-large",
            "`reserve e cache=c count=2M`",
            Parse,
            || scenario("reserve e cache=c count=2M"),
        ),
        case(
            l,
            "scenario/unknown-arena",
            "`alloc nosuch 4K`",
            UnknownArena,
            || scenario("alloc nosuch 4K"),
        ),
        case(
            l,
            "scenario/unknown-source",
            "`arena e quantum=4K source=nosuch`",
            UnknownArena,
            || scenario("arena e quantum=4K source=nosuch"),
        ),
        case(
            l,
            "scenario/cache-over-unknown-arena",
            "`cache e size=64 arena=nosuch`",
            UnknownArena,
            || scenario("cache e size=64 arena=nosuch"),
        ),
        case(
            l,
            "scenario/alloc-from-a-cache",
            "`alloc c 64` (c is a cache, not an arena)",
            UnknownArena,
            || scenario("alloc c 64"),
        ),
        case(
            l,
            "scenario/destroy-unknown",
            "`destroy nosuch`",
            UnknownArena,
            || scenario("destroy nosuch"),
        ),
        case(
            l,
            "scenario/stats-unknown",
            "`stats nosuch`",
            UnknownArena,
            || scenario("stats nosuch"),
        ),
        case(
            l,
            "scenario/unknown-cache",
            "`cache_alloc nosuch`",
            UnknownCache,
            || scenario("cache_alloc nosuch"),
        ),
        case(
            l,
            "scenario/cache-alloc-from-arena",
            "`cache_alloc a` (a is an arena)",
            UnknownCache,
            || scenario("cache_alloc a"),
        ),
        case(
            l,
            "scenario/reserve-over-unknown-cache",
            "`reserve e cache=nosuch count=1`",
            UnknownCache,
            || scenario("reserve e cache=nosuch count=1"),
        ),
        case(
            l,
            "scenario/unknown-reserve",
            "`reserve_alloc nosuch`",
            UnknownCache,
            || scenario("reserve_alloc nosuch"),
        ),
        case(
            l,
            "scenario/unknown-handle",
            "`free a nosuch`",
            UnknownHandle,
            || scenario("free a nosuch"),
        ),
        case(
            l,
            "scenario/freed-handle",
            "`free a gone` (gone was freed)",
            UnknownHandle,
            || scenario("free a gone"),
        ),
        case(
            l,
            "scenario/cache-free-unknown-handle",
            "`cache_free c nosuch`",
            UnknownHandle,
            || scenario("cache_free c nosuch"),
        ),
        case(
            l,
            "scenario/duplicate-arena",
            "`arena a quantum=4K`",
            DuplicateName,
            || scenario("arena a quantum=4K"),
        ),
        case(
            l,
            "scenario/cache-named-like-arena",
            "`cache a size=64 arena=a`",
            DuplicateName,
            || scenario("cache a size=64 arena=a"),
        ),
        case(
            l,
            "scenario/live-handle-reused",
            "`h = alloc a 4K` (h is live)",
            DuplicateName,
            || scenario("h = alloc a 4K"),
        ),
        case(
            l,
            "scenario/free-xalloc-handle",
            "`free a x` (x came from xalloc)",
            BadFree,
            || scenario("free a x"),
        ),
        case(
            l,
            "scenario/xfree-alloc-handle",
            "`xfree a h` (h came from alloc)",
            BadFree,
            || scenario("xfree a h"),
        ),
        case(
            l,
            "scenario/free-other-arenas-handle",
            "`free a id` (id is an allocation of arena b)",
            BadFree,
            || scenario("free a id"),
        ),
        case(
            l,
            "scenario/free-by-wrong-size",
            "`free a 0x100000 4K` (h at 0x100000 has 8K)",
            BadFree,
            || scenario("free a 0x100000 4K"),
        ),
        case(
            l,
            "scenario/cache-free-arena-handle",
            "`cache_free c h` (h came from alloc)",
            BadFree,
            || scenario("cache_free c h"),
        ),
        case(
            l,
            "scenario/cache-free-wrong-cache",
            "`cache_free d o` (o came from cache c)",
            BadFree,
            || scenario("cache_free d o"),
        ),
        case(
            l,
            "scenario/reserve-free-cache-handle",
            "`reserve_free r o` (o came from cache_alloc)",
            BadFree,
            || scenario("reserve_free r o"),
        ),
        case(
            l,
            "scenario/destroy-arena-with-cache",
            "`destroy a` (caches c and d are built on it)",
            InUse,
            || scenario("destroy a"),
        ),
        case(
            l,
            "scenario/destroy-arena-live",
            "`destroy b` (id is live)",
            InUse,
            || scenario("destroy b"),
        ),
        case(
            l,
            "scenario/destroy-source",
            "`destroy p` (arena k imports from it)",
            InUse,
            || scenario("destroy p"),
        ),
        case(
            l,
            "scenario/destroy-cache-live",
            "`destroy d` (od is live)",
            InUse,
            || scenario("destroy d"),
        ),
        case(
            l,
            "scenario/destroy-cache-with-reserve",
            "`destroy c` (reserve r is built on it)",
            InUse,
            || scenario("destroy c"),
        ),
        case(
            l,
            "scenario/destroy-reserve-out",
            "`destroy r` (ro is out)",
            InUse,
            || scenario("destroy r"),
        ),
        case(l, "scenario/alloc-zero", "`alloc a 0`", ZeroSize, || {
            scenario("alloc a 0")
        }),
        case(
            l,
            "scenario/cache-size-zero",
            "`cache e size=0 arena=a`",
            ZeroSize,
            || scenario("cache e size=0 arena=a"),
        ),
        case(
            l,
            "scenario/reserve-count-zero",
            "`reserve e cache=c count=0`",
            ZeroSize,
            || scenario("reserve e cache=c count=0"),
        ),
        case(
            l,
            "scenario/add-misaligned",
            "`add a 0x400800 4K`",
            Misaligned,
            || scenario("add a 0x400800 4K"),
        ),
        case(
            l,
            "scenario/add-overlap",
            "`add a 0x180000 4K`",
            Overlap,
            || scenario("add a 0x180000 4K"),
        ),
        case(
            l,
            "scenario/add-overflow",
            "`add a 0xfffffffffffff000 8K`",
            Overflow,
            || scenario("add a 0xfffffffffffff000 8K"),
        ),
        case(
            l,
            "scenario/quantum-not-power-of-two",
            "`arena e quantum=3`",
            BadConstraint,
            || scenario("arena e quantum=3"),
        ),
        case(
            l,
            "scenario/xalloc-bad-align",
            "`xalloc a 4K align=12K`",
            BadConstraint,
            || scenario("xalloc a 4K align=12K"),
        ),
        case(
            l,
            "scenario/xalloc-overconstrained",
            "`xalloc a 8K nocross=4K`",
            Overconstrained,
            || scenario("xalloc a 8K nocross=4K"),
        ),
        case(
            l,
            "scenario/alloc-too-large",
            "`alloc a 2M`",
            NoSpace,
            || scenario("alloc a 2M"),
        ),
        case(
            l,
            "scenario/import-too-large",
            "`alloc k 2M` (its source p has 1M)",
            ImportFailed,
            || scenario("alloc k 2M"),
        ),
        case(
            l,
            "scenario/free-size-zero",
            "`free a 0x100000 0`",
            ZeroSize,
            || scenario("free a 0x100000 0"),
        ),
        case(
            l,
            "scenario/contains-zero",
            "`contains a 0x100000 0`",
            ZeroSize,
            || scenario("contains a 0x100000 0"),
        ),
        case(
            l,
            "scenario/qcache-zero",
            "`arena e quantum=4K qcache=0`",
            ZeroSize,
            || scenario("arena e quantum=4K qcache=0"),
        ),
        case(
            l,
            "scenario/qcache-too-large",
            "`arena e quantum=4K qcache=68K` (17 quanta)",
            BadConstraint,
            || scenario("arena e quantum=4K qcache=68K"),
        ),
        case(
            l,
            "scenario/cache-bad-align",
            "`cache e size=64 align=3 arena=a`",
            BadConstraint,
            || scenario("cache e size=64 align=3 arena=a"),
        ),
        case(
            l,
            "scenario/fail-unknown-arena",
            "`fail nosuch import`",
            UnknownArena,
            || scenario("fail nosuch import"),
        ),
        case(
            l,
            "scenario/walk-a-cache",
            "`walk c` (c is a cache)",
            UnknownArena,
            || scenario("walk c"),
        ),
        case(
            l,
            "scenario/xalloc-window",
            "`xalloc a 8K min=0x150000 max=0x151000`",
            Overconstrained,
            || scenario("xalloc a 8K min=0x150000 max=0x151000"),
        ),
        case(
            l,
            "scenario/xalloc-min-max",
            "`xalloc a 4K min=0x150000 max=0x150000`",
            BadConstraint,
            || scenario("xalloc a 4K min=0x150000 max=0x150000"),
        ),
        case(
            l,
            "scenario/xalloc-phase-misaligned",
            "`xalloc a 4K align=16K phase=2K`",
            Misaligned,
            || scenario("xalloc a 4K align=16K phase=2K"),
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut all = arena_cases();
    all.extend(xalloc_cases());
    all.extend(cache_cases());
    all.extend(reserve_cases());
    all.extend(size_class_cases());
    all.extend(scenario_cases());
    all
}

// ---------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------

#[test]
fn every_misuse_is_refused_with_its_kind_and_changes_nothing() {
    let mut failures = Vec::new();
    let all = cases();
    for case in &all {
        let outcome = match catch_unwind(AssertUnwindSafe(case.run)) {
            Ok(outcome) => outcome,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: panicked: {what}", case.id));
                continue;
            }
        };
        if outcome.result != Err(case.expect) {
            failures.push(format!(
                "{}: expected {}, got {:?}",
                case.id, case.expect, outcome.result
            ));
        }
        for change in &outcome.changed {
            failures.push(format!(
                "{}: the failed call changed state:\n  {change}",
                case.id
            ));
        }
        if let Some(broken) = &outcome.broken {
            failures.push(format!(
                "{}: the checker fails afterwards: {broken}",
                case.id
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} misuse cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn the_catalogue_is_broad_and_well_formed() {
    let all = cases();
    assert!(all.len() >= 50, "only {} cases", all.len());
    let mut ids: Vec<&str> = all.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "case ids are unique");
    for case in &all {
        assert!(
            case.id.starts_with(case.layer.prefix()),
            "{} is filed under {:?}",
            case.id,
            case.layer
        );
        assert!(
            !case.bad.contains('|') && !case.bad.contains('\n'),
            "{}",
            case.id
        );
    }
    for layer in Layer::ALL {
        assert!(
            all.iter().any(|c| c.layer == layer),
            "{layer:?} has no case"
        );
    }
    for kind in ALL_KINDS {
        assert!(all.iter().any(|c| c.expect == kind), "no case shows {kind}");
    }
}

/// What the page's introduction says is accepted by design, not refused.
#[test]
fn inputs_accepted_by_design_behave_as_the_page_says() {
    // Sizes off the quantum are rounded up; a free may name either size.
    let a = standard();
    let x = a.alloc(0x1001, Policy::InstantFit).unwrap();
    assert_eq!(a.size().alloc, 0x2000);
    a.free(x, 0x2000).unwrap();
    let y = a.alloc(0x1001, Policy::InstantFit).unwrap();
    a.free(y, 0x1001).unwrap();
    // qcache_max off the quantum is rounded up.
    let qc = QuantumCaches::new(Q, Q + 1, &HeapMeta, &CPU0).unwrap();
    assert_eq!(qc.max(), 2 * Q);
    // Magazines above 62 rounds are cut to 62; long names are cut to 32 bytes.
    let objects = ObjectCache::new(
        CacheConfig::new(&"n".repeat(40), 64, &HeapMeta, &CPU0).magazine(1000),
        &a,
    )
    .unwrap();
    assert_eq!(objects.stats().magazine_size, 62);
    assert_eq!(objects.name().len(), vmem_core::NAME_MAX);
    // Without debug checks a cache takes the caller's word on a free.
    let o = objects.alloc().unwrap();
    objects.free(o).unwrap();
    objects.free(o).unwrap();
    assert_eq!(objects.stats().in_use, 0, "counted as no object in use");
    // The highest span there can be ends one quantum below 2^64.
    a.add_span(u64::MAX - 0x1fff, Q).unwrap();
    assert!(a.contains(u64::MAX - 0x1fff, Q).unwrap());
    // A cache may move while users hold its objects: its debug checks do
    // not depend on where it lives.
    let m = memory_arena();
    let mut caches = vec![memory_cache(&m, 24, 4)];
    let o = caches[0].alloc().unwrap();
    let p = caches[0].alloc().unwrap();
    caches[0].free(p).unwrap();
    caches.push(memory_cache(&m, 24, 4)); // the Vec grows and moves the first
    let moved = Box::new(caches.remove(0));
    moved.free(o).unwrap();
    let again = moved.alloc().unwrap();
    moved.free(again).unwrap();
    moved.check().unwrap();
    // ...and still finds a real overrun.
    let q = moved.alloc().unwrap();
    poke(q + 24, 0);
    let moved = *moved;
    assert_eq!(moved.free(q).map_err(|e| e.kind()), Err(ErrorKind::Corrupt));
}

// ---------------------------------------------------------------------
// The docs page.
// ---------------------------------------------------------------------

const BEGIN: &str = "<!-- misuse-catalogue:begin (generated from vmem-core/tests/misuse.rs: run VMEM_BLESS=1 cargo test -p vmem-core --test misuse; do not edit by hand) -->";
const END: &str = "<!-- misuse-catalogue:end -->";

/// The generated part of the page: one table per layer.
fn render(all: &[Case]) -> String {
    let mut out = String::from("\n");
    let counts: Vec<String> = Layer::ALL
        .iter()
        .map(|&layer| {
            let n = all.iter().filter(|c| c.layer == layer).count();
            format!("{} {n}", layer.prefix().trim_end_matches('/'))
        })
        .collect();
    let _ = writeln!(out, "{} cases ({}).", all.len(), counts.join(", "));
    for layer in Layer::ALL {
        let _ = writeln!(out, "\n## {}\n", layer.title());
        let _ = writeln!(out, "{}\n", layer.setup());
        if layer == Layer::Scenario {
            out.push_str("```text\n");
            out.push_str(WORLD);
            out.push_str("```\n\n");
        }
        out.push_str("| # | Bad input | Error kind | Case in `misuse.rs` |\n");
        out.push_str("| ---: | --- | --- | --- |\n");
        for (i, case) in all.iter().filter(|c| c.layer == layer).enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | `{}` |",
                i + 1,
                case.bad,
                case.expect,
                case.id
            );
        }
    }
    out.push('\n');
    out
}

/// A line diff of `old` against `new` (longest common subsequence), each
/// line marked ` `, `-` or `+`.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}

#[test]
fn the_docs_page_is_the_catalogue() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/misuse.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (intro, rest) = text
        .split_once(BEGIN)
        .unwrap_or_else(|| panic!("{} lacks the line {BEGIN}", path.display()));
    let (old, tail) = rest
        .split_once(END)
        .unwrap_or_else(|| panic!("{} lacks the line {END}", path.display()));
    let new = render(&cases());
    if old == new {
        return;
    }
    // CI checks the page and never rewrites it.
    let ci = std::env::var_os("CI").is_some_and(|v| v == "true");
    if !ci && std::env::var_os("VMEM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, format!("{intro}{BEGIN}{new}{END}{tail}"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    panic!(
        "docs/src/misuse.md is out of date with vmem-core/tests/misuse.rs \
         (- the page, + the cases):\n{}\nRun `VMEM_BLESS=1 cargo test -p vmem-core --test misuse` \
         to rewrite it, and review the change.",
        diff(old, &new)
    );
}
