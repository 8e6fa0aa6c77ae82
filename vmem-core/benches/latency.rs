//! Worst single-call latency while an arena fills to a million live
//! segments and empties again (issue 12, defect 6: hash growth under the
//! arena's lock).
//!
//! One arena with quantum 4096 and a span far larger than needed takes
//! `--live` (default 1,000,000) one-quantum allocations with instant fit,
//! then frees them in a shuffled order. Each `alloc` and `free` is timed
//! alone with [`Instant`]; the arena's counters are read between calls
//! (outside the timing) to tell which calls installed or gave back a hash
//! table. Tags and hash tables come from a meta arena over a host buffer
//! touched beforehand ([`ArenaMeta`], as a kernel's direct map would give
//! them: no page faults, no `mmap`), or with `--meta heap` from the heap
//! ([`HeapMeta`]: large tables are then `mmap`ed, faulted in and
//! `munmap`ed by the C library, inside the timed calls).
//!
//! It prints, for alloc and free, and for as many timings of a call that
//! does nothing (`empty`: the machine's noise floor): the maximum (with its position and
//! whether the hash resized in that call), p99.99, p99.9, the median, how
//! many calls took over 20 µs, and the five slowest calls. Progress goes
//! to stderr. Timings on a shared machine are noisy: a preempted call
//! shows up as a slow one, so run it several times and on a quiet machine.
//! On Linux it also prints the same figures for the thread's CPU time in
//! each call (`CLOCK_THREAD_CPUTIME_ID`), which leaves out time preempted
//! (but keeps page faults and system calls):
//!
//! ```text
//! cargo bench -p vmem-core --bench latency
//! cargo bench -p vmem-core --bench latency -- --live 100000 --meta heap
//! ```

use std::time::Instant;

use vmem_core::{Arena, ArenaConfig, ArenaMeta, HeapMeta, MetaSource, Policy};

const QUANTUM: u64 = 4096;
/// Bytes of the host buffer meta pages come from, per live segment (a
/// tag, and a share of the hash tables).
const BUFFER_PER_SEGMENT: usize = 256;
/// The slow-call threshold the issue sets.
const TARGET_NS: u64 = 20_000;

/// One timed call: nanoseconds, and whether the hash's table changed.
#[derive(Clone, Copy)]
struct Call {
    ns: u64,
    resized: bool,
    /// Whether the thread took a page fault during the call.
    faulted: bool,
}

#[cfg(target_os = "linux")]
mod cpu_clock {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }

    unsafe extern "C" {
        fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
    }

    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    const RUSAGE_THREAD: i32 = 1;

    /// `struct rusage` on 64-bit Linux: two timevals, then 14 longs, of
    /// which the fifth and sixth count minor and major page faults.
    #[repr(C)]
    struct Rusage {
        times: [i64; 4],
        counters: [i64; 14],
    }

    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    }

    /// Page faults the calling thread has taken so far.
    pub fn faults() -> Option<u64> {
        let mut u = Rusage {
            times: [0; 4],
            counters: [0; 14],
        };
        // SAFETY: `u` is a valid rusage for the call to fill.
        let ok = unsafe { getrusage(RUSAGE_THREAD, &mut u) } == 0;
        ok.then(|| (u.counters[4] + u.counters[5]) as u64)
    }

    /// The calling thread's CPU time in nanoseconds.
    pub fn now() -> Option<u64> {
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `t` is a valid timespec for the call to fill.
        let ok = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
        ok.then(|| t.sec as u64 * 1_000_000_000 + t.nsec as u64)
    }
}

#[cfg(not(target_os = "linux"))]
mod cpu_clock {
    pub fn now() -> Option<u64> {
        None
    }

    pub fn faults() -> Option<u64> {
        None
    }
}

/// Times `call` by the wall clock and by the thread's CPU clock, and tells
/// whether the thread took a page fault meanwhile (counted outside both
/// timings).
fn timed<T>(call: impl FnOnce() -> T) -> (T, u64, Option<u64>, bool) {
    let faults = cpu_clock::faults();
    let cpu = cpu_clock::now();
    let t = Instant::now();
    let out = call();
    let wall = t.elapsed().as_nanos() as u64;
    let cpu = cpu.zip(cpu_clock::now()).map(|(a, b)| b.saturating_sub(a));
    let faulted = faults.zip(cpu_clock::faults()).is_some_and(|(a, b)| b > a);
    (out, wall, cpu, faulted)
}

/// One kind of call's timings: by the wall clock, and by the thread's CPU
/// clock where there is one.
struct Timings {
    wall: Vec<Call>,
    cpu: Vec<Call>,
}

impl Timings {
    fn with_capacity(calls: usize) -> Self {
        Timings {
            wall: Vec::with_capacity(calls),
            cpu: Vec::new(),
        }
    }

    fn push(&mut self, ns: u64, cpu: Option<u64>, resized: bool, faulted: bool) {
        let call = |ns| Call {
            ns,
            resized,
            faulted,
        };
        self.wall.push(call(ns));
        self.cpu.extend(cpu.map(call));
    }
}

fn hash_shape(arena: &Arena<'_>) -> (u64, u64) {
    let s = arena.stats();
    (s.hash_buckets, s.hash_resizes)
}

fn report(what: &str, calls: &[Call]) {
    let mut sorted: Vec<(u64, usize)> = calls.iter().enumerate().map(|(i, c)| (c.ns, i)).collect();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize].0;
    let (max, max_at) = sorted[sorted.len() - 1];
    let slow = sorted.iter().filter(|(ns, _)| *ns > TARGET_NS).count();
    let resizes = calls.iter().filter(|c| c.resized).count();
    let slow_faulted = calls
        .iter()
        .filter(|c| c.ns > TARGET_NS && c.faulted)
        .count();
    println!(
        "{what:5}: max {:>9.2} us at call {max_at} (hash resize in that call: {}), \
         p99.99 {:>7.2} us, p99.9 {:>6.2} us, median {:>6.3} us, \
         {slow} calls over {} us ({slow_faulted} of them took a page fault), \
         {resizes} calls resized the hash",
        max as f64 / 1e3,
        if calls[max_at].resized { "yes" } else { "no" },
        at(0.9999) as f64 / 1e3,
        at(0.999) as f64 / 1e3,
        at(0.5) as f64 / 1e3,
        TARGET_NS / 1000,
    );
    let worst: Vec<String> = sorted
        .iter()
        .rev()
        .take(5)
        .map(|&(ns, i)| {
            format!(
                "{:.1} us @{i}{}",
                ns as f64 / 1e3,
                if calls[i].resized { " (resize)" } else { "" }
            )
        })
        .collect();
    println!("       slowest: {}", worst.join(", "));
}

fn main() {
    let mut live = 1_000_000usize;
    let mut heap = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--live" => {
                live = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--live takes a number")
            }
            "--meta" => heap = args.next().as_deref() == Some("heap"),
            _ => {}
        }
    }
    // Every byte written once, so no meta page faults in during the run.
    let buffer = vec![1u8; live * BUFFER_PER_SEGMENT + (1 << 20)].leak();
    let base = (buffer.as_ptr() as u64).next_multiple_of(QUANTUM);
    let room = (buffer.len() as u64 - (base - buffer.as_ptr() as u64)) & !(QUANTUM - 1);
    let pages: Arena = Arena::create(
        ArenaConfig::new("meta pages", QUANTUM)
            .span(base, room)
            .meta(&HeapMeta),
    )
    .expect("meta arena");
    // SAFETY: the arena hands out addresses inside the leaked buffer, which
    // nothing else uses.
    let buffer_meta = unsafe { ArenaMeta::new(&pages) };
    let meta: &dyn MetaSource = if heap { &HeapMeta } else { &buffer_meta };
    let arena: Arena = Arena::create(
        ArenaConfig::new("latency", QUANTUM)
            .span(QUANTUM, 1 << 50)
            .meta(meta),
    )
    .expect("arena");

    let mut addrs = Vec::with_capacity(live);
    let mut allocs = Timings::with_capacity(live);
    let mut shape = hash_shape(&arena);
    for i in 0..live {
        let (addr, ns, cpu, faulted) = timed(|| arena.alloc(QUANTUM, Policy::InstantFit));
        addrs.push(addr.expect("alloc"));
        let now = hash_shape(&arena);
        allocs.push(ns, cpu, now != shape, faulted);
        shape = now;
        if (i + 1) % (live / 10).max(1) == 0 {
            eprintln!("filled {} / {live}", i + 1);
        }
    }

    // Fisher-Yates with a fixed xorshift, so every run frees in one order.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in (1..addrs.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        addrs.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut frees = Timings::with_capacity(live);
    for (i, &addr) in addrs.iter().enumerate() {
        let (freed, ns, cpu, faulted) = timed(|| arena.free(addr, QUANTUM));
        freed.expect("free");
        let now = hash_shape(&arena);
        frees.push(ns, cpu, now != shape, faulted);
        shape = now;
        if (i + 1) % (live / 10).max(1) == 0 {
            eprintln!("freed {} / {live}", i + 1);
        }
    }
    arena.check().expect("check");

    // The machine's own noise: as many timings of a call that does nothing,
    // so a reader can tell a slow call from a preempted one.
    let mut floor = Timings::with_capacity(live);
    for _ in 0..live {
        let ((), ns, cpu, faulted) = timed(|| std::hint::black_box(()));
        floor.push(ns, cpu, false, faulted);
    }

    println!(
        "{live} live one-quantum segments, instant fit, meta pages from {}",
        if heap {
            "HeapMeta"
        } else {
            "a touched host buffer"
        }
    );
    println!("wall clock (Instant):");
    report("alloc", &allocs.wall);
    report("free", &frees.wall);
    report("empty", &floor.wall);
    if !allocs.cpu.is_empty() {
        println!("thread CPU time (leaves out preemption):");
        report("alloc", &allocs.cpu);
        report("free", &frees.cpu);
        report("empty", &floor.cpu);
    }
}
