//! The `smp` boot word: every CPU at once on the heap (`Box`, `Vec`,
//! `BTreeMap`), an object cache, quantum caches and `ids`, in rounds.
//!
//! Every object holds a pattern made from the CPU that allocated it and a
//! count, written when it is allocated and verified when it is freed;
//! every other object goes to the next CPU's queue, which frees it, so
//! objects are freed on another CPU than the one that allocated them
//! (with one CPU the queue is its own). IDs are marked in a shared bitmap,
//! so two CPUs given the same ID is caught. Between rounds every CPU
//! stops at a barrier while CPU 0 runs the checker on every arena and
//! cache. At the end every CPU reaps the caches (draining the magazines),
//! and every arena and cache must be as it was before the test, `phys`
//! frame for frame. It ends with `N passed, M failed`.
//!
//! It first times 64-byte heap alloc+free pairs on every CPU at once, and
//! with two CPUs or more shows why released VA needs a TLB shootdown:
//! CPU 1 must not read through a stale translation once CPU 0 released a
//! range and mapped the same VA to other frames (`stale_translation`; it
//! fails with `shootdown=off`, and the rounds are then left out).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use vmem_core::{Arena, ArenaConfig, CacheConfig, Constraints, ObjectCache, Policy, QuantumCaches};
use x86_64::structures::paging::{Page, PageTableFlags as Flags, PhysFrame};
use x86_64::{PhysAddr, VirtAddr};

use crate::console::Verdict;
use crate::cpu::{self, rdtsc};
use crate::kmem::{self, PAGES_MAPPED, PAGES_UNMAPPED};
use crate::layout::PAGE;
use crate::local;
use crate::paging;
use crate::phys::PHYS_META;
use crate::phys::phys;
use crate::pressure::Baseline;
use crate::println;
use crate::report;
use crate::shootdown;
use crate::smp;
use crate::time::Clock;

/// Rounds, and objects each CPU allocates in a round.
const ROUNDS: usize = 4;
const OBJECTS: u64 = 1500;
/// 64-byte heap pairs each CPU times, unless `pairs=N` says.
const PAIRS: u64 = 100_000;
/// The quantum-cache arena: quantum and size.
const QC_QUANTUM: u64 = 64;
const QC_BYTES: u64 = 1 << 20;
const OBJECT_SIZE: u64 = 200;

/// One object in flight, with the seed of its pattern.
enum Object {
    Heap(Box<[u64]>, u64),
    Bytes(Vec<u8>, u64),
    Cached(u64, u64),
    Quantum(u64, u64, u64),
    Id(u64),
}

/// What every CPU shares during the test.
struct Shared<'a> {
    cache: &'a ObjectCache<'a>,
    qc: &'a Arena<'a>,
    queues: Vec<spin::Mutex<Vec<Object>>>,
    ids: Vec<AtomicU64>,
    failures: spin::Mutex<Vec<String>>,
    barrier: Barrier,
    cpus: usize,
}

/// A sense-reversing barrier for every CPU online.
struct Barrier {
    count: AtomicUsize,
    sense: AtomicBool,
    cpus: usize,
}

impl Barrier {
    fn new(cpus: usize) -> Barrier {
        Barrier {
            count: AtomicUsize::new(0),
            sense: AtomicBool::new(false),
            cpus,
        }
    }

    fn wait(&self, local: &mut bool) {
        *local = !*local;
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.cpus {
            self.count.store(0, Ordering::Relaxed);
            self.sense.store(*local, Ordering::Release);
        } else {
            while self.sense.load(Ordering::Acquire) != *local {
                core::hint::spin_loop();
            }
        }
    }
}

fn word(seed: u64, i: u64) -> u64 {
    (seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left((i % 63) as u32)
}

fn fill(addr: u64, bytes: u64, seed: u64) {
    for i in 0..bytes / 8 {
        // SAFETY: `[addr, addr + bytes)` is an object the caller allocated.
        unsafe { ((addr + i * 8) as *mut u64).write_volatile(word(seed, i)) };
    }
}

fn check(addr: u64, bytes: u64, seed: u64) -> Result<(), String> {
    for i in 0..bytes / 8 {
        // SAFETY: as in `fill`.
        let seen = unsafe { ((addr + i * 8) as *const u64).read_volatile() };
        if seen != word(seed, i) {
            return Err(format!(
                "object at {addr:#x} ({bytes} bytes): word {i} is {seen:#x}, not {:#x}",
                word(seed, i)
            ));
        }
    }
    Ok(())
}

impl Shared<'_> {
    fn fail(&self, what: String) {
        let mut failures = self.failures.lock();
        if failures.len() < 8 {
            failures.push(what);
        }
    }

    fn alloc(&self, cpu: usize, n: u64) -> Result<Object, String> {
        let seed = (cpu as u64) << 48 | n;
        cpu::this().counters.allocs.fetch_add(1, Ordering::Relaxed);
        Ok(match n % 5 {
            0 => {
                let words = 1 + (n * 7 % 300) as usize;
                let b: Box<[u64]> = (0..words as u64).map(|i| word(seed, i)).collect();
                Object::Heap(b, seed)
            }
            1 => {
                // Up to 20 KiB: beyond the largest size class, so some go
                // to `kmem_default` (and its imports to `kmem_va`'s caches).
                let len = 1 + (n * 131 % 20_000) as usize;
                let v: Vec<u8> = (0..len).map(|i| word(seed, i as u64) as u8).collect();
                Object::Bytes(v, seed)
            }
            2 => {
                let obj = self
                    .cache
                    .alloc_local(&local::LOCAL)
                    .map_err(|e| format!("cache alloc: {e}"))?;
                fill(obj, OBJECT_SIZE / 8 * 8, seed);
                Object::Cached(obj, seed)
            }
            3 => {
                let size = (1 + n % 16) * QC_QUANTUM;
                let obj = self
                    .qc
                    .alloc(size, Policy::InstantFit)
                    .map_err(|e| format!("quantum-cache alloc of {size}: {e}"))?;
                fill(obj, size, seed);
                Object::Quantum(obj, size, seed)
            }
            _ => {
                let id = kmem::ids()
                    .alloc(1, Policy::NextFit)
                    .map_err(|e| format!("ids alloc: {e}"))?;
                let (slot, bit) = ((id / 64) as usize, 1u64 << (id % 64));
                let was = self
                    .ids
                    .get(slot)
                    .map(|w| w.fetch_or(bit, Ordering::AcqRel));
                if was.is_none_or(|w| w & bit != 0) {
                    return Err(format!("ID {id} handed out twice"));
                }
                Object::Id(id)
            }
        })
    }

    fn free(&self, object: Object) -> Result<(), String> {
        match object {
            Object::Heap(b, seed) => {
                if let Some(i) = (0..b.len()).find(|&i| b[i] != word(seed, i as u64)) {
                    return Err(format!("Box of {} words: word {i} changed", b.len()));
                }
            }
            Object::Bytes(v, seed) => {
                if let Some(i) = (0..v.len()).find(|&i| v[i] != word(seed, i as u64) as u8) {
                    return Err(format!("Vec of {} bytes: byte {i} changed", v.len()));
                }
            }
            Object::Cached(obj, seed) => {
                check(obj, OBJECT_SIZE / 8 * 8, seed)?;
                self.cache
                    .free_local(&local::LOCAL, obj)
                    .map_err(|e| format!("cache free: {e}"))?;
            }
            Object::Quantum(obj, size, seed) => {
                check(obj, size, seed)?;
                self.qc
                    .free(obj, size)
                    .map_err(|e| format!("quantum-cache free: {e}"))?;
            }
            Object::Id(id) => {
                let (slot, bit) = ((id / 64) as usize, 1u64 << (id % 64));
                let was = self
                    .ids
                    .get(slot)
                    .map(|w| w.fetch_and(!bit, Ordering::AcqRel));
                if was.is_none_or(|w| w & bit == 0) {
                    return Err(format!("ID {id} was not marked allocated"));
                }
                kmem::ids()
                    .free(id, 1)
                    .map_err(|e| format!("ids free: {e}"))?;
            }
        }
        Ok(())
    }

    /// Frees what this CPU's queue holds: objects other CPUs allocated.
    fn drain_queue(&self, cpu: usize) {
        let objects = core::mem::take(&mut *self.queues[cpu].lock());
        let remote = if self.cpus > 1 {
            objects.len() as u64
        } else {
            0
        };
        for object in objects {
            if let Err(e) = self.free(object) {
                self.fail(format!("CPU {cpu}, freeing a queued object: {e}"));
            }
        }
        cpu::this()
            .counters
            .remote_frees
            .fetch_add(remote, Ordering::Relaxed);
    }

    /// One round on one CPU.
    fn round(&self, cpu: usize, round: usize) {
        let mut held: Vec<Object> = Vec::with_capacity(64);
        let mut map: BTreeMap<u64, u64> = BTreeMap::new();
        let next = (cpu + 1) % self.cpus;
        for i in 0..OBJECTS {
            let n = (round as u64) << 32 | i;
            match self.alloc(cpu, n) {
                Ok(object) if i % 2 == 1 => self.queues[next].lock().push(object),
                Ok(object) => held.push(object),
                Err(e) => self.fail(format!("CPU {cpu}: {e}")),
            }
            map.insert(n.wrapping_mul(0x2545_f491_4f6c_dd1d), n);
            if i % 3 == 0 {
                map.pop_first();
            }
            if held.len() >= 48 {
                for object in held.drain(..24) {
                    if let Err(e) = self.free(object) {
                        self.fail(format!("CPU {cpu}: {e}"));
                    }
                }
            }
            if i % 64 == 63 {
                self.drain_queue(cpu);
            }
        }
        if map
            .values()
            .any(|&n| map.get(&n.wrapping_mul(0x2545_f491_4f6c_dd1d)) != Some(&n))
        {
            self.fail(format!("CPU {cpu}: its BTreeMap lost an entry"));
        }
        for object in held {
            if let Err(e) = self.free(object) {
                self.fail(format!("CPU {cpu}: {e}"));
            }
        }
    }
}

/// Times 64-byte heap pairs on every CPU at once: pairs per second in all,
/// and the slowest and fastest CPU's own rate (which shows whether the
/// host ran the vCPUs side by side).
/// Runs `work(cpu)` (`ops` operations) on every CPU at once between two
/// barriers, after `warm(cpu)`: operations per second on all CPUs
/// together, and the slowest and fastest CPU's own rate.
fn rate_on_all(
    clock: &Clock,
    cpus: usize,
    ops: u64,
    warm: &(dyn Fn(usize) + Sync),
    work: &(dyn Fn(usize) + Sync),
) -> (u64, u64, u64) {
    let start = AtomicU64::new(0);
    let end = AtomicU64::new(0);
    let slowest = AtomicU64::new(0);
    let fastest = AtomicU64::new(u64::MAX);
    let barrier = Barrier::new(cpus);
    smp::run_on_all(&|cpu| {
        let mut sense = false;
        warm(cpu);
        barrier.wait(&mut sense);
        if cpu == 0 {
            start.store(rdtsc(), Ordering::Release);
        }
        let mine = rdtsc();
        work(cpu);
        let mine = rdtsc() - mine;
        slowest.fetch_max(mine, Ordering::Relaxed);
        fastest.fetch_min(mine, Ordering::Relaxed);
        barrier.wait(&mut sense);
        if cpu == 0 {
            end.store(rdtsc(), Ordering::Release);
        }
    });
    let rate = |ns: u64| ops * 1_000_000_000 / ns.max(1);
    let ns = clock.ns(end.load(Ordering::Acquire) - start.load(Ordering::Acquire));
    (
        rate(ns) * cpus as u64,
        rate(clock.ns(slowest.load(Ordering::Relaxed))),
        rate(clock.ns(fastest.load(Ordering::Relaxed))),
    )
}

/// Steps per second of a register-only loop (a multiply-add) on every CPU
/// at once, summed, and the slowest CPU's own rate: the scaling the
/// vCPUs give for work that shares nothing, against which the heap's is
/// read.
fn spin_rate(clock: &Clock, cpus: usize, pairs: u64) -> (u64, u64) {
    let steps = pairs * 16;
    let (all, slowest, _) = rate_on_all(clock, cpus, steps, &|_| {}, &|cpu| {
        let mut x = cpu as u64 + 1;
        for _ in 0..steps {
            x = core::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        core::hint::black_box(x);
    });
    (all, slowest)
}

/// 64-byte heap alloc+free pairs per second on every CPU at once, and the
/// slowest and fastest CPU's own rate.
fn heap_rate(clock: &Clock, cpus: usize, pairs: u64) -> (u64, u64, u64) {
    let layout = core::alloc::Layout::from_size_align(64, 8).expect("a valid layout");
    rate_on_all(
        clock,
        cpus,
        pairs,
        // SAFETY: each block is freed with the layout it was allocated with.
        &|_| unsafe { alloc::alloc::dealloc(alloc::alloc::alloc(layout), layout) },
        &|_| {
            for _ in 0..pairs {
                // SAFETY: as above; the pointer is freed at once.
                unsafe {
                    let p = core::hint::black_box(alloc::alloc::alloc(layout));
                    alloc::alloc::dealloc(p, layout);
                }
            }
        },
    )
}

/// The `smp` boot word.
pub fn run(clock: &Clock, pairs: Option<u64>) -> Verdict {
    let pairs = pairs.unwrap_or(PAIRS);
    let cpus = smp::online();
    println!();
    println!("=== smp: every CPU at once on the heap, caches, quantum caches and ids ===");
    let (rate, slow, fast) = heap_rate(clock, cpus, pairs);
    println!(
        "smp: heap alloc+free pairs (64 B) on {cpus} CPU(s) at once: {rate} pairs/s {} ({pairs} pairs each; one CPU's own rate {slow} to {fast} pairs/s)",
        clock.mark()
    );
    let (spins, spins_one) = spin_rate(clock, cpus, pairs);
    println!(
        "smp: a loop that touches no shared memory (one multiply-add per step) on {cpus} CPU(s) at once: {spins} steps/s {} (one CPU's own rate {spins_one} steps/s): how far this host's vCPUs scale at all",
        clock.mark()
    );
    let baseline = match Baseline::take() {
        Ok(b) => b,
        Err(e) => {
            println!("smp: no starting snapshot: {e}");
            return Verdict::Fail;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let mut outcomes = Vec::new();
    if cpus >= 2 {
        outcomes.push((
            "no CPU reads through a stale translation after another released the VA and reused it with other frames".to_string(),
            stale_translation(),
        ));
    } else {
        println!("smp: the stale-translation test needs two CPUs: left out");
    }
    if shootdown::enabled() {
        outcomes.extend(rounds(clock, cpus));
    } else {
        println!(
            "smp: shootdown=off: the rounds are left out (stale translations would corrupt them)"
        );
    }
    // The outcomes are on the heap: printed and dropped before the
    // comparison, which counts the heap's objects.
    for (name, outcome) in outcomes {
        match outcome {
            Ok(what) => {
                passed += 1;
                println!("test {name} ... ok ({what})");
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
        }
    }
    let name = "every arena and cache as at the start after every CPU reaped";
    match baseline.compare() {
        Ok((segments, kept)) => {
            passed += 1;
            println!(
                "test {name} ... ok ({segments} segments; phys frame for frame but what is kept for reuse: {kept})"
            );
        }
        Err(e) => {
            failed += 1;
            println!("test {name} ... FAILED: {e}");
        }
    }
    report::cpu_table(clock);
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

type Outcome = Result<String, String>;

/// Pages of the range the stale-translation test releases and reuses.
const STALE_PAGES: u64 = 64;

/// CPU 1 reads every page of a `kmem_default` range (so its TLB holds
/// them); CPU 0 frees the range, which `kmem_default` releases, takes the
/// same VA from `kmem_va` again and maps other frames there with other
/// contents; CPU 1 reads again. With shootdown, the VA is not reusable
/// until a round has flushed CPU 1's TLB, and CPU 1 sees the new
/// contents; without, it reads the old frames.
fn stale_translation() -> Outcome {
    const OLD: u64 = 0x01d0_01d0_01d0_01d0;
    const NEW: u64 = 0x0e40_0e40_0e40_0e40;
    let size = STALE_PAGES * PAGE;
    // The new frames are taken first, so the reuse cannot get the old
    // ones back (which would hide a stale translation).
    let mut fresh = Vec::with_capacity(STALE_PAGES as usize);
    for _ in 0..STALE_PAGES {
        match phys().alloc(PAGE, Policy::InstantFit) {
            Ok(frame) => fresh.push(frame),
            Err(e) => {
                for &f in &fresh {
                    let _ = phys().free(f, PAGE);
                }
                return Err(format!("no frame: {e}"));
            }
        }
    }
    let outcome = stale_on_two_cpus(size, &fresh, OLD, NEW);
    for &f in &fresh {
        let _ = phys().free(f, PAGE);
    }
    outcome
}

fn stale_on_two_cpus(size: u64, fresh: &[u64], old: u64, new: u64) -> Outcome {
    let mapped = PAGES_MAPPED.load(Ordering::Relaxed);
    let va = kmem::kmem_default()
        .alloc(size, Policy::InstantFit)
        .map_err(|e| format!("kmem_default alloc: {e}"))?;
    if PAGES_MAPPED.load(Ordering::Relaxed) - mapped < STALE_PAGES {
        let _ = kmem::kmem_default().free(va, size);
        return Err("kmem_default did not import a span of its own".to_string());
    }
    let word = |i: u64| (va + i * PAGE) as *mut u64;
    for i in 0..STALE_PAGES {
        // SAFETY: the range is ours and mapped.
        unsafe { word(i).write_volatile(old ^ i) };
    }
    let step = AtomicU64::new(0);
    let stale = AtomicU64::new(0);
    let error: spin::Mutex<Option<String>> = spin::Mutex::new(None);
    let wait = |n: u64| {
        while step.load(Ordering::Acquire) != n {
            core::hint::spin_loop();
        }
    };
    let reused = AtomicBool::new(false);
    smp::run_on_all(&|cpu| match cpu {
        0 => {
            wait(1);
            let unmapped = PAGES_UNMAPPED.load(Ordering::Relaxed);
            let _ = kmem::kmem_default().free(va, size);
            if PAGES_UNMAPPED.load(Ordering::Relaxed) - unmapped < STALE_PAGES {
                *error.lock() = Some("kmem_default did not release the span".to_string());
            }
            let exact = Constraints {
                min: va,
                max: va + size,
                ..Constraints::aligned(PAGE)
            };
            if shootdown::needed()
                && let Ok(early) = kmem::kmem_va().xalloc(size, &exact, Policy::InstantFit)
            {
                let _ = kmem::kmem_va().xfree(early, size);
                *error.lock() = Some("the VA was reusable before the shootdown".to_string());
            }
            kmem::purge();
            match kmem::kmem_va().xalloc(size, &exact, Policy::InstantFit) {
                Ok(_) => {
                    reused.store(true, Ordering::Release);
                    for (i, &frame) in fresh.iter().enumerate() {
                        let page = Page::containing_address(VirtAddr::new(va + i as u64 * PAGE));
                        let frame = PhysFrame::containing_address(PhysAddr::new(frame));
                        if paging::map(page, frame, Flags::WRITABLE).is_ok() {
                            // SAFETY: just mapped to a frame of ours.
                            unsafe { word(i as u64).write_volatile(new ^ i as u64) };
                        }
                    }
                }
                Err(e) => *error.lock() = Some(format!("the VA could not be taken again: {e}")),
            }
            step.store(2, Ordering::Release);
            wait(3);
        }
        1 => {
            // SAFETY: mapped until CPU 0 frees it, after step 1.
            let first = (0..STALE_PAGES).all(|i| unsafe { word(i).read_volatile() } == old ^ i);
            if !first {
                *error.lock() = Some("CPU 1 did not read the first contents".to_string());
            }
            step.store(1, Ordering::Release);
            wait(2);
            if reused.load(Ordering::Acquire) {
                // SAFETY: CPU 0 mapped the range again before step 2.
                let old_seen = (0..STALE_PAGES)
                    .filter(|&i| unsafe { word(i).read_volatile() } == old ^ i)
                    .count();
                stale.store(old_seen as u64, Ordering::Release);
            }
            step.store(3, Ordering::Release);
        }
        _ => {}
    });
    if reused.load(Ordering::Acquire) {
        let range = Page::range(
            Page::containing_address(VirtAddr::new(va)),
            Page::containing_address(VirtAddr::new(va + size)),
        );
        for page in range {
            paging::unmap(page);
        }
        shootdown::flush(&[(va, size)]);
        paging::free_empty_tables(range, None);
        let _ = kmem::kmem_va().xfree(va, size);
    }
    if let Some(e) = error.lock().take() {
        return Err(e);
    }
    match stale.load(Ordering::Acquire) {
        0 => Ok(format!(
            "CPU 1 read the new contents of all {STALE_PAGES} pages; shootdown {}",
            if shootdown::enabled() { "on" } else { "off" }
        )),
        n => Err(format!(
            "CPU 1 read {n} of {STALE_PAGES} pages through stale translations (the old frames' contents) after CPU 0 released the VA and mapped it to other frames; shootdown {}",
            if shootdown::enabled() { "on" } else { "off" }
        )),
    }
}

/// Makes the test's cache and quantum-cache arena, runs the rounds, and
/// gives everything back.
fn rounds(clock: &Clock, cpus: usize) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    let Ok(base) = kmem::kmem_default().alloc(QC_BYTES, Policy::InstantFit) else {
        out.push((
            "setup".to_string(),
            Err("no memory for the quantum-cache arena".to_string()),
        ));
        return out;
    };
    let made = (|| {
        let qcaches = Box::new(
            QuantumCaches::new(QC_QUANTUM, 16 * QC_QUANTUM, &PHYS_META, &cpu::CURRENT)
                .map_err(|e| format!("quantum caches: {e}"))?,
        );
        Ok::<_, String>(qcaches)
    })();
    let qcaches = match made {
        Ok(q) => q,
        Err(e) => {
            out.push(("setup".to_string(), Err(e)));
            let _ = kmem::kmem_default().free(base, QC_BYTES);
            return out;
        }
    };
    {
        let qc = match Arena::create(
            ArenaConfig::new("smp_qc", QC_QUANTUM)
                .span(base, QC_BYTES)
                .qcache(&qcaches)
                .meta(&PHYS_META),
        ) {
            Ok(a) => a,
            Err(e) => {
                out.push(("setup".to_string(), Err(format!("smp_qc arena: {e}"))));
                let _ = kmem::kmem_default().free(base, QC_BYTES);
                return out;
            }
        };
        // SAFETY: kmem_default hands out mapped, writable memory that is
        // the cache's until freed.
        let config = unsafe {
            CacheConfig::new("smp_objects", OBJECT_SIZE, &PHYS_META, &cpu::CURRENT)
                .local(&local::LOCAL)
                .memory()
                .debug(true)
        };
        match ObjectCache::new(config, kmem::kmem_default()) {
            Ok(cache) => {
                // Registered for cross-calls while the test runs: a reap on
                // one CPU asks the others for their held magazines.
                match local::register(&cache) {
                    Some(registration) => {
                        run_rounds(clock, cpus, &cache, &qc, &mut out);
                        say_path(&cache, cpus);
                        drop(registration);
                    }
                    None => out.push((
                        "setup".to_string(),
                        Err("no room to register smp_objects for cross-calls".to_string()),
                    )),
                }
                let _ = cache.reap();
            }
            Err(e) => out.push(("setup".to_string(), Err(format!("smp_objects cache: {e}")))),
        }
        let _ = qc.reap();
    }
    drop(qcaches);
    let _ = kmem::kmem_default().free(base, QC_BYTES);
    out
}

/// Says which path the test's object cache took: `alloc_local` and
/// `free_local` through `local::LOCAL`, the held (fast) path on CPUs below
/// `HELD_CPUS`, the locked path above; with each CPU's magazine figures.
fn say_path(cache: &ObjectCache<'_>, cpus: usize) {
    let held = cpus.min(vmem_core::HELD_CPUS);
    println!(
        "smp_objects: alloc_local/free_local through local::LOCAL (per-CPU held flag): held fast path on {held} of {cpus} CPU(s)"
    );
    for i in 0..cpus {
        if let Ok(s) = cache.cpu_stats(i) {
            println!(
                "  cpu {i}: magazine alloc hits/misses {}/{}, free hits/misses {}/{}, depot exchanges {}",
                s.alloc_hits, s.alloc_misses, s.free_hits, s.free_misses, s.depot_exchanges
            );
        }
    }
}

/// CPU 0 reaps the test's cache, the quantum caches and the heap while
/// every other CPU is idle in `hlt` and holds magazines of the cache and
/// the heap from the rounds: the reaps post cross-calls, the other CPUs
/// wake and answer from their idle loops, and once all have answered a
/// second reap returns the slabs they emptied. Fails when a CPU does not
/// answer in time or a CPU slot still holds a magazine.
fn reap_by_cross_call(
    clock: &Clock,
    cpus: usize,
    cache: &ObjectCache<'_>,
    qc: &Arena<'_>,
) -> Outcome {
    let sent = || {
        (0..cpus)
            .filter_map(cpu::cpu)
            .map(|c| c.counters.calls_sent.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let before = sent();
    let start = rdtsc();
    let reap_all = || -> Result<(), String> {
        cache.reap().map_err(|e| format!("smp_objects reap: {e}"))?;
        qc.reap().map_err(|e| format!("smp_qc reap: {e}"))?;
        if let Some(classes) = kmem::HEAP.classes() {
            classes.reap().map_err(|e| format!("heap reap: {e}"))?;
        }
        Ok(())
    };
    reap_all()?;
    let asked = sent() - before;
    local::settle().map_err(|cpu| format!("CPU {cpu} did not answer its cross-call"))?;
    let us = clock.ns(rdtsc() - start) / 1000;
    reap_all()?;
    // Magazines in CPU slots: those a cache owns less the depot's.
    let heap = kmem::HEAP.classes().map_or(&[][..], |c| c.caches());
    let left: Vec<String> = core::iter::once(cache)
        .chain(heap)
        .filter_map(|c| {
            let s = c.stats();
            let in_slots = s.magazines - s.depot_full - s.depot_empty;
            (in_slots != 0).then(|| format!("{}: {in_slots}", c.name()))
        })
        .collect();
    if !left.is_empty() {
        return Err(format!(
            "magazines still in CPU slots after every CPU answered: {}",
            left.join(", ")
        ));
    }
    Ok(format!(
        "{asked} cross-call(s) posted, every CPU answered and the second reap done in {us} us {}; no magazine left in a CPU slot",
        clock.mark()
    ))
}

fn run_rounds(
    clock: &Clock,
    cpus: usize,
    cache: &ObjectCache<'_>,
    qc: &Arena<'_>,
    out: &mut Vec<(String, Outcome)>,
) {
    let shared = Shared {
        cache,
        qc,
        queues: (0..cpus).map(|_| spin::Mutex::new(Vec::new())).collect(),
        ids: (0..(1 << 20) / 64).map(|_| AtomicU64::new(0)).collect(),
        failures: spin::Mutex::new(Vec::new()),
        barrier: Barrier::new(cpus),
        cpus,
    };
    let checks = spin::Mutex::new(Vec::new());
    let start = rdtsc();
    smp::run_on_all(&|cpu| {
        let mut sense = false;
        for round in 0..ROUNDS {
            shared.round(cpu, round);
            shared.barrier.wait(&mut sense);
            // No CPU queues more: each frees what it was sent.
            shared.drain_queue(cpu);
            shared.barrier.wait(&mut sense);
            if cpu == 0 {
                let checked = kmem::check_all()
                    .map_err(|e| e.to_string())
                    .and_then(|()| cache.check().map_err(|e| format!("smp_objects: {e}")))
                    .and_then(|()| qc.check().map_err(|e| format!("smp_qc: {e}")));
                checks.lock().push(checked);
            }
            shared.barrier.wait(&mut sense);
        }
    });
    let ms = clock.ns(rdtsc() - start) / 1_000_000;
    out.push((
        "a reap on CPU 0 alone gets back the magazines every other CPU holds, by cross-call"
            .to_string(),
        reap_by_cross_call(clock, cpus, cache, qc),
    ));
    let remote: u64 = (0..cpus)
        .filter_map(cpu::cpu)
        .map(|c| c.counters.remote_frees.load(Ordering::Relaxed))
        .sum();
    let failures = core::mem::take(&mut *shared.failures.lock());
    out.push((
        format!("{cpus} CPU(s) at once, {ROUNDS} rounds of {OBJECTS} objects each, patterns verified, every other object freed by the next CPU"),
        if failures.is_empty() {
            Ok(format!("{ms} ms {}, {remote} objects freed remotely", clock.mark()))
        } else {
            Err(failures.join("; "))
        },
    ));
    let checks = core::mem::take(&mut *checks.lock());
    let bad = checks.iter().filter(|c| c.is_err()).count();
    out.push((
        "checker between rounds, every CPU stopped at a barrier".to_string(),
        match checks.into_iter().find_map(Result::err) {
            None => Ok(format!("{ROUNDS} checks")),
            Some(e) => Err(format!("{bad} of {ROUNDS} checks failed, first: {e}")),
        },
    ));
}
