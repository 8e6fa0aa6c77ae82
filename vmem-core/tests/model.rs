//! Property tests: random operation sequences against a simple reference
//! model. After every step: results meet every constraint, nothing
//! overlaps, `NoSpace` only when the model finds no placement, free
//! segments are coalesced, `alloc + free == total`, a failed call changed
//! nothing, and `check` passes. At the end, freeing everything leaves one
//! free segment per span (and importing arenas no spans at all).

use std::collections::BTreeMap;

use proptest::prelude::*;
use vmem_core::{Arena, ArenaConfig, Constraints, ErrorKind, HeapMeta, Policy, SegmentKind};
use vmem_testkit::placement::Request;
use vmem_testkit::{PageBudget, walk};

const Q: u64 = 16;

/// What the model knows of one arena: its spans and live allocations.
#[derive(Default, Debug)]
struct Model {
    spans: BTreeMap<u64, u64>,
    live: BTreeMap<u64, (u64, bool)>, // addr -> (size, by xalloc)
}

impl Model {
    fn overlaps_span(&self, base: u64, size: u64) -> bool {
        self.spans
            .iter()
            .any(|(&b, &s)| b < base + size && base < b + s)
    }

    /// Free ranges in address order (spans minus live allocations).
    fn free_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for (&base, &size) in &self.spans {
            let mut at = base;
            for (&a, &(s, _)) in self.live.range(base..base + size) {
                if a > at {
                    out.push((at, a));
                }
                at = a + s;
            }
            if at < base + size {
                out.push((at, base + size));
            }
        }
        out
    }

    fn is_free(&self, addr: u64, size: u64) -> bool {
        self.free_ranges()
            .iter()
            .any(|&(s, e)| s <= addr && addr + size <= e)
    }

    /// Whether any free range holds a placement of `size` meeting `c`.
    fn has_placement(&self, size: u64, c: &Constraints) -> bool {
        Request::new(size, c, Q).fits_somewhere(&self.free_ranges())
    }
}

/// The rules the spec states for bad parameters, applied independently.
fn expected_param_error(size: u64, c: &Constraints) -> Option<ErrorKind> {
    let align = if c.align == 0 { Q } else { c.align };
    if size == 0 {
        return Some(ErrorKind::ZeroSize);
    }
    if !align.is_multiple_of(Q) || !c.phase.is_multiple_of(Q) || !c.nocross.is_multiple_of(Q) {
        return Some(ErrorKind::Misaligned);
    }
    let size = size.div_ceil(Q) * Q;
    if !align.is_power_of_two()
        || (c.nocross != 0 && !c.nocross.is_power_of_two())
        || c.phase >= align
        || (c.max != 0 && c.min >= c.max)
    {
        return Some(ErrorKind::BadConstraint);
    }
    if c.nocross != 0 && (align > c.nocross || c.phase + size > c.nocross) {
        return Some(ErrorKind::Overconstrained);
    }
    let request = Request::new(size, c, Q);
    if c.max != 0 && request.place_in(request.min, request.max).is_none() {
        return Some(ErrorKind::Overconstrained);
    }
    None
}

/// Invariants read off the walk: spans tiled exactly, free segments
/// coalesced, allocations exactly the model's, and the byte counts.
fn assert_matches(arena: &Arena<'_>, model: &Model, importing: bool) {
    arena.check().unwrap();
    let segs = walk(arena);
    let mut spans = BTreeMap::new();
    let mut live = BTreeMap::new();
    let (mut alloc, mut free, mut total) = (0, 0, 0);
    let mut span_end = 0;
    let mut at = 0;
    let mut prev_free = false;
    for s in &segs {
        match s.kind {
            SegmentKind::Span { imported } => {
                assert_eq!(at, span_end, "previous span not tiled");
                assert_eq!(imported, importing);
                spans.insert(s.start, s.size);
                (at, span_end) = (s.start, s.start + s.size);
                total += s.size;
                prev_free = false;
            }
            kind => {
                assert_eq!(s.start, at, "segments tile the span");
                at += s.size;
                assert!(at <= span_end);
                if kind == SegmentKind::Free {
                    assert!(!prev_free, "adjacent free segments at {:#x}", s.start);
                    free += s.size;
                } else {
                    live.insert(s.start, s.size);
                    alloc += s.size;
                }
                prev_free = kind == SegmentKind::Free;
            }
        }
    }
    assert_eq!(at, span_end);
    if !importing {
        assert_eq!(spans, model.spans);
    }
    let model_live: BTreeMap<u64, u64> = model.live.iter().map(|(&a, &(s, _))| (a, s)).collect();
    assert_eq!(live, model_live);
    let size = arena.size();
    assert_eq!((size.alloc, size.free, size.total), (alloc, free, total));
    assert_eq!(alloc + free, total);
}

#[derive(Clone, Debug)]
enum Op {
    AddSpan {
        slot: u64,
        quanta: u64,
    },
    Alloc {
        quanta: u64,
        policy: Policy,
    },
    Xalloc {
        quanta: u64,
        c: Constraints,
        policy: Policy,
    },
    Free {
        pick: usize,
        rounded: bool,
    },
    FreeWrong {
        pick: usize,
        how: u8,
    },
    FreeStray {
        addr: u64,
    },
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::InstantFit),
        Just(Policy::BestFit),
        Just(Policy::NextFit)
    ]
}

fn constraints() -> impl Strategy<Value = Constraints> {
    (
        prop_oneof![
            Just(0u64),
            (0u32..6).prop_map(|s| Q << s),
            Just(24u64),
            Just(8u64)
        ],
        0u64..8,
        prop_oneof![3 => Just(0u64), 2 => (2u32..8).prop_map(|s| Q << s), 1 => Just(48u64)],
        prop_oneof![2 => Just(0u64), 3 => 0u64..0x3000],
        prop_oneof![2 => Just(0u64), 3 => 0u64..0x3400],
    )
        .prop_map(|(align, phase_q, nocross, min, max)| {
            let a = if align == 0 { Q } else { align };
            // Mostly valid phases, sometimes one at or past the alignment.
            let phase = if phase_q == 7 {
                a
            } else {
                (phase_q * Q) % a.max(Q)
            };
            Constraints {
                align,
                phase,
                nocross,
                min,
                max,
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u64..12, 1u64..80).prop_map(|(slot, quanta)| Op::AddSpan { slot, quanta }),
        6 => (0u64..20, policy()).prop_map(|(quanta, policy)| Op::Alloc { quanta, policy }),
        3 => (0u64..12, constraints(), policy()).prop_map(|(quanta, c, policy)| Op::Xalloc { quanta, c, policy }),
        6 => (any::<usize>(), any::<bool>()).prop_map(|(pick, rounded)| Op::Free { pick, rounded }),
        1 => (any::<usize>(), 0u8..3).prop_map(|(pick, how)| Op::FreeWrong { pick, how }),
        1 => (0u64..0x3000).prop_map(|addr| Op::FreeStray { addr }),
    ]
}

fn pick(model: &Model, pick: usize) -> Option<(u64, u64, bool)> {
    let n = model.live.len();
    (n > 0).then(|| {
        let (&a, &(s, x)) = model.live.iter().nth(pick % n).unwrap();
        (a, s, x)
    })
}

/// Runs `ops` on `arena` (no source) against the model; returns the model.
/// `tags_may_run_out` allows `NoSpace` for lack of tags.
fn run(arena: &Arena<'_>, mut model: Model, ops: &[Op], tags_may_run_out: bool) -> Model {
    for op in ops {
        let before = walk(arena);
        let failed = match *op {
            Op::AddSpan { slot, quanta } => {
                let (base, size) = (slot * 32 * Q, quanta * Q);
                let r = arena.add_span(base, size);
                match r {
                    Ok(()) => {
                        assert!(!model.overlaps_span(base, size));
                        model.spans.insert(base, size);
                        None
                    }
                    Err(e) if e.kind() == ErrorKind::Overlap => {
                        assert!(model.overlaps_span(base, size));
                        Some(e)
                    }
                    Err(e) => {
                        assert!(tags_may_run_out && e.kind() == ErrorKind::NoSpace, "{e}");
                        Some(e)
                    }
                }
            }
            Op::Alloc { quanta, policy } => {
                let size = quanta * Q;
                match arena.alloc(size, policy) {
                    Ok(r) => {
                        assert!(
                            model.is_free(r, size),
                            "alloc {size:#x} at {r:#x} is not free"
                        );
                        assert_eq!(r % Q, 0);
                        model.live.insert(r, (size, false));
                        None
                    }
                    Err(e) => {
                        match e.kind() {
                            ErrorKind::ZeroSize => assert_eq!(size, 0),
                            ErrorKind::NoSpace if tags_may_run_out && e.what().contains("tags") => {
                            }
                            ErrorKind::NoSpace => {
                                assert!(
                                    !model.has_placement(size, &Constraints::NONE),
                                    "complete: {size:#x}"
                                )
                            }
                            _ => panic!("unexpected {e}"),
                        }
                        Some(e)
                    }
                }
            }
            Op::Xalloc { quanta, c, policy } => {
                let size = quanta * Q;
                let expected = expected_param_error(size, &c);
                match arena.xalloc(size, &c, policy) {
                    Ok(r) => {
                        assert_eq!(expected, None);
                        assert!(Request::new(size, &c, Q).meets(r), "{r:#x} {size:#x} {c:?}");
                        assert!(model.is_free(r, size));
                        model.live.insert(r, (size, true));
                        None
                    }
                    Err(e) => {
                        match e.kind() {
                            ErrorKind::NoSpace if tags_may_run_out && e.what().contains("tags") => {
                            }
                            ErrorKind::NoSpace => {
                                assert_eq!(expected, None);
                                assert!(
                                    !model.has_placement(size, &c),
                                    "complete: {size:#x} {c:?}"
                                );
                            }
                            kind => assert_eq!(Some(kind), expected, "{c:?} size {size:#x}"),
                        }
                        Some(e)
                    }
                }
            }
            Op::Free { pick: p, rounded } => match pick(&model, p) {
                Some((a, s, x)) => {
                    // A free may name the size asked for or the rounded one.
                    let named = if rounded { s } else { s - Q + 1 };
                    if x {
                        arena.xfree(a, named)
                    } else {
                        arena.free(a, named)
                    }
                    .unwrap();
                    model.live.remove(&a);
                    None
                }
                None => None,
            },
            Op::FreeWrong { pick: p, how } => match pick(&model, p) {
                Some((a, s, x)) => {
                    let r = match how {
                        0 => {
                            if x {
                                arena.free(a, s)
                            } else {
                                arena.xfree(a, s)
                            }
                        }
                        1 => arena.free(a, s + Q),
                        _ if model.live.contains_key(&(a + Q)) => continue,
                        _ => arena.free(a + Q, s),
                    };
                    let e = r.unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::BadFree);
                    Some(e)
                }
                None => None,
            },
            Op::FreeStray { addr } => {
                let addr = addr & !(Q - 1);
                if model.live.contains_key(&addr) {
                    None
                } else {
                    let e = arena.free(addr, Q).unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::BadFree);
                    Some(e)
                }
            }
        };
        if let Some(e) = failed {
            assert_eq!(
                walk(arena),
                before,
                "failed call {op:?} ({e}) changed the arena"
            );
        }
        assert_matches(arena, &model, false);
    }
    model
}

fn free_all(arena: &Arena<'_>, model: &mut Model) {
    for (a, (s, x)) in std::mem::take(&mut model.live) {
        if x {
            arena.xfree(a, s)
        } else {
            arena.free(a, s)
        }
        .unwrap();
    }
    arena.check().unwrap();
    let segs = walk(arena);
    assert_eq!(
        segs.len(),
        2 * model.spans.len(),
        "one free segment per span"
    );
    for pair in segs.chunks(2) {
        assert!(matches!(pair[0].kind, SegmentKind::Span { .. }));
        assert_eq!(
            (pair[1].kind, pair[1].start, pair[1].size),
            (SegmentKind::Free, pair[0].start, pair[0].size)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn arena_matches_the_model(first in 1u64..64, ops in prop::collection::vec(op(), 1..160)) {
        let arena: Arena = Arena::create(ArenaConfig::new("model", Q).span(0x40 * Q, first * Q).meta(&HeapMeta)).unwrap();
        let model = Model { spans: BTreeMap::from([(0x40 * Q, first * Q)]), ..Model::default() };
        let mut model = run(&arena, model, &ops, false);
        free_all(&arena, &mut model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Tags come only from a meta source that runs dry: operations fail
    /// cleanly with `NoSpace`, change nothing, and frees always work.
    #[test]
    fn running_out_of_tags_fails_cleanly(pages in 1usize..3, ops in prop::collection::vec(op(), 1..400)) {
        let meta = PageBudget::new(pages);
        {
            let arena: Arena = Arena::create(ArenaConfig::new("tight", Q).meta(&meta).static_tags(false)).unwrap();
            let mut ops = ops;
            // Many small allocations to use up tags.
            for _ in 0..200 {
                ops.push(Op::Alloc { quanta: 1, policy: Policy::InstantFit });
                ops.push(Op::AddSpan { slot: 0, quanta: 64 });
            }
            let mut model = run(&arena, Model::default(), &ops, true);
            free_all(&arena, &mut model);
        }
        prop_assert_eq!(meta.left(), pages, "every page went back");
    }
}

#[derive(Clone, Debug)]
enum TreeOp {
    LeafAlloc { quanta: u64 },
    MidAlloc { quanta: u64 },
    RootXalloc { quanta: u64 },
    Free { pick: usize },
    FailImport,
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    prop_oneof![
        5 => (1u64..40).prop_map(|quanta| TreeOp::LeafAlloc { quanta }),
        2 => (1u64..80).prop_map(|quanta| TreeOp::MidAlloc { quanta }),
        1 => (1u64..16).prop_map(|quanta| TreeOp::RootXalloc { quanta }),
        6 => any::<usize>().prop_map(|pick| TreeOp::Free { pick }),
        1 => Just(TreeOp::FailImport),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Importing arenas two levels deep: root <- mid <- leaf. Every layer
    /// stays consistent, imports and releases balance, a failed call at the
    /// leaf changes no layer, and freeing everything gives root back whole.
    #[test]
    fn importing_two_levels_deep(ops in prop::collection::vec(tree_op(), 1..200), root_quanta in 64u64..512) {
        let root: Arena = Arena::create(ArenaConfig::new("root", Q).span(0x1000, root_quanta * Q).meta(&HeapMeta)).unwrap();
        let mid: Arena = Arena::create(ArenaConfig::new("mid", Q).source(&root, 16 * Q).meta(&HeapMeta)).unwrap();
        let leaf: Arena = Arena::create(ArenaConfig::new("leaf", Q).source(&mid, 4 * Q).meta(&HeapMeta)).unwrap();
        let root_before = walk(&root);
        // (layer, addr, size): layer 0 leaf alloc, 1 mid alloc, 2 root xalloc
        let mut live: Vec<(u8, u64, u64)> = Vec::new();
        for op in &ops {
            let before = (walk(&root), walk(&mid), walk(&leaf));
            let result = match *op {
                TreeOp::LeafAlloc { quanta } => leaf.alloc(quanta * Q, Policy::InstantFit).map(|a| live.push((0, a, quanta * Q))),
                TreeOp::MidAlloc { quanta } => mid.alloc(quanta * Q, Policy::BestFit).map(|a| live.push((1, a, quanta * Q))),
                TreeOp::RootXalloc { quanta } => root
                    .xalloc(quanta * Q, &Constraints::aligned(4 * Q), Policy::InstantFit)
                    .map(|a| live.push((2, a, quanta * Q))),
                TreeOp::Free { pick } if !live.is_empty() => {
                    let (layer, a, s) = live.swap_remove(pick % live.len());
                    match layer {
                        0 => leaf.free(a, s),
                        1 => mid.free(a, s),
                        _ => root.xfree(a, s),
                    }
                }
                TreeOp::Free { .. } => Ok(()),
                TreeOp::FailImport => {
                    leaf.fail_imports(1);
                    Ok(())
                }
            };
            if let Err(e) = result {
                prop_assert!(matches!(e.kind(), ErrorKind::NoSpace | ErrorKind::ImportFailed), "{}", e);
                prop_assert_eq!((walk(&root), walk(&mid), walk(&leaf)), before.clone(), "failed {:?} changed something", op);
            }
            leaf.fail_imports(0);
            for arena in [&root, &mid, &leaf] {
                arena.check().unwrap();
                let s = arena.size();
                prop_assert_eq!(s.alloc + s.free, s.total);
            }
            // Conservation: each child's spans are exactly its parent's
            // allocations for it.
            let leaf_spans = walk(&leaf).iter().filter(|s| matches!(s.kind, SegmentKind::Span { .. })).map(|s| s.size).sum::<u64>();
            let mid_own = live.iter().filter(|l| l.0 == 1).map(|l| l.2).sum::<u64>();
            prop_assert_eq!(mid.size().alloc, leaf_spans + mid_own);
            let root_own = live.iter().filter(|l| l.0 == 2).map(|l| l.2).sum::<u64>();
            prop_assert_eq!(root.size().alloc, mid.size().total + root_own);
            let leaf_own = live.iter().filter(|l| l.0 == 0).map(|l| l.2.div_ceil(Q) * Q).sum::<u64>();
            prop_assert_eq!(leaf.size().alloc, leaf_own);
        }
        for (layer, a, s) in live.drain(..) {
            match layer {
                0 => leaf.free(a, s),
                1 => mid.free(a, s),
                _ => root.xfree(a, s),
            }
            .unwrap();
        }
        prop_assert!(walk(&leaf).is_empty());
        prop_assert!(walk(&mid).is_empty());
        prop_assert_eq!(walk(&root), root_before);
        let (ls, ms) = (leaf.stats(), mid.stats());
        prop_assert_eq!(ls.imports, ls.releases);
        prop_assert_eq!(ms.imports, ms.releases);
    }
}
