//! The workloads of issue 7 over the range peers (churn, fragmentation,
//! aligned requests, IDs) and the heaps ([`objects`]), and the global
//! allocator that counts live bytes for the metadata table. [`run`] runs
//! what a [`Plan`] selects and gathers the [`Results`] the page is written
//! from.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use vmem_testkit::SplitMix64;

use crate::objects;
use crate::peers::{
    self, FreeListPeer, OffsetPeer, RangeAllocPeer, RangePeer, VmAlloc, VmemCore, VmemCoreBest,
    VmemCrate,
};

/// Counts the global allocator's live bytes, for metadata per segment.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to `System`, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// 1 to 64 quanta: the size every range workload draws.
fn quanta(rng: &mut SplitMix64) -> u64 {
    1 + rng.below(64)
}

/// How much each measurement may take.
#[derive(Clone, Copy)]
pub struct Budget {
    /// Timed pairs at most.
    pub ops: u64,
    /// Timed wall-clock at most.
    pub time: Duration,
    /// Untimed warm-up pairs at most (also capped by `time`).
    pub warm: u64,
}

/// One peer's churn result at one live count.
#[derive(Clone)]
pub struct Churn {
    pub peer: &'static str,
    pub live: usize,
    pub ns_per_pair: f64,
    pub pairs: u64,
    pub capped: bool,
    /// Allocations that failed during the churn (the slot stays empty).
    pub fails: u64,
    pub meta_fill: f64,
    pub meta_churn: f64,
}

/// Churn pairs before the fragmentation measurement: ten turnovers of the
/// live set, capped (200k quick, 2M full).
pub fn frag_pairs(live: usize, full: bool) -> u64 {
    (live as u64 * 10).min(if full { 2_000_000 } else { 200_000 })
}

fn span_for(live: usize) -> u64 {
    live as u64 * 64 * 2 + 1024
}

/// Runs `pairs` in batches until `ops` or `time` runs out; (pairs, elapsed).
pub fn timed(mut pair: impl FnMut(), ops: u64, time: Duration) -> (u64, Duration) {
    timed_batches(
        |n| {
            for _ in 0..n {
                pair();
            }
        },
        ops,
        time,
    )
}

/// As [`timed`], with the loop in the caller's hands: `batch(n)` runs `n`
/// pairs, called with at most 256 at a time. A pair of a few nanoseconds is
/// measured through this, its loop in a function of its own (see
/// [`objects`]), so that the pair is inlined into its loop whatever the
/// inliner decides for the function that calls `timed`.
pub fn timed_batches(mut batch: impl FnMut(u64), ops: u64, time: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut done = 0;
    while done < ops {
        let n = 256.min(ops - done);
        batch(n);
        done += n;
        if start.elapsed() >= time {
            break;
        }
    }
    (done, start.elapsed())
}

/// The largest single allocation that succeeds, by binary search (freed at once).
fn largest<P: RangePeer>(p: &mut P, span: u64) -> u64 {
    let (mut lo, mut hi) = (0u64, span);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match p.alloc(mid, 1) {
            Some(h) => {
                p.free(h);
                lo = mid;
            }
            None => hi = mid - 1,
        }
    }
    lo
}

fn churn<P: RangePeer>(live: usize, b: Budget) -> Churn {
    let span = span_for(live);
    let mut rng = SplitMix64::new(0x5EED_0000 ^ live as u64);
    let mut segs: Vec<Option<P::H>> = Vec::with_capacity(live);
    let held = || P::meta_held().unwrap_or_else(live_bytes);
    let before = held();
    let mut p = P::new(span, live);
    for _ in 0..live {
        let q = quanta(&mut rng);
        segs.push(Some(p.alloc(q, 1).expect("fill")));
    }
    let meta_fill = (held() - before) as f64 / live as f64;
    let mut fails = 0u64;
    let mut pair = || {
        let slot = rng.below(live as u64) as usize;
        if let Some(h) = segs[slot] {
            p.free(h);
        }
        let q = quanta(&mut rng);
        segs[slot] = black_box(p.alloc(q, 1));
        fails += u64::from(segs[slot].is_none());
    };
    timed(&mut pair, b.warm, b.time);
    let (pairs, el) = timed(&mut pair, b.ops, b.time);
    let meta_churn = (held() - before) as f64 / live as f64;
    Churn {
        peer: P::NAME,
        live,
        ns_per_pair: el.as_nanos() as f64 / pairs as f64,
        pairs,
        capped: pairs < b.ops,
        fails,
        meta_fill,
        meta_churn,
    }
}

/// One peer's free space after exactly `pairs` churn pairs at `live` live.
pub struct Frag {
    pub peer: &'static str,
    pub live: usize,
    pub pairs: u64,
    /// The largest single allocation that succeeds, in quanta.
    pub largest: u64,
    /// Free quanta in all (span minus live).
    pub free_total: u64,
}

/// Fills and churns as [`churn`] does (the same seeded sizes and slots), but
/// exactly `pairs` pairs and untimed, then measures what is left.
fn fragment<P: RangePeer>(live: usize, pairs: u64) -> Frag {
    let span = span_for(live);
    let mut rng = SplitMix64::new(0x5EED_0000 ^ live as u64);
    let mut p = P::new(span, live);
    let mut segs: Vec<Option<P::H>> = (0..live).map(|_| p.alloc(quanta(&mut rng), 1)).collect();
    for _ in 0..pairs {
        let slot = rng.below(live as u64) as usize;
        if let Some(h) = segs[slot] {
            p.free(h);
        }
        segs[slot] = p.alloc(quanta(&mut rng), 1);
    }
    let used: u64 = segs.iter().flatten().map(|&h| P::len(h)).sum();
    Frag {
        peer: P::NAME,
        live,
        pairs,
        largest: largest(&mut p, span),
        free_total: span - used,
    }
}

/// Aligned pairs over a fragmented arena: (ns per pair, mean waste in bytes).
pub struct Aligned {
    pub peer: &'static str,
    pub align: u64,
    pub ns: f64,
    pub pairs: u64,
    /// Aligned requests refused (the arena has room for them).
    pub fails: u64,
    pub waste: f64,
}

fn aligned<P: RangePeer>(align_bytes: u64, b: Budget) -> Option<Aligned> {
    let live = 10_000;
    let span = span_for(live) * 4;
    let align = align_bytes / peers::QUANTUM;
    let mut rng = SplitMix64::new(0xA11C);
    let mut p = P::new(span, live);
    let mut segs: Vec<P::H> = (0..live)
        .map(|_| p.alloc(quanta(&mut rng), 1).expect("fill"))
        .collect();
    for _ in 0..live {
        let slot = rng.below(live as u64) as usize;
        p.free(segs[slot]);
        segs[slot] = p.alloc(quanta(&mut rng), 1).expect("churn");
    }
    let mut waste = 0u64;
    let mut n = 0u64;
    let mut fails = 0u64;
    let mut pair = || {
        let q = 1 + rng.below(16);
        let Some(h) = p.alloc(q, align) else {
            fails += 1;
            return;
        };
        assert_eq!(P::start(h) % align, 0, "{} misaligned", P::NAME);
        waste += P::len(h) - q;
        n += 1;
        p.free(black_box(h));
    };
    let (pairs, el) = timed(&mut pair, b.ops, b.time);
    Some(Aligned {
        peer: P::NAME,
        align: align_bytes,
        ns: el.as_nanos() as f64 / pairs as f64,
        pairs,
        fails,
        waste: (waste * peers::QUANTUM) as f64 / n.max(1) as f64,
    })
}

/// Next-fit IDs at `live` live IDs out of 2^20: (peer, ns per pair, pairs).
fn ids(live: usize, b: Budget) -> Vec<(&'static str, f64, u64)> {
    let range = 1u64 << 20;
    let mut out = Vec::new();
    // vmem-core: an arena of quantum 1, next fit (late reuse), then instant
    // fit (a freed ID may come back at once, as with IdAllocator).
    // Last, instant fit through a quantum cache of one-ID objects: a freed
    // ID waits in this CPU's magazine and is the next one handed out.
    for (name, pol, qcache) in [
        ("vmem-core (next fit)", vmem_core::Policy::NextFit, false),
        (
            "vmem-core (instant fit)",
            vmem_core::Policy::InstantFit,
            false,
        ),
        (
            "vmem-core (quantum cache)",
            vmem_core::Policy::InstantFit,
            true,
        ),
    ] {
        let mut config = vmem_core::ArenaConfig::new("ids", 1)
            .span(1, range)
            .meta(&vmem_core::HeapMeta);
        if qcache {
            let caches =
                vmem_core::QuantumCaches::new(1, 1, &vmem_core::HeapMeta, &vmem_core::CPU0)
                    .expect("quantum caches");
            config = config.qcache(Box::leak(Box::new(caches)));
        }
        let arena: vmem_core::Arena<'static> = vmem_core::Arena::create(config).expect("id arena");
        let mut rng = SplitMix64::new(1);
        let mut live_ids: Vec<u64> = (0..live)
            .map(|_| arena.alloc(1, pol).expect("id"))
            .collect();
        let (pairs, el) = timed(
            || {
                let slot = rng.below(live as u64) as usize;
                arena.free(live_ids[slot], 1).expect("free id");
                live_ids[slot] = black_box(arena.alloc(1, pol).expect("id"));
            },
            b.ops,
            b.time,
        );
        arena.check().expect("id arena consistent");
        out.push((name, el.as_nanos() as f64 / pairs as f64, pairs));
    }
    {
        let mut ida = vm_allocator::IdAllocator::new(1, range as u32).expect("IdAllocator");
        let mut rng = SplitMix64::new(1);
        let mut live_ids: Vec<u32> = (0..live).map(|_| ida.allocate_id().expect("id")).collect();
        let (pairs, el) = timed(
            || {
                let slot = rng.below(live as u64) as usize;
                ida.free_id(live_ids[slot]).expect("free id");
                live_ids[slot] = black_box(ida.allocate_id().expect("id"));
            },
            b.ops,
            b.time,
        );
        out.push((
            "vm-allocator IdAllocator (lowest freed)",
            el.as_nanos() as f64 / pairs as f64,
            pairs,
        ));
    }
    {
        let mut p = VmemCrate::new(range, live);
        // Quantum 4096 in bytes; one ID is one quantum here.
        p.1 = vmem_peer::AllocPolicy::NextFit;
        let mut rng = SplitMix64::new(1);
        let mut live_ids: Vec<_> = (0..live).map(|_| p.alloc(1, 1).expect("id")).collect();
        let (pairs, el) = timed(
            || {
                let slot = rng.below(live as u64) as usize;
                p.free(live_ids[slot]);
                live_ids[slot] = black_box(p.alloc(1, 1).expect("id"));
            },
            b.ops,
            b.time,
        );
        out.push((
            "vmem 1.0 (next fit)",
            el.as_nanos() as f64 / pairs as f64,
            pairs,
        ));
    }
    out
}

/// A line of progress on stderr.
pub fn progress(msg: &str) {
    eprintln!("[vmem-bench] {msg}");
}

/// A time in ns, in the unit that reads best.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// What a run measures: the mode and the subsets chosen on the command line.
pub struct Plan {
    /// `--full`: 1M live ranges too, longer caps.
    pub full: bool,
    /// Workloads to run (`None`: all of them).
    pub only: Option<Vec<String>>,
    /// Range peers to run, by table name (`None`: all of them).
    pub peers: Option<Vec<String>>,
}

/// Everything one run measured, for the page.
pub struct Results {
    pub mode: &'static str,
    pub b: Budget,
    pub lives: &'static [usize],
    pub full: bool,
    pub churns: Vec<Churn>,
    pub frags: Vec<Frag>,
    /// Fragmentation runs left out: (peer, live, estimated seconds).
    pub frag_skipped: Vec<(&'static str, usize, f64)>,
    /// Churn runs left out: (peer, live, previous live, its ns per pair).
    pub churn_skipped: Vec<(&'static str, usize, usize, f64)>,
    pub id_live: usize,
    pub ids: Vec<(&'static str, f64, u64)>,
    pub al: Vec<Aligned>,
    pub heaps: Vec<(&'static str, f64, u64)>,
    pub cross: Vec<objects::Cross>,
    /// The VMM workload: BARs with hotplug churn.
    pub vmm: Vec<crate::vmm::Row>,
}

/// Runs every workload `plan` selects, with progress on stderr.
pub fn run(plan: &Plan) -> Results {
    let full = plan.full;
    let run = |w: &str| plan.only.as_ref().is_none_or(|o| o.iter().any(|x| x == w));
    let peer = |n: &str| plan.peers.as_ref().is_none_or(|o| o.iter().any(|x| x == n));
    let budget = if full {
        Budget {
            ops: 2_000_000,
            time: Duration::from_secs(5),
            warm: 1_000_000,
        }
    } else {
        Budget {
            ops: 200_000,
            time: Duration::from_millis(1000),
            warm: 100_000,
        }
    };
    let lives: &'static [usize] = if full {
        &[1_000, 10_000, 100_000, 1_000_000]
    } else {
        &[1_000, 10_000, 100_000]
    };
    let mode = if full { "full" } else { "quick" };
    progress(&format!(
        "mode {mode}: each measurement capped at {} pairs or {:?} (warm-up at most {} pairs, same time cap)",
        budget.ops, budget.time, budget.warm
    ));

    // (1) churn, (6) metadata, then (2) fragmentation after a fixed number
    // of pairs, the same for every peer.
    let mut churns: Vec<Churn> = Vec::new();
    let mut frags: Vec<Frag> = Vec::new();
    let mut frag_skipped: Vec<(&'static str, usize, f64)> = Vec::new();
    let mut churn_skipped: Vec<(&'static str, usize, usize, f64)> = Vec::new();
    let frag_cap = if full { 120.0 } else { 20.0 };
    type ChurnRun = fn(usize, Budget) -> Churn;
    type FragRun = fn(usize, u64) -> Frag;
    let range_peers: [(&str, ChurnRun, FragRun); 7] = [
        (VmemCore::NAME, churn::<VmemCore>, fragment::<VmemCore>),
        (
            VmemCoreBest::NAME,
            churn::<VmemCoreBest>,
            fragment::<VmemCoreBest>,
        ),
        (VmemCrate::NAME, churn::<VmemCrate>, fragment::<VmemCrate>),
        (VmAlloc::NAME, churn::<VmAlloc>, fragment::<VmAlloc>),
        (
            FreeListPeer::NAME,
            churn::<FreeListPeer>,
            fragment::<FreeListPeer>,
        ),
        (
            RangeAllocPeer::NAME,
            churn::<RangeAllocPeer>,
            fragment::<RangeAllocPeer>,
        ),
        (
            OffsetPeer::NAME,
            churn::<OffsetPeer>,
            fragment::<OffsetPeer>,
        ),
    ];
    for &live in lives.iter().filter(|_| run("churn")) {
        let frag_pairs = frag_pairs(live, full);
        for (name, churn_run, frag_run) in range_peers.iter().filter(|(n, _, _)| peer(n)) {
            // Past 100k live, a peer whose pairs already took over 50 µs at
            // the previous live count scans its ranges; ten times more of
            // them would make even its fill take many minutes, so it sits
            // this one out (the targets at 100k keep every peer).
            let before = churns
                .iter()
                .rev()
                .find(|c| c.peer == *name && c.live < live)
                .map(|c| (c.live, c.ns_per_pair));
            if let Some((at, ns)) = before.filter(|&(_, ns)| live > 100_000 && ns > 50_000.0) {
                progress(&format!(
                    "churn {name} live {live}: left out ({} per pair at {at} live already)",
                    fmt_ns(ns)
                ));
                churn_skipped.push((name, live, at, ns));
                continue;
            }
            let c = churn_run(live, budget);
            progress(&format!(
                "churn {:>18} live {:>9}: {:>10}/pair over {} pairs{}{}",
                c.peer,
                live,
                fmt_ns(c.ns_per_pair),
                c.pairs,
                if c.capped { " (time cap)" } else { "" },
                if c.fails > 0 {
                    format!(", {} failed allocations", c.fails)
                } else {
                    String::new()
                }
            ));
            let estimate = c.ns_per_pair * frag_pairs as f64 / 1e9;
            churns.push(c);
            // vmem-core's own rows always run: they are what is measured.
            if estimate > frag_cap && !name.starts_with("vmem-core") {
                progress(&format!(
                    "fragmentation {name} live {live}: skipped ({frag_pairs} pairs would take about {estimate:.0} s)"
                ));
                frag_skipped.push((name, live, estimate));
                continue;
            }
            let f = frag_run(live, frag_pairs);
            progress(&format!(
                "fragmentation {:>10} live {:>9}: largest {} of {} free quanta after {} pairs",
                f.peer, live, f.largest, f.free_total, f.pairs
            ));
            frags.push(f);
        }
    }

    // (4) IDs.
    let id_live = 10_000;
    let id_rows = if run("ids") {
        ids(id_live, budget)
    } else {
        Vec::new()
    };
    for (n, ns, pairs) in &id_rows {
        progress(&format!("ids {n}: {}/pair over {pairs} pairs", fmt_ns(*ns)));
    }

    // (3) aligned.
    let mut al: Vec<Aligned> = Vec::new();
    for align in [64 << 10, 2 << 20].into_iter().filter(|_| run("aligned")) {
        type Run = fn(u64, Budget) -> Option<Aligned>;
        let runs: [(&str, Run); 6] = [
            (VmemCore::NAME, aligned::<VmemCore>),
            (VmemCrate::NAME, aligned::<VmemCrate>),
            (VmAlloc::NAME, aligned::<VmAlloc>),
            (FreeListPeer::NAME, aligned::<FreeListPeer>),
            (RangeAllocPeer::NAME, aligned::<RangeAllocPeer>),
            (OffsetPeer::NAME, aligned::<OffsetPeer>),
        ];
        for (_, run) in runs.into_iter().filter(|(n, _)| peer(n)) {
            if let Some(a) = run(align, budget) {
                progress(&format!(
                    "aligned {:>16} {:>4} KiB: {:>10}/pair, waste {:.0} B/alloc, {} refused",
                    a.peer,
                    align >> 10,
                    fmt_ns(a.ns),
                    a.waste,
                    a.fails
                ));
                al.push(a);
            }
        }
    }

    // (5) heaps.
    let heap_rows = if run("heaps") {
        objects::hot_pairs(budget)
    } else {
        Vec::new()
    };
    for (n, ns, pairs) in &heap_rows {
        progress(&format!(
            "hot pair {n}: {}/pair over {pairs} pairs",
            fmt_ns(*ns)
        ));
    }

    // (5) second half: two threads freeing each other's objects.
    let cross_rows = if run("threads") {
        objects::two_threads(if full { 4_000_000 } else { 1_000_000 })
    } else {
        Vec::new()
    };

    // (7) the VMM workload.
    let vmm_rows = if run("vmm") {
        crate::vmm::run(budget, peer)
    } else {
        Vec::new()
    };
    for v in &vmm_rows {
        progress(&format!(
            "vmm {:>34} {:>6} devices: {}/BAR op over {} ops",
            v.peer,
            v.devices,
            fmt_ns(v.ns_per_op),
            v.ops
        ));
    }

    Results {
        mode,
        b: budget,
        lives,
        full,
        churns,
        frags,
        frag_skipped,
        churn_skipped,
        id_live,
        ids: id_rows,
        al,
        heaps: heap_rows,
        cross: cross_rows,
        vmm: vmm_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_batches_asks_for_at_most_256_and_stops_at_ops() {
        let mut asked = Vec::new();
        let (done, _) = timed_batches(|n| asked.push(n), 1000, Duration::from_secs(60));
        assert_eq!(done, 1000);
        assert_eq!(asked, [256, 256, 256, 232]);
    }

    #[test]
    fn timed_batches_stops_after_a_batch_when_time_is_up() {
        let mut asked = Vec::new();
        let (done, _) = timed_batches(|n| asked.push(n), 1000, Duration::ZERO);
        assert_eq!((done, asked), (256, vec![256]));
        let (done, _) = timed_batches(|_| unreachable!("no pairs asked for"), 0, Duration::ZERO);
        assert_eq!(done, 0);
    }

    #[test]
    fn timed_runs_each_pair_once() {
        let mut pairs = 0u64;
        let (done, _) = timed(|| pairs += 1, 600, Duration::from_secs(60));
        assert_eq!((done, pairs), (600, 600));
    }
}
