//! Operation sequences on two arenas, a parent with spans added by hand and
//! a child importing from it, against a reference model.
//!
//! The input decodes (with `arbitrary`) into the quanta, the child's
//! minimum import, an optional budget of meta pages (with the static tag
//! pool off, so tags run out), and a list of operations: add span, alloc
//! and xalloc under every policy and any constraints, free and xfree of
//! live allocations (by the size asked for or the rounded one, by the right
//! call or the wrong one) and of bogus ranges, contains, injected import
//! failures, and destroy.
//!
//! For every operation the model says which outcomes are allowed: the set
//! of error kinds that apply to the parameters, success when a placement
//! exists (completeness: `NoSpace` only when no free range holds a
//! placement meeting every constraint, for every policy), and for the
//! child whether an import must happen and whether it can succeed. After
//! every step: both `check`s pass, a failed call changed neither arena's
//! walk, the walks tile each span with coalesced free segments, the
//! allocated segments are exactly the model's (the parent's include the
//! child's imported spans), no imported span is wholly free, and the
//! counters agree with the walks. At the end everything is freed: the child
//! has no imported span left, the parent one free segment per span, and
//! every meta page and static tag went back.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmem_core::{
    Arena, ArenaConfig, Constraints, ErrorKind, HeapMeta, MetaSource, Policy, Result, Segment,
    SegmentKind, static_tags_available,
};
use vmem_testkit::placement::Request;
use vmem_testkit::{PageBudget, walk};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Parent quantum: `1 << (parent_shift % 13)`.
    parent_shift: u8,
    /// Child quantum: `1 << (child_shift % 13)`.
    child_shift: u8,
    /// Child's minimum import, in child quanta.
    import_min: u8,
    /// The parent's first span, in parent quanta (none if zero).
    first_span: u16,
    /// Meta pages both arenas share, with the static tag pool off.
    tight: Option<u8>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Parent,
    Child,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PolicyIn {
    Instant,
    Best,
    Next,
}

impl PolicyIn {
    fn policy(self) -> Policy {
        match self {
            PolicyIn::Instant => Policy::InstantFit,
            PolicyIn::Best => Policy::BestFit,
            PolicyIn::Next => Policy::NextFit,
        }
    }
}

/// A size-like value: mostly quanta, sometimes a power of two, sometimes
/// anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Quanta(u8),
    Pow(u8),
    Raw(u64),
}

impl Value {
    fn get(self, q: u64) -> u64 {
        match self {
            Value::Quanta(n) => u64::from(n) * q,
            Value::Pow(k) => q.checked_shl(u32::from(k % 40)).unwrap_or(0),
            Value::Raw(v) => v,
        }
    }
}

/// An address: in one of sixteen slots of 256 quanta, near the top of the
/// integer space, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Slot(u8, u8),
    Top(u8, u8),
    Raw(u64),
}

impl Addr {
    fn get(self, q: u64) -> u64 {
        match self {
            Addr::Slot(slot, off) => (u64::from(slot % 16) * 256 + u64::from(off)) * q,
            Addr::Top(k, off) => {
                let from_top = (u64::from(k % 4) + 1) * 256 * q;
                (u64::MAX - from_top + 1 + u64::from(off) * q) & !(q - 1)
            }
            Addr::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct ConstraintsIn {
    align: Value,
    phase: Value,
    nocross: Value,
    min: Addr,
    max: Option<Addr>,
    /// Which fields are set (the others stay zero).
    fields: u8,
}

impl ConstraintsIn {
    fn get(self, q: u64) -> Constraints {
        let on = |bit: u8| self.fields & (1 << bit) != 0;
        Constraints {
            align: if on(0) { self.align.get(q) } else { 0 },
            phase: if on(1) { self.phase.get(q) } else { 0 },
            nocross: if on(2) { self.nocross.get(q) } else { 0 },
            min: if on(3) { self.min.get(q) } else { 0 },
            max: match self.max {
                Some(a) if on(4) => a.get(q),
                _ => 0,
            },
        }
    }
}

/// The size a free names for a live allocation.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Named {
    Rounded,
    AskedFor,
    Other(Value),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    AddSpan {
        which: Which,
        base: Addr,
        size: Value,
    },
    Alloc {
        which: Which,
        size: Value,
        policy: PolicyIn,
    },
    Xalloc {
        which: Which,
        size: Value,
        constraints: ConstraintsIn,
        policy: PolicyIn,
    },
    /// Frees a live allocation (`wrong_call`: free for xalloc and back).
    Free {
        which: Which,
        pick: u16,
        named: Named,
        wrong_call: bool,
    },
    /// Frees whatever range (mostly not allocated).
    Stray {
        which: Which,
        addr: Addr,
        size: Value,
        xfree: bool,
    },
    Contains {
        which: Which,
        addr: Addr,
        size: Value,
    },
    FailImports(u8),
    Destroy(Which),
}

/// What the model knows of one arena: its live allocations
/// (address -> rounded size, by xalloc). Spans and free segments are read
/// off the walk, which is checked against the model after every step.
struct Model {
    q: u64,
    live: BTreeMap<u64, (u64, bool)>,
}

fn spans(segs: &[Segment]) -> impl Iterator<Item = &Segment> {
    segs.iter()
        .filter(|s| matches!(s.kind, SegmentKind::Span { .. }))
}

fn free_ranges(segs: &[Segment]) -> Vec<(u64, u64)> {
    segs.iter()
        .filter(|s| s.kind == SegmentKind::Free)
        .map(|s| (s.start, s.start + s.size))
        .collect()
}

fn round_up(v: u64, q: u64) -> Option<u64> {
    Some(v.checked_add(q - 1)? / q * q)
}

/// The error kinds the parameters of `xalloc(size, c)` (or `alloc` when
/// `c` is none) allow, and the request when they allow none.
fn judge_request(size: u64, c: &Constraints, q: u64) -> (Vec<ErrorKind>, Option<Request>) {
    let mut kinds = Vec::new();
    if size == 0 {
        kinds.push(ErrorKind::ZeroSize);
    }
    let rounded = round_up(size, q);
    if rounded.is_none() {
        kinds.push(ErrorKind::Overflow);
    }
    let rounded = rounded.unwrap_or(0);
    if *c == Constraints::NONE {
        let want = Request::new(rounded, c, q);
        return (kinds.clone(), kinds.is_empty().then_some(want));
    }
    let align = if c.align == 0 { q } else { c.align };
    if !align.is_multiple_of(q) || !c.phase.is_multiple_of(q) || !c.nocross.is_multiple_of(q) {
        kinds.push(ErrorKind::Misaligned);
    }
    if !align.is_power_of_two()
        || (c.nocross != 0 && !c.nocross.is_power_of_two())
        || c.phase >= align
        || (c.max != 0 && c.min >= c.max)
    {
        kinds.push(ErrorKind::BadConstraint);
    }
    let want = Request::new(rounded, c, q);
    if c.nocross != 0
        && (align > c.nocross || u128::from(c.phase) + u128::from(rounded) > u128::from(c.nocross))
    {
        kinds.push(ErrorKind::Overconstrained);
    }
    // No segment ends past u64::MAX, so without a max the window still
    // ends there.
    if kinds.is_empty() && want.place_in(want.min, want.max).is_none() {
        kinds.push(ErrorKind::Overconstrained);
    }
    let ok = kinds.is_empty();
    (kinds, ok.then_some(want))
}

/// The error kinds a free of `(addr, size)` by `xfree` or `free` may give;
/// empty when it must succeed.
fn judge_free(model: &Model, addr: u64, size: u64, xfree: bool) -> Vec<ErrorKind> {
    let mut kinds = Vec::new();
    if size == 0 {
        kinds.push(ErrorKind::ZeroSize);
    }
    match round_up(size, model.q) {
        None => kinds.push(ErrorKind::Overflow),
        Some(rounded) => {
            if model.live.get(&addr) != Some(&(rounded, xfree)) {
                kinds.push(ErrorKind::BadFree);
            }
        }
    }
    kinds
}

/// Checks everything read off one arena's walk against its model and its
/// counters; returns the walk.
fn verify(arena: &Arena<'_>, model: &Model, imported_expected: Option<bool>) -> Vec<Segment> {
    if let Err(e) = arena.check() {
        panic!("check failed: {e}");
    }
    let segs = walk(arena);
    let mut live = BTreeMap::new();
    let (mut alloc, mut free, mut total) = (0u64, 0u64, 0u64);
    let (mut at, mut span_end) = (0u128, 0u128);
    let mut prev_free = false;
    let (mut n_spans, mut n_free) = (0u64, 0u64);
    let mut span_segments = 0;
    let mut span_free_whole = false;
    let mut imported_span = false;
    for s in &segs {
        let (start, end) = (
            u128::from(s.start),
            u128::from(s.start) + u128::from(s.size),
        );
        match s.kind {
            SegmentKind::Span { imported } => {
                assert_eq!(at, span_end, "the span before {:#x} is not tiled", s.start);
                assert!(
                    !(imported_span && span_free_whole),
                    "an imported span is wholly free"
                );
                if let Some(expected) = imported_expected {
                    assert_eq!(imported, expected, "span {:#x} imported flag", s.start);
                }
                assert!(start >= span_end, "spans out of order at {:#x}", s.start);
                assert!(s.size > 0 && s.start % model.q == 0 && s.size % model.q == 0);
                (at, span_end) = (start, end);
                total += s.size;
                prev_free = false;
                n_spans += 1;
                span_segments = 0;
                span_free_whole = false;
                imported_span = imported;
            }
            kind => {
                assert_eq!(start, at, "segments do not tile the span at {:#x}", s.start);
                assert!(end <= span_end, "segment {:#x} passes its span", s.start);
                assert!(s.size > 0 && s.size % model.q == 0);
                at = end;
                span_segments += 1;
                if kind == SegmentKind::Free {
                    assert!(!prev_free, "adjacent free segments at {:#x}", s.start);
                    free += s.size;
                    n_free += 1;
                    span_free_whole = span_segments == 1 && end == span_end;
                } else {
                    live.insert(s.start, s.size);
                    alloc += s.size;
                    span_free_whole = false;
                }
                prev_free = kind == SegmentKind::Free;
            }
        }
    }
    assert_eq!(at, span_end, "the last span is not tiled");
    assert!(
        !(imported_span && span_free_whole),
        "an imported span is wholly free"
    );
    let model_live: BTreeMap<u64, u64> = model.live.iter().map(|(&a, &(s, _))| (a, s)).collect();
    // The parent's allocations include the child's spans, checked apart.
    if imported_expected != Some(false) {
        assert_eq!(live, model_live, "allocated segments differ from the model");
    }
    let size = arena.size();
    assert_eq!((size.alloc, size.free, size.total), (alloc, free, total));
    let stats = arena.stats();
    assert_eq!(stats.spans, n_spans, "stats.spans");
    assert_eq!(stats.free_segments, n_free, "stats.free_segments");
    assert_eq!(
        stats.alloc_segments,
        live.len() as u64,
        "stats.alloc_segments"
    );
    segs
}

struct Run<'a> {
    parent: &'a Arena<'a>,
    child: &'a Arena<'a>,
    pm: Model,
    cm: Model,
    /// Whether the child still imports (until it is destroyed).
    attached: bool,
    /// Imports still to fail.
    fail: u64,
    import_min: u64,
    tight: bool,
}

impl<'a> Run<'a> {
    fn arena(&self, which: Which) -> (&'a Arena<'a>, &Model) {
        match which {
            Which::Parent => (self.parent, &self.pm),
            Which::Child => (self.child, &self.cm),
        }
    }

    fn model_mut(&mut self, which: Which) -> &mut Model {
        match which {
            Which::Parent => &mut self.pm,
            Which::Child => &mut self.cm,
        }
    }

    /// Whether a refusal for lack of tags is allowed here.
    fn out_of_tags(&self, e: &vmem_core::Error) -> bool {
        self.tight && e.kind() == ErrorKind::NoSpace && e.what().contains("tags")
    }

    fn step(&mut self, op: Op) {
        let before = (walk(self.parent), walk(self.child));
        let child_has_own_spans =
            spans(&before.1).any(|s| s.kind == SegmentKind::Span { imported: false });
        // Ok(()) or the error of a call that must have changed nothing.
        let outcome: Result<()> = match op {
            Op::AddSpan { which, base, size } => {
                let (arena, model) = self.arena(which);
                let (base, size) = (base.get(model.q), size.get(model.q));
                let segs = if which == Which::Parent {
                    &before.0
                } else {
                    &before.1
                };
                let mut kinds = Vec::new();
                if size == 0 {
                    kinds.push(ErrorKind::ZeroSize);
                }
                let end = base.checked_add(size);
                if end.is_none() {
                    kinds.push(ErrorKind::Overflow);
                }
                if (base | size) % model.q != 0 {
                    kinds.push(ErrorKind::Misaligned);
                }
                let end = end.unwrap_or(u64::MAX);
                if spans(segs).any(|s| s.start < end && base < s.start + s.size) {
                    kinds.push(ErrorKind::Overlap);
                }
                let r = arena.add_span(base, size);
                match &r {
                    Ok(()) => assert!(
                        kinds.is_empty(),
                        "add_span({base:#x}, {size:#x}) should fail: {kinds:?}"
                    ),
                    Err(e) if kinds.contains(&e.kind()) || self.out_of_tags(e) => {}
                    Err(e) => panic!("add_span({base:#x}, {size:#x}): {e}, expected {kinds:?}"),
                }
                r
            }
            Op::Alloc {
                which,
                size,
                policy,
            } => {
                let q = self.arena(which).1.q;
                let size = size.get(q);
                self.allocate(
                    which,
                    size,
                    None,
                    policy.policy(),
                    &before,
                    child_has_own_spans,
                )
            }
            Op::Xalloc {
                which,
                size,
                constraints,
                policy,
            } => {
                let q = self.arena(which).1.q;
                let (size, c) = (size.get(q), constraints.get(q));
                self.allocate(
                    which,
                    size,
                    Some(c),
                    policy.policy(),
                    &before,
                    child_has_own_spans,
                )
            }
            Op::Free {
                which,
                pick,
                named,
                wrong_call,
            } => {
                let (arena, model) = self.arena(which);
                let n = model.live.len();
                if n == 0 {
                    return;
                }
                let Some((&addr, &(rounded, x))) = model.live.iter().nth(usize::from(pick) % n)
                else {
                    return;
                };
                let size = match named {
                    Named::Rounded => rounded,
                    Named::AskedFor => rounded - model.q + 1,
                    Named::Other(v) => v.get(model.q),
                };
                let xfree = x != wrong_call;
                self.free(which, arena, addr, size, xfree)
            }
            Op::Stray {
                which,
                addr,
                size,
                xfree,
            } => {
                let (arena, model) = self.arena(which);
                let (addr, size) = (addr.get(model.q), size.get(model.q));
                self.free(which, arena, addr, size, xfree)
            }
            Op::Contains { which, addr, size } => {
                let (arena, model) = self.arena(which);
                let (addr, size) = (addr.get(model.q), size.get(model.q));
                let segs = if which == Which::Parent {
                    &before.0
                } else {
                    &before.1
                };
                let r = arena.contains(addr, size);
                match addr.checked_add(size) {
                    _ if size == 0 => assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::ZeroSize)),
                    None => assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::Overflow)),
                    Some(end) => {
                        let inside =
                            spans(segs).any(|s| s.start <= addr && end <= s.start + s.size);
                        assert_eq!(
                            r.map_err(|e| e.kind()),
                            Ok(inside),
                            "contains({addr:#x}, {size:#x})"
                        );
                    }
                }
                r.map(|_| ())
            }
            Op::FailImports(n) => {
                let n = u64::from(n % 4);
                self.child.fail_imports(n);
                self.fail = n;
                Ok(())
            }
            Op::Destroy(which) => {
                let (arena, model) = self.arena(which);
                let busy = !model.live.is_empty() || (which == Which::Parent && self.attached);
                let r = arena.destroy();
                match &r {
                    Ok(()) => {
                        assert!(!busy, "destroy of a busy arena succeeded");
                        assert!(walk(arena).is_empty(), "a destroyed arena kept spans");
                        if which == Which::Child {
                            self.attached = false;
                        }
                    }
                    Err(e) => assert!(busy && e.kind() == ErrorKind::InUse, "destroy: {e}"),
                }
                r
            }
        };
        if let Err(e) = outcome {
            let after = (walk(self.parent), walk(self.child));
            assert!(after == before, "failed {op:?} ({e}) changed an arena");
        }
        self.verify_both();
    }

    fn allocate(
        &mut self,
        which: Which,
        size: u64,
        c: Option<Constraints>,
        policy: Policy,
        before: &(Vec<Segment>, Vec<Segment>),
        child_has_own_spans: bool,
    ) -> Result<()> {
        let (arena, model) = self.arena(which);
        let q = model.q;
        let (kinds, want) = judge_request(size, &c.unwrap_or(Constraints::NONE), q);
        let segs = if which == Which::Parent {
            &before.0
        } else {
            &before.1
        };
        let free = free_ranges(segs);
        let fits = want.as_ref().is_some_and(|w| w.fits_somewhere(&free));
        // Only the child imports, only when nothing fits, and only for a
        // request constrained by alignment and phase alone: it asks its
        // parent for `size + phase` aligned to the alignment (just `size`
        // when the alignment is its quantum), at least its minimum import.
        let imports = which == Which::Child
            && want
                .as_ref()
                .is_some_and(|w| w.nocross == 0 && w.min == 0 && w.max == u64::MAX)
            && !fits
            && self.attached;
        let ask = want.as_ref().and_then(|w| {
            if w.align > q {
                w.size.checked_add(w.phase).map(|s| (s, w.align))
            } else {
                Some((w.size, q))
            }
        });
        let import_ok = imports && self.fail == 0 && {
            let pq = self.pm.q;
            match ask.and_then(|(s, a)| round_up(s.max(self.import_min), pq).map(|s| (s, a))) {
                Some((import, align)) => Request {
                    size: import,
                    align: align.max(pq),
                    phase: 0,
                    nocross: 0,
                    min: 0,
                    max: u64::MAX,
                }
                .fits_somewhere(&free_ranges(&before.0)),
                None => false,
            }
        };
        let r = match c {
            None => arena.alloc(size, policy),
            Some(c) => arena.xalloc(size, &c, policy),
        };
        let what = || format!("{which:?} alloc {size:#x} {c:?} {policy:?}");
        match r {
            Ok(addr) => {
                let Some(w) = want else {
                    panic!("{} succeeded at {addr:#x}; expected {kinds:?}", what())
                };
                assert!(
                    w.meets(addr),
                    "{} gave {addr:#x}, which breaks the constraints",
                    what()
                );
                let end = addr + w.size;
                let in_free = free.iter().any(|&(s, e)| s <= addr && end <= e);
                if !in_free {
                    // Only an import may place it outside what was free.
                    assert!(
                        imports && import_ok,
                        "{} gave {addr:#x}, not free before",
                        what()
                    );
                    let after = walk(arena);
                    let new_span = spans(&after).any(|s| {
                        s.kind == SegmentKind::Span { imported: true }
                            && s.start <= addr
                            && end <= s.start + s.size
                            && !segs.contains(s)
                    });
                    assert!(
                        new_span,
                        "{} gave {addr:#x} outside a newly imported span",
                        what()
                    );
                }
                if imports {
                    self.fail = self.fail.saturating_sub(1);
                }
                self.model_mut(which)
                    .live
                    .insert(addr, (w.size, c.is_some()));
                Ok(())
            }
            Err(e) => {
                let k = e.kind();
                if !kinds.is_empty() {
                    assert!(kinds.contains(&k), "{}: {e}, expected {kinds:?}", what());
                } else if self.out_of_tags(&e) {
                } else if imports && self.fail > 0 {
                    assert_eq!(
                        k,
                        ErrorKind::ImportFailed,
                        "{}: {e} (injected failure)",
                        what()
                    );
                    self.fail -= 1;
                } else if imports && ask.is_none() {
                    assert_eq!(k, ErrorKind::Overflow, "{}: {e} (import size)", what());
                } else if imports && !import_ok {
                    assert_eq!(k, ErrorKind::ImportFailed, "{}: {e}", what());
                } else if imports && (self.tight || child_has_own_spans) {
                    // The parent ran out of tags, or the span it gave
                    // overlaps one added to the child by hand.
                    assert_eq!(k, ErrorKind::ImportFailed, "{}: {e}", what());
                } else {
                    assert!(
                        !fits && !imports && k == ErrorKind::NoSpace,
                        "{}: {e}; the model expects {}",
                        what(),
                        if fits || imports {
                            "success: a placement exists (completeness)"
                        } else {
                            "NoSpace"
                        }
                    );
                }
                Err(e)
            }
        }
    }

    fn free(
        &mut self,
        which: Which,
        arena: &'a Arena<'a>,
        addr: u64,
        size: u64,
        xfree: bool,
    ) -> Result<()> {
        let model = self.arena(which).1;
        let kinds = judge_free(model, addr, size, xfree);
        let r = if xfree {
            arena.xfree(addr, size)
        } else {
            arena.free(addr, size)
        };
        match &r {
            Ok(()) => {
                assert!(
                    kinds.is_empty(),
                    "{which:?} free({addr:#x}, {size:#x}, x={xfree}) succeeded; expected {kinds:?}"
                );
                self.model_mut(which).live.remove(&addr);
            }
            Err(e) => assert!(
                kinds.contains(&e.kind()),
                "{which:?} free({addr:#x}, {size:#x}, x={xfree}): {e}, expected {kinds:?}"
            ),
        }
        r
    }

    /// Checks both arenas, and that the parent's allocations are its own
    /// plus the child's imported spans (each rounded up to its quantum).
    fn verify_both(&self) {
        let child = verify(self.child, &self.cm, None);
        let parent = verify(self.parent, &self.pm, Some(false));
        let mut expected: BTreeMap<u64, u64> =
            self.pm.live.iter().map(|(&a, &(s, _))| (a, s)).collect();
        let mut imported = 0u64;
        for s in spans(&child) {
            if s.kind == (SegmentKind::Span { imported: true }) {
                let rounded = round_up(s.size, self.pm.q).unwrap_or(0);
                assert!(
                    expected.insert(s.start, rounded).is_none(),
                    "an imported span is also a parent allocation"
                );
                imported += 1;
            }
        }
        let got: BTreeMap<u64, u64> = parent
            .iter()
            .filter(|s| s.kind == SegmentKind::Alloc)
            .map(|s| (s.start, s.size))
            .collect();
        assert_eq!(
            got, expected,
            "the parent's allocations are not its own plus the child's spans"
        );
        let (ps, cs) = (self.parent.stats(), self.child.stats());
        assert_eq!(
            ps.children,
            u64::from(self.attached),
            "parent's child count"
        );
        assert_eq!(
            cs.imports.checked_sub(cs.releases),
            Some(imported),
            "child imports minus releases"
        );
    }

    /// Frees everything: the child gives its imported spans back, and the
    /// parent is left with one free segment per span.
    fn free_all(&mut self) {
        for (a, (s, x)) in std::mem::take(&mut self.cm.live) {
            let r = if x {
                self.child.xfree(a, s)
            } else {
                self.child.free(a, s)
            };
            assert!(r.is_ok(), "freeing child {a:#x}: {r:?}");
        }
        for (a, (s, x)) in std::mem::take(&mut self.pm.live) {
            let r = if x {
                self.parent.xfree(a, s)
            } else {
                self.parent.free(a, s)
            };
            assert!(r.is_ok(), "freeing parent {a:#x}: {r:?}");
        }
        self.verify_both();
        for arena in [self.parent, self.child] {
            let segs = walk(arena);
            assert!(
                !segs
                    .iter()
                    .any(|s| s.kind == SegmentKind::Span { imported: true }),
                "an imported span stayed after everything was freed"
            );
            assert_eq!(
                segs.len(),
                2 * spans(&segs).count(),
                "not one free segment per span"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let static_before = static_tags_available();
    let pq = 1u64 << (input.parent_shift % 13);
    let cq = 1u64 << (input.child_shift % 13);
    let limited = PageBudget::new(input.tight.map_or(0, usize::from));
    let meta: &dyn MetaSource = if input.tight.is_some() {
        &limited
    } else {
        &HeapMeta
    };
    let tight = input.tight.is_some();
    let mut config = ArenaConfig::new("parent", pq)
        .meta(meta)
        .static_tags(!tight);
    if input.first_span > 0 {
        config = config.span(0x40 * pq, u64::from(input.first_span) * pq);
    }
    let parent: Arena = match Arena::create(config) {
        Ok(a) => a,
        Err(e) => {
            assert!(
                tight && e.kind() == ErrorKind::NoSpace,
                "creating the parent: {e}"
            );
            return;
        }
    };
    let import_min = u64::from(input.import_min) * cq;
    let child: Arena = match Arena::create(
        ArenaConfig::new("child", cq)
            .source(&parent, import_min)
            .meta(meta)
            .static_tags(!tight),
    ) {
        Ok(a) => a,
        Err(e) => panic!("creating the child: {e}"),
    };
    {
        let mut run = Run {
            parent: &parent,
            child: &child,
            pm: Model {
                q: pq,
                live: BTreeMap::new(),
            },
            cm: Model {
                q: cq,
                live: BTreeMap::new(),
            },
            attached: true,
            fail: 0,
            import_min: import_min.max(cq),
            tight,
        };
        run.verify_both();
        for op in input.ops.iter().take(512) {
            run.step(*op);
        }
        run.free_all();
    }
    drop(child);
    drop(parent);
    assert_eq!(
        limited.left(),
        input.tight.map_or(0, usize::from),
        "meta pages leaked"
    );
    assert_eq!(static_tags_available(), static_before, "static tags leaked");
});
