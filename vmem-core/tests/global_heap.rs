//! vmem-core as this test binary's global allocator: every allocation of
//! the test harness and of the collections below goes through a
//! `GlobalHeap`, size-class caches over a memory-mode arena on a static
//! buffer. There are two, chosen per thread:
//! - [`GLOBAL`], for every thread but one: its metadata comes from a second
//!   arena on another static buffer (never from a heap);
//! - [`HEAP_META_GLOBAL`], for the thread a test hands it to: its arena and
//!   caches take their metadata from `HeapMeta`, which takes its chunks from
//!   the global allocator, that is from this very heap. That is a process
//!   whose `#[global_allocator]` is a `GlobalHeap` over arenas that use
//!   `HeapMeta`, confined to one thread so that a deadlock there stalls that
//!   thread only and the test can fail after a timeout.
//!
//! A block is freed by the heap whose buffer holds it, whichever thread
//! frees it.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::{Cell, UnsafeCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use vmem_core::{
    Arena, ArenaConfig, ArenaMeta, CHUNK_PAGES, CpuId, DefaultLock, GlobalHeap, HeapMeta,
    SizeClasses,
};

const HEAP_BYTES: usize = 256 << 20;
const META_BYTES: usize = 16 << 20;
const HEAP_META_BYTES: usize = 256 << 20;

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
static HEAP_META_HEAP: Buffer<HEAP_META_BYTES> = Buffer(UnsafeCell::new([0; HEAP_META_BYTES]));

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

static GLOBAL: GlobalHeap = GlobalHeap::new(init);

static HEAP_META_ARENA: OnceLock<Option<Arena<'static>>> = OnceLock::new();

/// Size classes over an arena on [`HEAP_META_HEAP`], arena and caches with
/// `HeapMeta` as their meta source.
fn init_heap_meta() -> Option<SizeClasses<'static>> {
    let heap = HEAP_META_ARENA
        .get_or_init(|| {
            Arena::create(
                ArenaConfig::new("heap_meta_heap", 4096)
                    .span(HEAP_META_HEAP.base(), HEAP_META_BYTES as u64)
                    .meta(&HeapMeta),
            )
            .ok()
        })
        .as_ref()?;
    // SAFETY: the arena hands out addresses inside the static HEAP_META_HEAP
    // buffer.
    unsafe { SizeClasses::new(heap, &HeapMeta, &CPU, false) }.ok()
}

static HEAP_META_GLOBAL: GlobalHeap = GlobalHeap::new(init_heap_meta);

thread_local! {
    /// Whether this thread allocates from [`HEAP_META_GLOBAL`].
    static ON_HEAP_META: Cell<bool> = const { Cell::new(false) };
}

/// The binary's global allocator: [`GLOBAL`] or [`HEAP_META_GLOBAL`] by
/// thread for allocation, by address for freeing.
struct PerThread;

impl PerThread {
    fn heap_for_new(&self) -> &'static GlobalHeap {
        if ON_HEAP_META.with(Cell::get) {
            &HEAP_META_GLOBAL
        } else {
            &GLOBAL
        }
    }

    fn heap_of(&self, ptr: *mut u8) -> &'static GlobalHeap {
        let base = HEAP_META_HEAP.base();
        if (base..base + HEAP_META_BYTES as u64).contains(&(ptr as u64)) {
            &HEAP_META_GLOBAL
        } else {
            &GLOBAL
        }
    }
}

// SAFETY: each block comes from one of two `GlobalHeap`s and goes back to
// the one whose buffer holds it, with the layout it was allocated with.
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as the caller made it.
        unsafe { self.heap_for_new().alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the block came from the heap whose buffer holds it.
        unsafe { self.heap_of(ptr).dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ROUTER: PerThread = PerThread;

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

/// Runs `body` on a thread of its own and fails if it does not finish
/// within `limit` (a deadlocked thread is left spinning; the process ends
/// with the test run).
fn within(limit: Duration, body: fn() -> Result<(), String>) {
    // A status word rather than a channel: the worker only stores into
    // memory this thread allocated, so a worker stuck inside its heap holds
    // nothing this thread needs.
    const PASSED: u8 = 1;
    const FAILED: u8 = 2;
    let status = Arc::new((AtomicU8::new(0), OnceLock::<String>::new()));
    let shared = Arc::clone(&status);
    let worker = thread::spawn(move || {
        let outcome = body();
        let word = match outcome {
            Ok(()) => PASSED,
            Err(e) => {
                let _ = shared.1.set(e);
                FAILED
            }
        };
        shared.0.store(word, Ordering::Release);
    });
    let start = Instant::now();
    loop {
        match status.0.load(Ordering::Acquire) {
            PASSED => break,
            FAILED => panic!("{}", status.1.get().map_or("failed", String::as_str)),
            _ if worker.is_finished() => panic!("the test thread panicked"),
            _ if start.elapsed() > limit => {
                panic!("no answer within {limit:?}: a deadlock (or an endless recursion)")
            }
            _ => thread::sleep(Duration::from_millis(20)),
        }
    }
    worker.join().expect("the test thread finished");
}

/// Blocks of 12 KiB: larger than the largest class, so each is a segment of
/// the arena, with its own boundary tag.
const BLOCK: usize = 12 << 10;
const BLOCKS: usize = 16_384;

/// Issue 12, defect 5: `HeapMeta` held its page lock while it took a chunk
/// from the global allocator, and a `GlobalHeap` over arenas that use
/// `HeapMeta` asked `HeapMeta` for a page inside that call: the thread spun
/// on the lock it held. And without that lock, the arena's hash growth
/// recursed without end (a run for the table from `HeapMeta`, from the
/// global allocator, from the arena, which again wants to grow its hash).
/// Every allocation of the test thread here goes to such a heap: blocks
/// whose boundary tags fill more pages than three chunks hold, so
/// `HeapMeta` fetches chunks from this heap several times, and the arena's
/// hash grows through runs from it.
fn heap_meta_body() -> Result<(), String> {
    ON_HEAP_META.with(|on| on.set(true));
    // Made by this thread's first allocation, with `HeapMeta` asking the
    // heap being made for a chunk.
    let first = Box::new(1u64);
    let classes = HEAP_META_GLOBAL
        .classes()
        .ok_or("the HeapMeta heap initialised")?;
    let base = HEAP_META_HEAP.base();
    let on_heap = |addr: u64| (base..base + HEAP_META_BYTES as u64).contains(&addr);
    if !on_heap(&*first as *const u64 as u64) {
        return Err("the first Box is not on the HeapMeta heap".into());
    }
    let arena = classes.arena();
    let before = arena.stats();
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut small: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0..BLOCKS {
        let block: Vec<u8> = Vec::with_capacity(BLOCK);
        let addr = block.as_ptr() as u64;
        if !on_heap(addr) {
            return Err(format!(
                "block {i} at {addr:#x} is not on the HeapMeta heap"
            ));
        }
        blocks.push(block);
        if i % 8 == 0 {
            small.insert(i, format!("block {i}"));
        }
    }
    let full = arena.stats();
    // Free every other block, so free segments need tags too.
    let mut kept = Vec::with_capacity(BLOCKS / 2);
    for (i, block) in blocks.drain(..).enumerate() {
        if i % 2 == 0 {
            kept.push(block);
        }
    }
    for (i, s) in &small {
        if *s != format!("block {i}") {
            return Err(format!("small object {i} changed to {s:?}"));
        }
    }
    drop((kept, blocks, small, first));
    classes.check().map_err(|e| e.to_string())?;
    arena.check().map_err(|e| e.to_string())?;
    ON_HEAP_META.with(|on| on.set(false));
    let tag_pages = full.tag_pages - before.tag_pages;
    if tag_pages < 3 * CHUNK_PAGES as u64 || full.hash_resizes == before.hash_resizes {
        return Err(format!(
            "the blocks took {tag_pages} tag pages and grew the hash {} times: \
             too little to make HeapMeta fetch chunks several times",
            full.hash_resizes - before.hash_resizes
        ));
    }
    Ok(())
}

#[test]
fn defect_5_heap_meta_under_global_heap() {
    within(Duration::from_secs(60), heap_meta_body);
}

/// A heap that is not the global allocator, whose `init` looks at it
/// while it is being made.
static WATCHED: GlobalHeap = GlobalHeap::new(init_watched);

/// What `init_watched` saw of [`WATCHED`]: classes from a call of its own,
/// a block from its `alloc`, classes from another thread.
static SEEN_DURING_INIT: OnceLock<(bool, bool, bool)> = OnceLock::new();

static WATCHED_ARENA: OnceLock<Option<Arena<'static>>> = OnceLock::new();
static WATCHED_HEAP: Buffer<{ 1 << 20 }> = Buffer(UnsafeCell::new([0; 1 << 20]));

fn init_watched() -> Option<SizeClasses<'static>> {
    // SAFETY: a valid layout; a null result is what is looked for, and
    // anything else would be freed below.
    let block = unsafe { WATCHED.alloc(Layout::new::<u64>()) };
    let seen = (
        WATCHED.classes().is_some(),
        !block.is_null(),
        thread::spawn(|| WATCHED.classes().is_some())
            .join()
            .unwrap_or(true),
    );
    if !block.is_null() {
        // SAFETY: allocated just above with this layout.
        unsafe { WATCHED.dealloc(block, Layout::new::<u64>()) };
    }
    let _ = SEEN_DURING_INIT.set(seen);
    let heap = WATCHED_ARENA
        .get_or_init(|| {
            Arena::create(
                ArenaConfig::new("watched", 4096)
                    .span(WATCHED_HEAP.base(), 1 << 20)
                    .meta(&HeapMeta),
            )
            .ok()
        })
        .as_ref()?;
    // SAFETY: the arena hands out addresses inside WATCHED_HEAP.
    unsafe { SizeClasses::new(heap, &HeapMeta, &CPU, false) }.ok()
}

/// Issue 12, defect 5 (continued): a `GlobalHeap` whose `init` ends up
/// allocating from it (as `HeapMeta` fetching a chunk does while the heap
/// it serves is made) spun forever on its own `spin::Once`. Now every call
/// made while `init` runs gets null, and the first call still gets the
/// classes.
#[test]
fn defect_5_global_heap_answers_null_while_init_runs() {
    within(Duration::from_secs(60), || {
        let classes = WATCHED.classes().ok_or("WATCHED was made")?;
        let seen = SEEN_DURING_INIT.get().ok_or("init ran")?;
        if *seen != (false, false, false) {
            return Err(format!(
                "during init (own classes call, own alloc, other thread): {seen:?}"
            ));
        }
        // SAFETY: a valid layout; the block is freed with it.
        let block = unsafe { WATCHED.alloc(Layout::new::<u64>()) };
        if block.is_null() {
            return Err("no block once made".into());
        }
        // SAFETY: allocated just above with this layout.
        unsafe { WATCHED.dealloc(block, Layout::new::<u64>()) };
        classes.check().map_err(|e| e.to_string())
    });
}
