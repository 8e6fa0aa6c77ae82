//! The misuse catalogue: every bad input a user can give vmem-core, each
//! tried on a fresh setup.
//!
//! A case passes when its call fails with the kind the catalogue names and
//! leaves everything it touched as it was: the same segments, sizes and
//! gauges (live objects, slabs, magazines, spans; the crate documentation
//! lets a failed call move its counters), and the checker still passes.
//! The catalogue is also the docs page `docs/src/misuse.md`: the part
//! between its two marker comments is rendered from the cases, and the
//! test fails when the page differs.
//! `VMEM_BLESS=1 cargo test -p vmem-core --test misuse` rewrites that part
//! (the hand-written introduction above it is kept).
//!
//! One module a layer holds that layer's cases, one a row in the page's
//! order (`arena`, `xalloc`, `cache`, `reserve`, `size_classes`,
//! `scenario`); `harness` observes a call and builds the fresh setups, and
//! `page` writes the tables.

mod arena;
mod cache;
mod harness;
mod page;
mod reserve;
mod scenario;
mod size_classes;
mod xalloc;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use vmem_core::{CPU0, CacheConfig, ErrorKind, HeapMeta, ObjectCache, Policy, QuantumCaches};

use harness::{Outcome, Q, memory_arena, memory_cache, poke, standard};
use page::{BEGIN, END, diff, render};

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

    /// The file that holds the layer's cases, under `vmem-core/tests/misuse/`.
    fn file(self) -> &'static str {
        match self {
            Layer::Arena => "arena.rs",
            Layer::Xalloc => "xalloc.rs",
            Layer::Cache => "cache.rs",
            Layer::Reserve => "reserve.rs",
            Layer::SizeClasses => "size_classes.rs",
            Layer::Scenario => "scenario.rs",
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

    /// The layer's cases, in the page's order.
    fn cases(self) -> Vec<Case> {
        match self {
            Layer::Arena => arena::cases(),
            Layer::Xalloc => xalloc::cases(),
            Layer::Cache => cache::cases(),
            Layer::Reserve => reserve::cases(),
            Layer::SizeClasses => size_classes::cases(),
            Layer::Scenario => scenario::cases(),
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
pub struct Case {
    id: String,
    /// The bad input, in one line of Markdown.
    bad: String,
    expect: ErrorKind,
    /// Builds a fresh setup, makes the bad call, and reports what happened.
    run: Box<dyn Fn() -> Outcome>,
}

impl Case {
    /// A row of the catalogue.
    pub fn new(
        id: impl Into<String>,
        bad: impl Into<String>,
        expect: ErrorKind,
        run: impl Fn() -> Outcome + 'static,
    ) -> Case {
        Case {
            id: id.into(),
            bad: bad.into(),
            expect,
            run: Box::new(run),
        }
    }
}

/// Every case, layer by layer.
fn catalogue() -> Vec<(Layer, Vec<Case>)> {
    Layer::ALL
        .into_iter()
        .map(|layer| (layer, layer.cases()))
        .collect()
}

/// The closed set of error kinds; the catalogue shows a case of each.
pub const ALL_KINDS: [ErrorKind; 16] = [
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
// The tests.
// ---------------------------------------------------------------------

#[test]
fn every_misuse_is_refused_with_its_kind_and_changes_nothing() {
    let mut failures = Vec::new();
    let catalogue = catalogue();
    let all: Vec<&Case> = catalogue.iter().flat_map(|(_, cases)| cases).collect();
    for case in &all {
        let outcome = match catch_unwind(AssertUnwindSafe(&case.run)) {
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
    let catalogue = catalogue();
    let all: Vec<&Case> = catalogue.iter().flat_map(|(_, cases)| cases).collect();
    assert!(all.len() >= 50, "only {} cases", all.len());
    let mut ids: Vec<&str> = all.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "case ids are unique");
    for (layer, cases) in &catalogue {
        assert!(!cases.is_empty(), "{layer:?} has no case");
        for case in cases {
            assert!(
                case.id.starts_with(layer.prefix()),
                "{} is filed under {layer:?}",
                case.id
            );
            assert!(
                !case.bad.contains('|') && !case.bad.contains('\n'),
                "{}",
                case.id
            );
        }
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
    let new = render(&catalogue());
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
        "docs/src/misuse.md is out of date with vmem-core/tests/misuse/ \
         (- the page, + the cases):\n{}\nRun `VMEM_BLESS=1 cargo test -p vmem-core --test misuse` \
         to rewrite it, and review the change.",
        diff(old, &new)
    );
}
