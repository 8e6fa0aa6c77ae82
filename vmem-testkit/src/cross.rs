//! Two threads freeing each other's objects, and the same work on one
//! thread: the machinery of the `two_threads` workload, shared by
//! `vmem-core/benches/cache.rs` and the `vmem-bench` binary (`bench/`), so
//! both measure the same code, over the allocators of [`heaps`](crate::heaps).

use std::cell::Cell;
use std::hint::{black_box, spin_loop};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use vmem_core::CpuId;

use crate::heaps::{Local, Shared};

/// Objects each thread allocates per round in `two_threads`.
pub const BATCH: usize = 1024;

/// A `&mut self` allocator behind a `std::sync::Mutex`, for `two_threads`.
pub struct Locked<T>(pub Mutex<T>);

impl<T: Local> Shared for Locked<T> {
    #[inline]
    fn alloc(&self) -> usize {
        self.0.lock().expect("allocator lock").alloc()
    }

    #[inline]
    unsafe fn free(&self, p: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.lock().expect("allocator lock").free(p) }
    }
}

thread_local! {
    /// This thread's CPU index, as [`ThreadCpu`] reports it.
    static CPU_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The CPU is the calling thread's [`CPU_INDEX`].
pub struct ThreadCpu;

impl CpuId for ThreadCpu {
    #[inline]
    fn current(&self) -> usize {
        CPU_INDEX.with(Cell::get)
    }
}

/// The one [`ThreadCpu`] the caches of the two-thread runs are given.
pub static THREAD_CPU: ThreadCpu = ThreadCpu;

/// A reusable barrier that spins (then yields), so a round's hand-over costs
/// far less than a futex sleep and wake-up.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        SpinBarrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if spins < 1 << 12 {
                spins += 1;
                spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

/// Batches handed between the two threads: `[round % 2][allocating thread]`.
type Slots = [[Mutex<Vec<usize>>; 2]; 2];

/// One of the two threads of `two_threads`: `pairs` allocations in batches,
/// each batch freed by the other thread. Returns the time from the common
/// start to the common end.
fn cross_worker<S: Shared>(
    alloc: &S,
    me: usize,
    pairs: usize,
    slots: &Slots,
    barrier: &SpinBarrier,
) -> Duration {
    CPU_INDEX.with(|c| c.set(me));
    let mut mine = Vec::with_capacity(BATCH);
    let mut theirs = Vec::with_capacity(BATCH);
    barrier.wait();
    let start = Instant::now();
    let mut done = 0;
    let mut round = 0;
    while done < pairs {
        let n = BATCH.min(pairs - done);
        for _ in 0..n {
            mine.push(alloc.alloc());
        }
        std::mem::swap(
            &mut mine,
            &mut *slots[round % 2][me].lock().expect("slot lock"),
        );
        barrier.wait();
        std::mem::swap(
            &mut theirs,
            &mut *slots[round % 2][1 - me].lock().expect("slot lock"),
        );
        for p in theirs.drain(..) {
            // SAFETY: the other thread allocated `p` from `alloc` and handed
            // it over; nobody else frees it.
            unsafe { alloc.free(black_box(p)) };
        }
        done += n;
        round += 1;
    }
    barrier.wait();
    start.elapsed()
}

/// `iters` pairs split over two threads (rounded up to an even count);
/// the time scaled back to `iters` pairs.
pub fn run_two_threads<S: Shared>(alloc: &S, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(2) as usize;
    let slots: Slots =
        std::array::from_fn(|_| std::array::from_fn(|_| Mutex::new(Vec::with_capacity(BATCH))));
    let barrier = SpinBarrier::new(2);
    let elapsed = thread::scope(|s| {
        let other = s.spawn(|| cross_worker(alloc, 1, per_thread, &slots, &barrier));
        let mine = cross_worker(alloc, 0, per_thread, &slots, &barrier);
        other.join().expect("second thread");
        mine
    });
    CPU_INDEX.with(|c| c.set(0));
    elapsed.mul_f64(iters as f64 / (2 * per_thread) as f64)
}

/// `iters` pairs split over two threads that each free only their own
/// objects, in the same batches: what two CPUs give when they share
/// nothing but the allocator, the ceiling `run_two_threads` is read
/// against on a given machine.
pub fn run_two_threads_apart<S: Shared>(alloc: &S, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(2);
    let barrier = SpinBarrier::new(2);
    let worker = |me: usize| {
        CPU_INDEX.with(|c| c.set(me));
        barrier.wait();
        let start = Instant::now();
        let _ = batches(alloc, per_thread);
        barrier.wait();
        start.elapsed()
    };
    let elapsed = thread::scope(|s| {
        let other = s.spawn(|| worker(1));
        let mine = worker(0);
        other.join().expect("second thread");
        mine
    });
    CPU_INDEX.with(|c| c.set(0));
    elapsed.mul_f64(iters as f64 / (2 * per_thread) as f64)
}

/// `iters` pairs on this thread (CPU 0), in the same batches.
pub fn run_one_thread<S: Shared>(alloc: &S, iters: u64) -> Duration {
    CPU_INDEX.with(|c| c.set(0));
    batches(alloc, iters)
}

/// `iters` pairs on the calling thread, allocated and freed in batches.
fn batches<S: Shared>(alloc: &S, iters: u64) -> Duration {
    let iters = iters as usize;
    let mut batch = Vec::with_capacity(BATCH);
    let start = Instant::now();
    let mut done = 0;
    while done < iters {
        let n = BATCH.min(iters - done);
        for _ in 0..n {
            batch.push(alloc.alloc());
        }
        for p in batch.drain(..) {
            // SAFETY: allocated just above, freed once.
            unsafe { alloc.free(black_box(p)) };
        }
        done += n;
    }
    start.elapsed()
}
