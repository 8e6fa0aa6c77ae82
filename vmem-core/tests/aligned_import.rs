//! Constrained requests on an importing arena: alignment and phase import
//! an aligned span from the source (as illumos's and FreeBSD's
//! `vmem_xalloc` do); `nocross` and `[min, max)` windows never import.
//!
//! Completeness: an aligned request on an importing arena fails only when
//! its own free space holds no placement and its source cannot supply an
//! aligned span of `size + phase`; the failed call changes nothing.

use proptest::prelude::*;
use vmem_core::{Arena, ArenaConfig, Constraints, ErrorKind, HeapMeta, Policy, Segment};

const MIB: u64 = 1 << 20;
const Q: u64 = 0x1000;

fn root(base: u64, size: u64) -> Arena<'static> {
    Arena::create(ArenaConfig::new("root", Q).span(base, size).meta(&HeapMeta)).unwrap()
}

fn child<'p>(source: &'p Arena<'static>, import_min: u64) -> Arena<'p> {
    Arena::create(
        ArenaConfig::new("region", Q)
            .source(source, import_min)
            .meta(&HeapMeta),
    )
    .unwrap()
}

fn walk(arena: &Arena<'_>) -> Vec<Segment> {
    let mut out = Vec::new();
    arena.walk(|s| out.push(s));
    out
}

/// Whether a free segment of `arena` holds `size` at `align` and `phase`.
fn has_placement(arena: &Arena<'_>, size: u64, align: u64, phase: u64) -> bool {
    walk(arena).iter().any(|s| {
        s.kind == vmem_core::SegmentKind::Free && {
            let lo = s.start.max(phase);
            let r = (lo - phase).next_multiple_of(align) + phase;
            r + size <= s.start + s.size
        }
    })
}

#[test]
fn a_256_mib_bar_imports_an_aligned_span() {
    // The root starts 64 MiB past an alignment boundary, and the region's
    // first import holds no 256 MiB-aligned range of 256 MiB.
    let root = root(0x1_0400_0000, 2 << 30);
    let region = child(&root, 64 * MIB);
    let small = region.alloc(Q, Policy::InstantFit).unwrap();
    assert_eq!(region.stats().imports, 1);
    assert!(!has_placement(&region, 256 * MIB, 256 * MIB, 0));

    let bar = region
        .xalloc(
            256 * MIB,
            &Constraints::aligned(256 * MIB),
            Policy::InstantFit,
        )
        .unwrap();
    assert_eq!(bar % (256 * MIB), 0);
    assert_eq!(region.stats().imports, 2);
    // The region imported exactly the aligned span it needed, so the root
    // shows the BAR where it lies.
    assert!(
        walk(&root)
            .iter()
            .any(|s| s.start == bar && s.size == 256 * MIB)
    );
    region.check().unwrap();
    root.check().unwrap();

    // With a phase: the span is aligned, the allocation sits at the phase.
    let phased = Constraints {
        align: 256 * MIB,
        phase: 2 * MIB,
        ..Constraints::NONE
    };
    let p = region.xalloc(MIB, &phased, Policy::InstantFit).unwrap();
    assert_eq!(p % (256 * MIB), 2 * MIB);

    region.xfree(p, MIB).unwrap();
    region.xfree(bar, 256 * MIB).unwrap();
    region.free(small, Q).unwrap();
    assert_eq!(region.size().total, 0, "every span went back");
    assert_eq!(root.size().alloc, 0);
    region.check().unwrap();
    root.check().unwrap();
}

#[test]
fn unconstrained_xalloc_imports_like_alloc() {
    let root = root(0x10_0000, 16 * MIB);
    let region = child(&root, 0);
    let x = region
        .xalloc(Q, &Constraints::NONE, Policy::InstantFit)
        .unwrap();
    assert_eq!(region.stats().imports, 1);
    region.xfree(x, Q).unwrap();
    assert_eq!(root.size().alloc, 0);
}

#[test]
fn windows_and_boundaries_never_import() {
    let root = root(0x10_0000, 16 * MIB);
    let region = child(&root, 0);
    let window = Constraints {
        min: 0x10_0000,
        max: 0x20_0000,
        ..Constraints::NONE
    };
    let nocross = Constraints {
        nocross: MIB,
        ..Constraints::NONE
    };
    for c in [window, nocross] {
        let before = (walk(&region), walk(&root));
        let err = region.xalloc(Q, &c, Policy::InstantFit).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoSpace);
        assert_eq!((walk(&region), walk(&root)), before);
    }
    assert_eq!(region.stats().imports, 0);
}

#[test]
fn a_source_without_an_aligned_span_fails_the_request_and_changes_nothing() {
    // 64 MiB of root, none of it 256 MiB-aligned with room for 256 MiB.
    let root = root(0x1_0400_0000, 64 * MIB);
    let region = child(&root, 0);
    let x = region.alloc(Q, Policy::InstantFit).unwrap();
    let before = (walk(&region), walk(&root), region.size(), root.size());
    let err = region
        .xalloc(MIB, &Constraints::aligned(256 * MIB), Policy::InstantFit)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ImportFailed);
    assert_eq!(
        (walk(&region), walk(&root), region.size(), root.size()),
        before
    );
    region.check().unwrap();
    root.check().unwrap();
    region.free(x, Q).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// An aligned request on an importing arena fails only when neither its
    /// free space nor its source holds an aligned placement, and a failure
    /// changes nothing; a success meets the request.
    #[test]
    fn aligned_requests_fail_only_when_the_source_cannot_supply(
        root_base in 0u64..64,
        root_pages in 1u64..512,
        holes in proptest::collection::vec((1u64..32, any::<bool>()), 0..24),
        import_min in 0u64..16,
        requests in proptest::collection::vec((1u64..64, 0u32..8, 0u64..8), 1..24),
    ) {
        let root = root(root_base * Q, root_pages * Q);
        // Fragment the root: allocate runs, free every other one.
        let mut taken = Vec::new();
        for (pages, keep) in holes {
            if let Ok(a) = root.alloc(pages * Q, Policy::InstantFit) {
                taken.push((a, pages * Q, keep));
            }
        }
        for &(a, s, keep) in &taken {
            if !keep {
                root.free(a, s).unwrap();
            }
        }
        let region = child(&root, import_min * Q);
        let mut live = Vec::new();
        for (pages, align_log, phase_pages) in requests {
            let size = pages * Q;
            let align = Q << align_log;
            let phase = (phase_pages * Q) % align;
            let c = Constraints { align, phase, ..Constraints::NONE };
            let own = has_placement(&region, size, align, phase);
            let before = (walk(&region), walk(&root), region.size(), root.size());
            match region.xalloc(size, &c, Policy::InstantFit) {
                Ok(addr) => {
                    prop_assert_eq!(addr % align, phase);
                    live.push((addr, size));
                }
                Err(e) => {
                    prop_assert!(!own, "the region had a placement");
                    prop_assert_eq!(e.kind(), ErrorKind::ImportFailed);
                    prop_assert_eq!(
                        (walk(&region), walk(&root), region.size(), root.size()),
                        before
                    );
                    // The source itself has no aligned span of size + phase
                    // (at least the region's minimum import).
                    let want = (size + phase).max(import_min * Q).max(Q);
                    prop_assert!(root.xalloc(want, &Constraints::aligned(align), Policy::InstantFit).is_err());
                }
            }
            prop_assert!(region.check().is_ok());
            prop_assert!(root.check().is_ok());
        }
        for (a, s) in live {
            region.xfree(a, s).unwrap();
        }
        prop_assert_eq!(region.size().total, 0);
    }
}
