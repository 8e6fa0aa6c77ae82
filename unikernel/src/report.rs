//! The boot report: how the kernel booted, the memory map, a workload timed
//! with the TSC, and every arena and cache.

use alloc::alloc::{alloc, dealloc};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt;
use core::hint::black_box;
use core::sync::atomic::Ordering;

use vmem_core::{Arena, Policy, SegmentKind};

use crate::boot::{BootInfo, ENTRY_TSC};
use crate::cpu::{self, rdtsc};
use crate::devices::Devices;
use crate::kmem::{self, HEAP, PAGES_MAPPED, PAGES_UNMAPPED};
use crate::layout::{IOAPIC, LAPIC, PAGE};
use crate::paging::TABLE_FRAMES;
use crate::phys::phys;
use crate::time::Clock;
use crate::{apic, shootdown, smp};
use crate::{println, trace};

/// A byte count, printed in the largest binary unit that keeps it whole
/// enough to read.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let text = if b >= 1 << 30 {
            alloc::format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
        } else if b >= 1 << 20 {
            alloc::format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
        } else if b >= 1 << 10 {
            alloc::format!("{:.1} KiB", b as f64 / 1024.0)
        } else {
            alloc::format!("{b} B")
        };
        f.pad(&text)
    }
}

/// The workload's figures.
pub struct Workload {
    heap_pair_ns: f64,
    phys_pair_ns: f64,
    map_pages_per_s: u64,
    unmap_pages_per_s: u64,
    mapped: u64,
    collection_items: usize,
}

const PAIRS: u64 = 100_000;

fn per_pair(clock: &Clock, cycles: u64, pairs: u64) -> f64 {
    clock.ns(cycles * 1000 / pairs) as f64 / 1000.0
}

pub fn workload(clock: &Clock) -> Workload {
    let layout = Layout::from_size_align(64, 8).expect("a valid layout");
    // SAFETY: each block is freed with the layout it was allocated with.
    let heap_cycles = unsafe {
        dealloc(alloc(layout), layout);
        let start = rdtsc();
        for _ in 0..PAIRS {
            let p = black_box(alloc(layout));
            dealloc(p, layout);
        }
        rdtsc() - start
    };
    let phys_cycles = {
        let warm = phys().alloc(PAGE, Policy::InstantFit);
        if let Ok(frame) = warm {
            let _ = phys().free(frame, PAGE);
        }
        let start = rdtsc();
        for _ in 0..PAIRS / 10 {
            if let Ok(frame) = phys().alloc(PAGE, Policy::InstantFit) {
                let _ = phys().free(black_box(frame), PAGE);
            }
        }
        rdtsc() - start
    };
    // A span of kmem_default large enough to import on its own: every page
    // is backed and mapped on the way in, unmapped and freed on the way out.
    let bytes = 8u64 << 20;
    let before = PAGES_MAPPED.load(Ordering::Relaxed);
    let start = rdtsc();
    let block = kmem::kmem_default().alloc(bytes, Policy::InstantFit);
    let map_cycles = rdtsc() - start;
    let mapped = PAGES_MAPPED.load(Ordering::Relaxed) - before;
    let unmapped_before = PAGES_UNMAPPED.load(Ordering::Relaxed);
    let start = rdtsc();
    if let Ok(va) = block {
        let _ = kmem::kmem_default().free(va, bytes);
    }
    let unmap_cycles = rdtsc() - start;
    let unmapped = PAGES_UNMAPPED.load(Ordering::Relaxed) - unmapped_before;

    let mut map = BTreeMap::new();
    let mut lists: Vec<Vec<u64>> = Vec::new();
    for i in 0..5_000u64 {
        map.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i);
        if i % 500 == 0 {
            lists.push((0..i).collect());
        }
    }
    let collection_items = map.len() + lists.iter().map(Vec::len).sum::<usize>();

    let rate = |pages: u64, cycles: u64| pages * 1_000_000_000 / clock.ns(cycles).max(1);
    Workload {
        heap_pair_ns: per_pair(clock, heap_cycles, PAIRS),
        phys_pair_ns: per_pair(clock, phys_cycles, PAIRS / 10),
        map_pages_per_s: rate(mapped, map_cycles),
        unmap_pages_per_s: rate(unmapped, unmap_cycles),
        mapped,
        collection_items,
    }
}

pub fn print(boot: &BootInfo, clock: &Clock, devices: &Devices) {
    let work = workload(clock);
    println!();
    println!("=== vmem unikernel: boot report ===");
    let hypervisor = match cpu::hypervisor() {
        Some((sig, _)) if sig.starts_with(b"KVMKVMKVM") => "KVM (CPUID 0x40000000 says KVMKVMKVM)",
        Some((sig, _)) if sig.starts_with(b"TCGTCGTCG") => {
            "TCG (CPUID 0x40000000 says TCGTCGTCGTCG)"
        }
        Some(_) => "a hypervisor that is not KVM: TCG or another",
        None => "TCG (no hypervisor signature in CPUID)",
    };
    let mut brand = [0u8; 48];
    println!("accelerator   {}", clock.accel.meaning());
    println!("hypervisor    {hypervisor}");
    println!("machine       {}", devices.machine());
    println!(
        "cpu           {} ({} pages in the direct map)",
        cpu::brand(&mut brand),
        if cpu::has_1g_pages() {
            "1 GiB"
        } else {
            "2 MiB"
        }
    );
    println!(
        "memory        {} of RAM in the PVH map",
        Bytes(boot.ram_bytes())
    );
    println!(
        "command line  \"{}\" (hvm_start_info at {:#x})",
        boot.cmdline(),
        boot.start_info
    );
    println!(
        "tsc           {}.{:03} MHz from {}",
        clock.tsc_hz / 1_000_000,
        clock.tsc_hz / 1000 % 1000,
        clock.source
    );
    match devices.lapic_regs() {
        Some((id, version)) => println!(
            "local APIC    at {LAPIC:#x} (mapped at {:#x}): id {}, version {:#x}, {} LVT entries",
            devices.lapic.map_or(0, |va| va.as_u64()),
            id >> 24,
            version & 0xff,
            ((version >> 16) & 0xff) + 1
        ),
        None => println!("local APIC    not mapped"),
    }
    match devices.ioapic_regs() {
        Some((id, version)) => println!(
            "IOAPIC        at {IOAPIC:#x} (mapped at {:#x}): id {}, version {:#x}, {} pins",
            devices.ioapic.map_or(0, |va| va.as_u64()),
            (id >> 24) & 0xf,
            version & 0xff,
            ((version >> 16) & 0xff) + 1
        ),
        None => println!("IOAPIC        not mapped"),
    }
    match smp::bring_up() {
        Some(up) => {
            let ids: Vec<u32> = (0..up.online)
                .filter_map(cpu::cpu)
                .map(|c| c.apic_id.load(Ordering::Relaxed))
                .collect();
            println!(
                "cpus          {} online (APIC IDs {ids:?} by CPU index), local APIC in {} mode",
                up.online,
                match apic::mode() {
                    Some(apic::Lapic::X2apic) => "x2APIC",
                    _ => "xAPIC",
                }
            );
            println!(
                "              {} APs online {} us {} after the first INIT (all started at once; trampoline at {:#x}, from phys below 1 MiB)",
                up.online - 1,
                clock.ns(up.cycles) / 1000,
                clock.mark(),
                up.trampoline
            );
            println!(
                "              from the MADT ({} CPUs listed; RSDP at {:#x} from {}, {}), local APIC at {:#x}",
                up.madt.listed,
                up.madt.rsdp,
                up.madt.rsdp_from,
                if up.madt.xsdt { "XSDT" } else { "RSDT" },
                up.madt.lapic
            );
        }
        None => println!("cpus          the boot CPU alone (no MADT)"),
    }
    let task_ids: Vec<u64> = (0..4)
        .filter_map(|_| kmem::ids().alloc(1, Policy::NextFit).ok())
        .collect();
    println!("task ids      {task_ids:?} from 'ids' by next fit");

    println!();
    println!("memory map (PVH):");
    for r in boot.memmap() {
        println!(
            "  {:#014x}..{:#014x}  {:>10}  {}",
            r.base,
            r.end(),
            Bytes(r.size),
            r.kind_name()
        );
    }

    println!();
    let mark = clock.mark();
    println!(
        "workload: timed under {}; each timing marked {mark}",
        clock.accel.meaning()
    );
    println!(
        "  heap alloc+free pair (64 B)   {:>8.1} ns {mark}  ({PAIRS} pairs through the global allocator)",
        work.heap_pair_ns
    );
    println!(
        "  phys alloc+free pair (4 KiB)  {:>8.1} ns {mark}  ({} pairs)",
        work.phys_pair_ns,
        PAIRS / 10
    );
    println!(
        "  pages mapped                  {:>8} /s {mark}  ({} pages backed with frames and mapped by one import)",
        work.map_pages_per_s, work.mapped
    );
    println!(
        "  pages unmapped and freed      {:>8} /s {mark}",
        work.unmap_pages_per_s
    );
    println!(
        "  BTreeMap and Vec items        {:>8}",
        work.collection_items
    );

    println!();
    println!("arenas:");
    println!(
        "  {:<13} {:>7} {:>5} {:>11} {:>11} {:>11} {:>11} {:>7} {:>8}",
        "name", "quantum", "spans", "total", "allocated", "free", "imported", "imports", "releases"
    );
    for arena in kmem::arenas() {
        arena_row(arena);
    }
    println!(
        "  page-table frames from phys: {}",
        TABLE_FRAMES.load(Ordering::Relaxed)
    );

    println!();
    println!("caches (those used):");
    println!(
        "  {:<20} {:>6} {:>8} {:>6} {:>9} {:>10}",
        "name", "size", "in use", "slabs", "allocs", "mag hits"
    );
    if let Some(classes) = HEAP.classes() {
        for cache in classes.caches() {
            let s = cache.stats();
            if s.allocs > 0 {
                cache_row(cache.name(), cache.object_size(), &s);
            }
        }
    }
    for (size, s) in kmem::kmem_va_qcaches().stats() {
        if s.allocs > 0 {
            let name = alloc::format!("kmem_va qcache {}K", size / 1024);
            cache_row(&name, size, &s);
        }
    }
    cpu_table(clock);
    println!();
    println!(
        "tracing events from vmem-core: {} (boot with `trace` to print them)",
        trace::EVENTS.load(Ordering::Relaxed)
    );
    let entry = ENTRY_TSC.load(Ordering::Relaxed);
    println!(
        "time from entry to report: {} us {mark}",
        clock.ns(rdtsc() - entry) / 1000
    );
}

/// CPU slot `index`'s magazine counters summed over the heap's size-class
/// caches and `kmem_va`'s quantum caches (zero for an index past
/// vmem-core's slots).
fn cpu_magazines(index: usize) -> vmem_core::CpuStats {
    let mut sum = vmem_core::CpuStats::default();
    if let Some(classes) = HEAP.classes() {
        for c in classes.caches() {
            sum += c.cpu_stats(index).unwrap_or_default();
        }
    }
    sum += kmem::kmem_va_qcaches().cpu_stats(index).unwrap_or_default();
    sum
}

/// `hits/misses`, padded as a whole to the field's width.
struct Pair(u64, u64);

impl core::fmt::Display for Pair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut buf = [0u8; 48];
        let mut w = Cursor {
            buf: &mut buf,
            len: 0,
        };
        core::fmt::write(&mut w, format_args!("{}/{}", self.0, self.1))?;
        let len = w.len;
        f.pad(core::str::from_utf8(&buf[..len]).unwrap_or("?"))
    }
}

/// A fixed buffer `core::fmt` writes into (the report allocates nothing).
struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl core::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// One row per CPU online: what the kernel counts per CPU, and that CPU's
/// slot counters of the heap's and `kmem_va`'s caches summed
/// (`cpu_stats`: magazine hits and misses of allocations and frees, and
/// depot exchanges); then the caches' figures for all CPUs together.
/// Allocates nothing.
pub fn cpu_table(clock: &Clock) {
    println!();
    println!("per CPU:");
    println!(
        "  {:>3} {:>7} {:>10} {:>12} {:>15} {:>19} {:>21} {:>21} {:>15} {:>23}",
        "cpu",
        "APIC id",
        "allocs",
        "remote frees",
        "shootdowns sent",
        "shootdowns received",
        "mag alloc hits/misses",
        "mag free hits/misses",
        "depot exchanges",
        "cross-calls sent/answ."
    );
    for c in (0..smp::online()).filter_map(cpu::cpu) {
        let n = &c.counters;
        let m = cpu_magazines(c.index());
        println!(
            "  {:>3} {:>7} {:>10} {:>12} {:>15} {:>19} {:>21} {:>21} {:>15} {:>23}",
            c.index(),
            c.apic_id.load(Ordering::Relaxed),
            n.allocs.load(Ordering::Relaxed),
            n.remote_frees.load(Ordering::Relaxed),
            n.shootdowns_sent.load(Ordering::Relaxed),
            n.shootdowns_received.load(Ordering::Relaxed),
            Pair(m.alloc_hits, m.alloc_misses),
            Pair(m.free_hits, m.free_misses),
            m.depot_exchanges,
            Pair(
                n.calls_sent.load(Ordering::Relaxed),
                c.calls_answered.load(Ordering::Relaxed)
            )
        );
    }
    let mut all = vmem_core::CacheStats::default();
    let mut add = |s: &vmem_core::CacheStats| {
        all.magazine_hits += s.magazine_hits;
        all.magazine_misses += s.magazine_misses;
        all.free_magazine_hits += s.free_magazine_hits;
        all.free_magazine_misses += s.free_magazine_misses;
        all.depot_contention += s.depot_contention;
    };
    if let Some(classes) = HEAP.classes() {
        classes.caches().iter().for_each(|c| add(&c.stats()));
    }
    kmem::kmem_va_qcaches().stats().for_each(|(_, s)| add(&s));
    println!(
        "  all CPUs, heap and kmem_va caches: magazine hits {} misses {} (allocs), {} / {} (frees), depot lock contended {} times",
        all.magazine_hits,
        all.magazine_misses,
        all.free_magazine_hits,
        all.free_magazine_misses,
        all.depot_contention
    );
    let rounds = shootdown::ROUNDS.load(Ordering::Relaxed);
    let ranges = shootdown::ROUND_RANGES_SENT.load(Ordering::Relaxed);
    let cycles = shootdown::ROUND_CYCLES.load(Ordering::Relaxed);
    println!(
        "  TLB shootdown {}: {rounds} rounds, {}.{} ranges per round, {} ns per round {}",
        if shootdown::enabled() {
            "on"
        } else {
            "off (shootdown=off)"
        },
        (ranges * 10).checked_div(rounds).unwrap_or(0) / 10,
        (ranges * 10).checked_div(rounds).unwrap_or(0) % 10,
        cycles.checked_div(rounds).map_or(0, |c| clock.ns(c)),
        clock.mark()
    );
}

fn arena_row(arena: &Arena<'static>) {
    let size = arena.size();
    let stats = arena.stats();
    let mut imported = 0;
    arena.walk(|seg| {
        if seg.kind == (SegmentKind::Span { imported: true }) {
            imported += seg.size;
        }
    });
    if arena.quantum() >= PAGE {
        println!(
            "  {:<13} {:>7} {:>5} {:>11} {:>11} {:>11} {:>11} {:>7} {:>8}",
            arena.name(),
            arena.quantum(),
            stats.spans,
            Bytes(size.total),
            Bytes(size.alloc),
            Bytes(size.free),
            Bytes(imported),
            stats.imports,
            stats.releases
        );
    } else {
        println!(
            "  {:<13} {:>7} {:>5} {:>11} {:>11} {:>11} {:>11} {:>7} {:>8}",
            arena.name(),
            arena.quantum(),
            stats.spans,
            size.total,
            size.alloc,
            size.free,
            imported,
            stats.imports,
            stats.releases
        );
    }
}

fn cache_row(name: &str, size: u64, s: &vmem_core::CacheStats) {
    let hits = (s.magazine_hits * 1000).checked_div(s.allocs).unwrap_or(0);
    println!(
        "  {:<20} {:>6} {:>8} {:>6} {:>9} {:>7}.{}%",
        name,
        size,
        s.in_use,
        s.slabs,
        s.allocs,
        hits / 10,
        hits % 10
    );
}
