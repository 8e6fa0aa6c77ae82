//! vmem-core as this test binary's global allocator: every allocation of
//! the test harness and of the collections below goes through `GlobalHeap`,
//! size-class caches over a memory-mode arena on a static buffer, whose
//! metadata comes from a second arena on another static buffer (never from
//! a heap).

use std::cell::{Cell, UnsafeCell};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use vmem_core::{Arena, ArenaConfig, ArenaMeta, CpuId, DefaultLock, GlobalHeap, SizeClasses};

const HEAP_BYTES: usize = 256 << 20;
const META_BYTES: usize = 16 << 20;

/// A page-aligned static buffer the arenas hand out.
#[repr(C, align(4096))]
struct Buffer<const N: usize>(UnsafeCell<[u8; N]>);

// SAFETY: the buffer's bytes are only reached through addresses the arenas
// hand out, each to one owner at a time.
unsafe impl<const N: usize> Sync for Buffer<N> {}

impl<const N: usize> Buffer<N> {
    fn base(&self) -> u64 {
        self.0.get() as u64
    }
}

static HEAP: Buffer<HEAP_BYTES> = Buffer(UnsafeCell::new([0; HEAP_BYTES]));
static META: Buffer<META_BYTES> = Buffer(UnsafeCell::new([0; META_BYTES]));

thread_local! {
    static CPU_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// Each thread gets the next CPU index the first time it allocates.
struct ThreadCpu;

impl CpuId for ThreadCpu {
    fn current(&self) -> usize {
        CPU_INDEX.with(|c| {
            if c.get() == usize::MAX {
                c.set(NEXT_CPU.fetch_add(1, Ordering::Relaxed));
            }
            c.get()
        })
    }
}

static CPU: ThreadCpu = ThreadCpu;
static META_ARENA: OnceLock<Option<Arena<'static>>> = OnceLock::new();
static META_SOURCE: OnceLock<Option<ArenaMeta<'static, 'static, DefaultLock>>> = OnceLock::new();
static HEAP_ARENA: OnceLock<Option<Arena<'static>>> = OnceLock::new();

fn init() -> Option<SizeClasses<'static>> {
    let meta_arena = META_ARENA
        .get_or_init(|| {
            Arena::create(ArenaConfig::new("meta", 4096).span(META.base(), META_BYTES as u64)).ok()
        })
        .as_ref()?;
    // SAFETY: the meta arena hands out addresses inside the static META buffer.
    let meta = META_SOURCE
        .get_or_init(|| Some(unsafe { ArenaMeta::new(meta_arena) }))
        .as_ref()?;
    let heap = HEAP_ARENA
        .get_or_init(|| {
            Arena::create(
                ArenaConfig::new("heap", 4096)
                    .span(HEAP.base(), HEAP_BYTES as u64)
                    .meta(meta),
            )
            .ok()
        })
        .as_ref()?;
    // SAFETY: the heap arena hands out addresses inside the static HEAP buffer.
    unsafe { SizeClasses::new(heap, meta, &CPU, false) }.ok()
}

#[global_allocator]
static GLOBAL: GlobalHeap = GlobalHeap::new(init);

#[test]
fn collections_run_on_the_vmem_heap_under_load() {
    let classes = GLOBAL.classes().expect("the heap initialised");
    let heap_base = HEAP.base();
    let boxed = Box::new(42u64);
    let addr = &*boxed as *const u64 as u64;
    assert!(
        (heap_base..heap_base + HEAP_BYTES as u64).contains(&addr),
        "a Box lives on the vmem heap"
    );
    let in_use_before: u64 = classes.caches().iter().map(|c| c.stats().in_use).sum();

    thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for round in 0..40u64 {
                    let mut map: BTreeMap<u64, String> = BTreeMap::new();
                    let mut vecs: Vec<Vec<u64>> = Vec::new();
                    for i in 0..2_000u64 {
                        map.insert(i * 7 + t, format!("thread {t} round {round} item {i}"));
                        if i % 100 == 0 {
                            vecs.push((0..i * 10).collect());
                        }
                    }
                    for (i, (k, v)) in map.iter().enumerate() {
                        assert_eq!(*k, i as u64 * 7 + t);
                        assert_eq!(*v, format!("thread {t} round {round} item {i}"));
                    }
                    for v in &vecs {
                        assert!(v.iter().enumerate().all(|(j, &x)| x == j as u64));
                    }
                    // Hand a string to the next round's freeing through a move.
                    let joined: String = map.values().take(50).map(String::as_str).collect();
                    assert!(joined.starts_with(&format!("thread {t} round {round} item 0")));
                }
            });
        }
    });

    drop(boxed);
    classes.check().unwrap();
    let stats: Vec<_> = classes.caches().iter().map(|c| c.stats()).collect();
    let allocs: u64 = stats.iter().map(|s| s.allocs).sum();
    assert!(
        allocs > 500_000,
        "the workload ran through the caches ({allocs} allocations)"
    );
    assert!(
        stats.iter().map(|s| s.magazine_hits).sum::<u64>() > allocs / 2,
        "most came from magazines"
    );
    let in_use_after: u64 = stats.iter().map(|s| s.in_use).sum();
    assert!(
        in_use_after <= in_use_before + 64,
        "nothing leaked: {in_use_before} objects in use before, {in_use_after} after"
    );
    classes.arena().check().unwrap();
}
