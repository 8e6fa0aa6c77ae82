//! Fault injection: deterministic schedules that make chosen calls fail, so
//! tests can drive the failure paths of arenas, caches and their sources.
//!
//! A [`FaultPlan`] says which calls of one kind fail, as a pure function of
//! the call's index since the plan was set: the same plan and the same
//! sequence of calls fail the same calls, on every platform. A
//! [`FaultSchedule`] is a plan with its progress (calls seen, faults
//! injected). An arena keeps one schedule per [`FaultSite`]
//! ([`crate::Arena::inject_faults`]); [`FaultyMeta`] puts one in front of
//! any [`MetaSource`], so everything that takes metadata pages from it
//! (tags, hash tables, slab records, magazines) sees it run dry on cue.
//!
//! An injected fault is reported as the real failure it stands for would be,
//! with a kind from the closed set, and like every failed call it changes
//! nothing (statistics counters aside).

use core::ptr::NonNull;

use crate::meta::MetaSource;

/// Which calls of one kind fail, counting calls from 0 since the plan was
/// set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FaultPlan {
    /// No call fails.
    #[default]
    Never,
    /// The next `n` calls fail, then none.
    Next(u64),
    /// Every `n`-th call fails: calls `n - 1`, `2n - 1`, ... (`n == 0`
    /// never fails, `n == 1` fails every call).
    EveryNth(u64),
    /// Each call fails with probability `1 / one_in`, drawn from a PRNG
    /// keyed by `seed` and the call's index, so the draw is the same on
    /// every run (`one_in == 0` never fails, `one_in == 1` always).
    Random {
        /// Picks the sequence of draws.
        seed: u64,
        /// One call in this many fails, on average.
        one_in: u64,
    },
}

/// SplitMix64's output function: a bijection of `u64` that spreads every
/// input bit over the output, so consecutive indices give independent-
/// looking draws.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The Weyl increment SplitMix64 steps its state by.
const STEP: u64 = 0x9e37_79b9_7f4a_7c15;

impl FaultPlan {
    /// Whether call number `call` (from 0 since the plan was set) fails.
    pub const fn fails(self, call: u64) -> bool {
        match self {
            FaultPlan::Never => false,
            FaultPlan::Next(n) => call < n,
            FaultPlan::EveryNth(n) => n != 0 && call % n == n - 1,
            FaultPlan::Random { seed, one_in } => {
                // Draw `call` of the SplitMix64 stream that `seed` starts.
                let draw = mix(seed.wrapping_add(call.wrapping_add(1).wrapping_mul(STEP)));
                one_in != 0 && draw.is_multiple_of(one_in)
            }
        }
    }
}

/// Where an arena injects faults ([`crate::Arena::inject_faults`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultSite {
    /// Imports from the arena's source: a call that would import fails with
    /// `ImportFailed` before the source is asked, as if the source were out
    /// of space. Every import counts, whoever asked: `alloc`, a quantum
    /// cache's slab, an object cache's slab, a child arena's import.
    Import,
    /// Refills of boundary tags from the arena's meta source: the refill gets
    /// no page, as if the meta source were dry. The arena then takes tags
    /// from the static pool if it may, and when none come either the call
    /// fails with `NoSpace` before it touches anything. Only refills an
    /// arena with a meta source makes count.
    TagRefill,
}

/// A plan and its progress: how many calls it has seen and failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultSchedule {
    plan: FaultPlan,
    calls: u64,
    injected: u64,
}

impl FaultSchedule {
    /// A schedule that follows `plan` from call 0.
    pub const fn new(plan: FaultPlan) -> Self {
        FaultSchedule {
            plan,
            calls: 0,
            injected: 0,
        }
    }

    /// The plan followed.
    pub const fn plan(&self) -> FaultPlan {
        self.plan
    }

    /// Calls seen since the plan was set.
    pub const fn calls(&self) -> u64 {
        self.calls
    }

    /// Calls failed since the plan was set.
    pub const fn injected(&self) -> u64 {
        self.injected
    }

    /// Counts one call and says whether it fails.
    pub fn strike(&mut self) -> bool {
        let fails = self.plan.fails(self.calls);
        self.calls = self.calls.saturating_add(1);
        if fails {
            self.injected = self.injected.saturating_add(1);
        }
        fails
    }
}

/// An arena's schedules, one per [`FaultSite`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ArenaFaults {
    import: FaultSchedule,
    tag_refill: FaultSchedule,
}

impl ArenaFaults {
    pub(crate) const fn new() -> Self {
        ArenaFaults {
            import: FaultSchedule::new(FaultPlan::Never),
            tag_refill: FaultSchedule::new(FaultPlan::Never),
        }
    }

    /// The schedule of `site`.
    pub(crate) fn at(&mut self, site: FaultSite) -> &mut FaultSchedule {
        match site {
            FaultSite::Import => &mut self.import,
            FaultSite::TagRefill => &mut self.tag_refill,
        }
    }
}

/// A [`MetaSource`] that fails page requests by a plan and passes the rest
/// to another meta source: every arena, cache and reserve that takes pages
/// from it sees a dry meta source on cue (tag refills and slab records fail
/// with `NoSpace`; a hash table or magazine that cannot be had only makes
/// the structure slower).
pub struct FaultyMeta<'m> {
    meta: &'m dyn MetaSource,
    schedule: spin::Mutex<FaultSchedule>,
}

impl<'m> FaultyMeta<'m> {
    /// Pages from `meta`, with requests failing by `plan`.
    pub const fn new(meta: &'m dyn MetaSource, plan: FaultPlan) -> Self {
        FaultyMeta {
            meta,
            schedule: spin::Mutex::new(FaultSchedule::new(plan)),
        }
    }

    /// Follows `plan` from now on, counting calls afresh.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.schedule.lock() = FaultSchedule::new(plan);
    }

    /// The plan and its progress.
    pub fn schedule(&self) -> FaultSchedule {
        *self.schedule.lock()
    }
}

impl MetaSource for FaultyMeta<'_> {
    fn alloc_pages(&self, pages: usize) -> Option<NonNull<u8>> {
        if self.schedule.lock().strike() {
            return None;
        }
        self.meta.alloc_pages(pages)
    }

    unsafe fn free_pages(&self, base: NonNull<u8>, pages: usize) {
        // SAFETY: the caller's promise is passed on: the pages came from
        // `self.meta` through `alloc_pages` above.
        unsafe { self.meta.free_pages(base, pages) }
    }
}

impl core::fmt::Debug for FaultyMeta<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FaultyMeta")
            .field("schedule", &self.schedule())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(plan: FaultPlan, calls: u64) -> Vec<u64> {
        let mut s = FaultSchedule::new(plan);
        let failed: Vec<u64> = (0..calls).filter(|_| s.strike()).collect();
        assert_eq!(s.injected(), failed.len() as u64);
        let predicted: Vec<u64> = (0..calls).filter(|&i| plan.fails(i)).collect();
        assert_eq!(failed, predicted, "the schedule follows the plan");
        failed
    }

    #[test]
    fn next_fails_the_first_calls_only() {
        assert_eq!(failing(FaultPlan::Next(3), 10), vec![0, 1, 2]);
        assert_eq!(failing(FaultPlan::Next(0), 10), Vec::<u64>::new());
        assert_eq!(failing(FaultPlan::Never, 10), Vec::<u64>::new());
    }

    #[test]
    fn every_nth_fails_every_nth_call() {
        assert_eq!(failing(FaultPlan::EveryNth(3), 10), vec![2, 5, 8]);
        assert_eq!(failing(FaultPlan::EveryNth(1), 4), vec![0, 1, 2, 3]);
        assert_eq!(failing(FaultPlan::EveryNth(0), 10), Vec::<u64>::new());
    }

    #[test]
    fn random_is_deterministic_and_near_its_rate() {
        let plan = FaultPlan::Random {
            seed: 42,
            one_in: 4,
        };
        let first = failing(plan, 10_000);
        assert_eq!(first, failing(plan, 10_000), "same plan, same failures");
        // 2500 expected; the bound is far outside any plausible deviation.
        assert!((2200..2800).contains(&first.len()), "{}", first.len());
        let other = failing(
            FaultPlan::Random {
                seed: 43,
                one_in: 4,
            },
            10_000,
        );
        assert_ne!(first, other, "another seed, other failures");
        let always = FaultPlan::Random { seed: 7, one_in: 1 };
        assert_eq!(failing(always, 5), vec![0, 1, 2, 3, 4]);
        let never = FaultPlan::Random { seed: 7, one_in: 0 };
        assert!(failing(never, 100).is_empty());
    }

    use crate::{Arena, ArenaConfig, ErrorKind, HeapMeta, Policy, Segment};

    const Q: u64 = 0x1000;

    fn walk(a: &Arena) -> Vec<Segment> {
        let mut v = Vec::new();
        a.walk(|s| v.push(s));
        v
    }

    #[test]
    fn import_faults_follow_the_plan_and_change_nothing() {
        let root: Arena = Arena::create(
            ArenaConfig::new("root", Q)
                .span(0, 0x100_0000)
                .meta(&HeapMeta),
        )
        .unwrap();
        let child: Arena = Arena::create(
            ArenaConfig::new("child", Q)
                .source(&root, 0)
                .meta(&HeapMeta),
        )
        .unwrap();
        child.inject_faults(FaultSite::Import, FaultPlan::EveryNth(2));
        let mut got = Vec::new();
        for _ in 0..6 {
            // Each allocation fills its imported span, so each imports.
            let (before, root_before) = (walk(&child), walk(&root));
            match child.alloc(Q, Policy::InstantFit) {
                Ok(x) => got.push(x),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::ImportFailed);
                    assert_eq!((walk(&child), walk(&root)), (before, root_before));
                }
            }
        }
        assert_eq!(got.len(), 3, "calls 1, 3 and 5 failed");
        let s = child.fault_schedule(FaultSite::Import);
        assert_eq!((s.calls(), s.injected()), (6, 3));
        assert_eq!(child.stats().import_fails, 3);
        // The shorthand is `Next`, and replaces the plan.
        child.fail_imports(2);
        assert_eq!(
            child.fault_schedule(FaultSite::Import),
            FaultSchedule::new(FaultPlan::Next(2))
        );
        for x in got {
            child.free(x, Q).unwrap();
        }
        assert_eq!(
            child.alloc(Q, Policy::InstantFit).unwrap_err().kind(),
            ErrorKind::ImportFailed
        );
        child.check().unwrap();
        root.check().unwrap();
    }

    #[test]
    fn tag_refill_faults_are_a_clean_no_space() {
        let a: Arena = Arena::create(
            ArenaConfig::new("tags", Q)
                .meta(&HeapMeta)
                .static_tags(false),
        )
        .unwrap();
        a.inject_faults(FaultSite::TagRefill, FaultPlan::Next(1));
        let e = a.add_span(0, 0x10_0000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert_eq!((walk(&a), a.stats().tag_pages), (vec![], 0));
        a.add_span(0, 0x10_0000).unwrap();
        assert_eq!(a.stats().tag_pages, 1);
        let s = a.fault_schedule(FaultSite::TagRefill);
        assert_eq!((s.calls(), s.injected()), (2, 1));
        a.check().unwrap();
    }

    #[test]
    fn tag_refill_faults_fall_back_to_static_tags() {
        let a: Arena = Arena::create(ArenaConfig::new("static", Q).meta(&HeapMeta)).unwrap();
        a.inject_faults(FaultSite::TagRefill, FaultPlan::EveryNth(1));
        a.add_span(0, 0x10_0000).unwrap();
        assert_eq!(a.stats().tag_pages, 0, "the tags came from the static pool");
        assert_eq!(a.fault_schedule(FaultSite::TagRefill).injected(), 1);
    }

    #[test]
    fn faulty_meta_runs_dry_on_cue() {
        let meta = FaultyMeta::new(&HeapMeta, FaultPlan::Next(1));
        let a: Arena =
            Arena::create(ArenaConfig::new("dry", Q).meta(&meta).static_tags(false)).unwrap();
        assert_eq!(
            a.add_span(0, 0x10_0000).unwrap_err().kind(),
            ErrorKind::NoSpace
        );
        a.add_span(0, 0x10_0000).unwrap();
        let s = meta.schedule();
        assert_eq!((s.calls(), s.injected()), (2, 1));
        meta.set_plan(FaultPlan::Never);
        assert_eq!(meta.schedule(), FaultSchedule::new(FaultPlan::Never));
        a.check().unwrap();
    }

    #[test]
    fn schedule_counts_calls_and_faults() {
        let mut s = FaultSchedule::new(FaultPlan::EveryNth(2));
        for _ in 0..5 {
            s.strike();
        }
        assert_eq!((s.calls(), s.injected()), (5, 2));
        assert_eq!(s.plan(), FaultPlan::EveryNth(2));
    }
}
