//! Hot small-object pairs on heaps: the allocators of
//! `vmem-core/benches/cache.rs`, from the same file.

use std::hint::black_box;

use vmem_core::CPU0;

#[path = "../../vmem-core/benches/common/heaps.rs"]
mod peers;

use crate::{Budget, timed};
use peers::*;

fn pairs_of(mut pair: impl FnMut(), b: Budget) -> (f64, u64) {
    timed(&mut pair, b.warm, b.time);
    let (n, el) = timed(&mut pair, b.ops, b.time);
    (el.as_nanos() as f64 / n as f64, n)
}

fn shared<S: Shared>(name: &'static str, s: &S, b: Budget) -> (&'static str, f64, u64) {
    let (ns, n) = pairs_of(
        || {
            let p = s.alloc();
            // SAFETY: `p` was just allocated.
            unsafe { s.free(black_box(p)) }
        },
        b,
    );
    (name, ns, n)
}

fn local<L: Local>(name: &'static str, mut l: L, b: Budget) -> (&'static str, f64, u64) {
    let (ns, n) = pairs_of(
        || {
            let p = l.alloc();
            // SAFETY: `p` was just allocated.
            unsafe { l.free(black_box(p)) }
        },
        b,
    );
    (name, ns, n)
}

/// (allocator, ns per pair, pairs) for each heap.
pub fn hot_pairs(b: Budget) -> Vec<(&'static str, f64, u64)> {
    vec![
        shared(
            "vmem-core ObjectCache (magazine)",
            &vmem_cache("hot_magazine", None, &CPU0),
            b,
        ),
        shared(
            "vmem-core ObjectCache (slab only)",
            &vmem_cache("hot_slab", Some(0), &CPU0),
            b,
        ),
        shared("vmem-core SizeClasses", &vmem_kmalloc(&CPU0), b),
        local("talc 5", TalcHeap::new(), b),
        local("linked_list_allocator 0.10", LinkedListHeap::new(), b),
        local("buddy_system_allocator 0.13", BuddyHeap::new(), b),
        local("rlsf 0.2", TlsfHeap::new(), b),
        shared("system (glibc malloc)", &SystemAlloc, b),
    ]
}
