//! One churn run of a fixed number of pairs, untimed, for counting what a
//! pair costs under `valgrind --tool=cachegrind` (instructions and cache
//! misses are deterministic where times are not).
//!
//! `churn_count PEER LIVE PAIRS`: fills `LIVE` ranges of 1 to 64 quanta into
//! PEER (`vmem-core`, `vmem-core-best` or `offset-allocator`), as the bench's
//! churn does with the same seed, then runs `PAIRS` free + alloc pairs.
//! Two runs that differ only in PAIRS, subtracted, give the cost of the
//! extra pairs alone:
//!
//! ```text
//! cargo build -p vmem-bench --release --example churn_count
//! valgrind --tool=cachegrind --cache-sim=yes \
//!     target/release/examples/churn_count vmem-core 1000000 200000
//! ```

#[allow(dead_code)]
#[path = "../src/peers.rs"]
mod peers;

use std::hint::black_box;

use peers::{OffsetPeer, RangePeer, VmemCore, VmemCoreBest};
use vmem_testkit::SplitMix64;

fn run<P: RangePeer>(live: usize, pairs: u64) -> u64 {
    let span = live as u64 * 64 * 2 + 1024;
    let mut rng = SplitMix64::new(0x5EED_0000 ^ live as u64);
    let mut p = P::new(span, live);
    let mut segs: Vec<Option<P::H>> = (0..live).map(|_| p.alloc(1 + rng.below(64), 1)).collect();
    let mut fails = 0;
    for _ in 0..pairs {
        let slot = rng.below(live as u64) as usize;
        if let Some(h) = segs[slot] {
            p.free(h);
        }
        segs[slot] = black_box(p.alloc(1 + rng.below(64), 1));
        fails += u64::from(segs[slot].is_none());
    }
    // Not dropped: tearing down costs more the more pairs ran (the tags
    // scatter), which would count against the pairs.
    std::mem::forget(p);
    fails
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [peer, live, pairs] = args.as_slice() else {
        eprintln!("usage: churn_count PEER LIVE PAIRS");
        std::process::exit(2);
    };
    let live: usize = live.parse().expect("LIVE is a number");
    let pairs: u64 = pairs.parse().expect("PAIRS is a number");
    let fails = match peer.as_str() {
        "vmem-core" => run::<VmemCore>(live, pairs),
        "vmem-core-best" => run::<VmemCoreBest>(live, pairs),
        "offset-allocator" => run::<OffsetPeer>(live, pairs),
        _ => {
            eprintln!("unknown peer {peer}");
            std::process::exit(2);
        }
    };
    println!("{peer} live {live}: {pairs} pairs, {fails} failed allocations");
}
