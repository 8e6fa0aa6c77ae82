//! The in-kernel test suite (command-line word `test`). Each test returns
//! what went wrong; after each one every arena and the heap's caches are
//! checked. It ends with the plain line `N passed, M failed`.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use vmem_core::{Arena, Constraints, Policy, Segment, SegmentKind};
use x86_64::{PhysAddr, VirtAddr};

use crate::console::Verdict;
use crate::devices::Devices;
use crate::kmem;
use crate::layout::{PAGE, phys_to_virt};
use crate::paging;
use crate::phys::phys;
use crate::println;

type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!($($msg)*));
        }
    };
}

pub fn run(devices: &Devices) -> Verdict {
    println!();
    println!("=== in-kernel tests ===");
    let tests: [(&str, &dyn Fn() -> Outcome); 10] = [
        ("heap patterns in every allocation", &heap_patterns),
        ("collections on the heap", &collections),
        (
            "phys frames hold patterns via the direct map",
            &phys_patterns,
        ),
        ("phys exhausted and recovered exactly", &phys_exhaust),
        (
            "xalloc constraints: below 4 GiB, 2 MiB aligned, above 4 GiB",
            &constraints,
        ),
        ("direct map reads back heap pages", &direct_map),
        (
            "kmem_default release unmaps and frees frames",
            &release_unmaps,
        ),
        ("MMIO registers read through the device arena", &|| {
            mmio(devices)
        }),
        ("task IDs by next fit, guard page unmapped", &ids_and_guard),
        (
            "heap blocks aligned above a page: kmem_default imports aligned spans",
            &aligned_heap,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        let outcome = test().and_then(|()| kmem::check_all().map_err(|e| e.to_string()));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

fn pattern(seed: u64, i: usize) -> u8 {
    (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 1) as u8
}

fn heap_patterns() -> Outcome {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut size = 1usize;
    let mut seed = 1u64;
    while size <= 256 * 1024 {
        for extra in [0, 3, size / 2] {
            let n = size + extra;
            blocks.push((0..n).map(|i| pattern(seed, i)).collect());
            seed += 1;
        }
        size *= 2;
    }
    for (k, block) in blocks.iter().enumerate() {
        let seed = k as u64 + 1;
        if let Some(i) = block
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern(seed, i))
        {
            return Err(format!(
                "block {k} of {} bytes differs at byte {i}",
                block.len()
            ));
        }
    }
    Ok(())
}

fn collections() -> Outcome {
    let mut map: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..20_000u64 {
        map.insert(i * 13 % 20_011, format!("item {i}"));
    }
    let boxes: Vec<Box<[u64; 32]>> = (0..1000).map(|i| Box::new([i; 32])).collect();
    ensure!(map.len() == 20_000, "the map holds {} items", map.len());
    for (i, b) in boxes.iter().enumerate() {
        ensure!(b.iter().all(|&x| x == i as u64), "box {i} changed");
    }
    let total: usize = map.values().map(String::len).sum();
    ensure!(total > 100_000, "the strings hold {total} bytes");
    Ok(())
}

fn phys_patterns() -> Outcome {
    let mut frames = Vec::new();
    for pages in [1u64, 2, 3, 16, 64, 255] {
        let size = pages * PAGE;
        let frame = phys()
            .alloc(size, Policy::InstantFit)
            .map_err(|e| format!("phys alloc of {pages} pages: {e}"))?;
        fill(direct(frame), size, frame);
        frames.push((frame, size));
    }
    for &(frame, size) in &frames {
        verify(direct(frame), size, frame)?;
        phys().free(frame, size).map_err(|e| format!("free: {e}"))?;
    }
    Ok(())
}

/// The direct-map address of `frame`, an address `phys` handed out.
fn direct(frame: u64) -> VirtAddr {
    phys_to_virt(PhysAddr::new(frame))
}

fn fill(va: VirtAddr, size: u64, seed: u64) {
    for off in (0..size).step_by(8) {
        // SAFETY: `[va, va + size)` is memory the caller allocated.
        unsafe { (va + off).as_mut_ptr::<u64>().write_volatile(seed ^ off) };
    }
}

fn verify(va: VirtAddr, size: u64, seed: u64) -> Outcome {
    for off in (0..size).step_by(8) {
        // SAFETY: as in `fill`.
        let v = unsafe { (va + off).as_ptr::<u64>().read_volatile() };
        ensure!(
            v == seed ^ off,
            "{:#x}: found {v:#x}, wrote {:#x}",
            va + off,
            seed ^ off
        );
    }
    Ok(())
}

/// A fingerprint of an arena's segment list.
fn fingerprint(arena: &Arena<'static>) -> (u64, u64) {
    let (mut count, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    arena.walk(|Segment { start, size, kind }| {
        let k = match kind {
            SegmentKind::Span { imported } => 1 + u64::from(imported),
            SegmentKind::Free => 3,
            SegmentKind::Alloc => 4,
        };
        for word in [start, size, k] {
            hash = (hash ^ word).wrapping_mul(0x100_0000_01b3);
        }
        count += 1;
    });
    (count, hash)
}

/// Takes every frame of `phys`, largest blocks first, chaining them through
/// their first word (the heap may not grow while phys is empty), then
/// frees them all. Returns the bytes taken.
fn exhaust_phys() -> Result<u64, String> {
    let mut chain = 0u64; // physical address of the last block, 0 for none
    let mut taken = 0u64;
    let mut size = 1u64 << 30;
    while size >= PAGE {
        match phys().alloc(size, Policy::InstantFit) {
            Ok(block) => {
                // SAFETY: a block just allocated, reached by the direct map.
                unsafe {
                    let head = direct(block).as_mut_ptr::<u64>();
                    head.write(chain);
                    head.add(1).write(size);
                }
                chain = block;
                taken += size;
            }
            Err(_) => size /= 2,
        }
    }
    let left = phys().size().free;
    while chain != 0 {
        // SAFETY: each block's head was written above.
        let (next, size) = unsafe {
            let head = direct(chain).as_ptr::<u64>();
            (head.read(), head.add(1).read())
        };
        phys()
            .free(chain, size)
            .map_err(|e| format!("free {chain:#x}: {e}"))?;
        chain = next;
    }
    ensure!(
        left == 0,
        "{left} bytes still free in phys after exhausting it"
    );
    Ok(taken)
}

fn phys_exhaust() -> Outcome {
    // The first pass grows phys's tag stock and hash to what exhaustion
    // needs (they are kept); the second must leave phys exactly as found.
    exhaust_phys()?;
    let before = (phys().size(), fingerprint(phys()));
    let taken = exhaust_phys()?;
    let after = (phys().size(), fingerprint(phys()));
    ensure!(
        before == after,
        "phys changed: {:?} segments/hash before, {:?} after",
        before,
        after
    );
    ensure!(
        taken == before.0.free,
        "took {taken} bytes of {} free",
        before.0.free
    );
    println!(
        "    took all {} MiB free in phys, gave it back; {} segments as before",
        taken >> 20,
        after.1.0
    );
    Ok(())
}

fn constraints() -> Outcome {
    let below = Constraints {
        max: 1 << 32,
        ..Constraints::NONE
    };
    let low = phys()
        .xalloc(64 * PAGE, &below, Policy::InstantFit)
        .map_err(|e| format!("below 4 GiB: {e}"))?;
    ensure!(low + 64 * PAGE <= 1 << 32, "{low:#x} is not below 4 GiB");
    let huge = phys()
        .xalloc(2 << 20, &Constraints::aligned(2 << 20), Policy::InstantFit)
        .map_err(|e| format!("2 MiB aligned: {e}"))?;
    ensure!(huge % (2 << 20) == 0, "{huge:#x} is not 2 MiB aligned");
    let high_ram = phys().contains(1 << 32, PAGE).unwrap_or(false);
    let high = phys().xalloc(
        PAGE,
        &Constraints {
            min: 1 << 32,
            ..Constraints::NONE
        },
        Policy::InstantFit,
    );
    match (high_ram, high) {
        (true, Ok(addr)) => {
            ensure!(addr >= 1 << 32, "{addr:#x} is below 4 GiB");
            fill(direct(addr), PAGE, addr);
            verify(direct(addr), PAGE, addr)?;
            println!(
                "    RAM above 4 GiB: frame {addr:#x} written and read through the direct map"
            );
            phys().xfree(addr, PAGE).map_err(|e| e.to_string())?;
        }
        (false, Err(_)) => {}
        (true, Err(e)) => return Err(format!("no frame above 4 GiB although RAM is there: {e}")),
        (false, Ok(addr)) => return Err(format!("a frame above 4 GiB ({addr:#x}) without RAM")),
    }
    phys().xfree(low, 64 * PAGE).map_err(|e| e.to_string())?;
    phys().xfree(huge, 2 << 20).map_err(|e| e.to_string())?;
    Ok(())
}

fn direct_map() -> Outcome {
    let block: Vec<u64> = (0..4096u64).map(|i| i * 0x0101_0101).collect();
    let va = VirtAddr::from_ptr(block.as_ptr());
    for (i, expected) in block.iter().enumerate().step_by(512) {
        let addr = va + i as u64 * 8;
        let pa = paging::translate(addr).ok_or(format!("{addr:#x} is not mapped"))?;
        ensure!(
            phys()
                .contains(pa.align_down(PAGE).as_u64(), PAGE)
                .unwrap_or(false),
            "heap page {addr:#x} maps {pa:#x}, outside phys"
        );
        // SAFETY: the direct map covers every frame of phys.
        let seen = unsafe { phys_to_virt(pa).as_ptr::<u64>().read_volatile() };
        ensure!(
            seen == *expected,
            "direct map of {pa:#x} reads {seen:#x}, the heap {expected:#x}"
        );
    }
    Ok(())
}

fn release_unmaps() -> Outcome {
    // Earlier releases waiting for a shootdown would come back mid-test.
    kmem::purge();
    let free_before = phys().size().free;
    let size = 4u64 << 20;
    let va = kmem::kmem_default()
        .alloc(size, Policy::InstantFit)
        .map_err(|e| format!("alloc: {e}"))?;
    let va = VirtAddr::new(va);
    fill(va, size, va.as_u64());
    verify(va, size, va.as_u64())?;
    ensure!(
        phys().size().free <= free_before - size,
        "the pages took no frames"
    );
    kmem::kmem_default()
        .free(va.as_u64(), size)
        .map_err(|e| format!("free: {e}"))?;
    // With other CPUs online the range waits for a shootdown round, and
    // the page tables it emptied with it.
    kmem::purge();
    for off in (0..size).step_by(PAGE as usize) {
        ensure!(
            paging::translate(va + off).is_none(),
            "{:#x} still mapped",
            va + off
        );
    }
    let free_after = phys().size().free;
    ensure!(
        free_after == free_before,
        "phys free was {free_before}, is {free_after}"
    );
    Ok(())
}

fn mmio(devices: &Devices) -> Outcome {
    let (_, version) = devices.lapic_regs().ok_or("the LAPIC is not mapped")?;
    ensure!(
        (0x10..=0x15).contains(&(version & 0xff)),
        "LAPIC version {version:#x}"
    );
    let (_, io_version) = devices.ioapic_regs().ok_or("the IOAPIC is not mapped")?;
    ensure!(
        (0x11..=0x20).contains(&(io_version & 0xff)),
        "IOAPIC version {io_version:#x}"
    );
    let va = devices.lapic.map_or(0, |va| va.as_u64());
    ensure!(
        kmem::device().contains(va, PAGE).unwrap_or(false),
        "{va:#x} is not in 'device'"
    );
    Ok(())
}

fn ids_and_guard() -> Outcome {
    let a = kmem::ids()
        .alloc(1, Policy::NextFit)
        .map_err(|e| e.to_string())?;
    kmem::ids().free(a, 1).map_err(|e| e.to_string())?;
    let b = kmem::ids()
        .alloc(1, Policy::NextFit)
        .map_err(|e| e.to_string())?;
    ensure!(b == a + 1, "next fit reused {a} at once (got {b})");
    kmem::ids().free(b, 1).map_err(|e| e.to_string())?;
    let rsp: u64;
    // SAFETY: reads the stack pointer.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp) };
    let stack = kmem::MAIN_STACK.get().ok_or("no main stack")?;
    let guard = stack.guard.start_address();
    ensure!(
        rsp > stack.bottom().as_u64(),
        "running below the guard page?"
    );
    ensure!(
        paging::translate(guard).is_none(),
        "the guard page {guard:#x} is mapped"
    );
    ensure!(
        paging::translate(stack.bottom()).is_some(),
        "the stack's lowest page is unmapped"
    );
    ensure!(
        paging::translate(VirtAddr::zero()).is_none(),
        "page 0 is mapped"
    );
    Ok(())
}

/// `Layout`s aligned to 16 KiB .. 1 MiB through the global allocator:
/// above the largest class, so the size classes `xalloc` them from
/// `kmem_default`, which imports a span with that alignment from
/// `kmem_va` (and `kmem_va` from `kernel_va`). Each block is written and
/// read back, then freed; `kmem_default` gives the spans back.
fn aligned_heap() -> Outcome {
    use alloc::alloc::{Layout, alloc, dealloc};
    let mut blocks = Vec::new();
    for shift in 14..=20u32 {
        let align = 1usize << shift;
        let size = align / 2 + 3 * PAGE as usize;
        let layout = Layout::from_size_align(size, align).map_err(|e| format!("layout: {e}"))?;
        // SAFETY: a layout of non-zero size.
        let p = unsafe { alloc(layout) };
        ensure!(!p.is_null(), "no {size}-byte block aligned to {align}");
        ensure!(
            (p as usize).is_multiple_of(align),
            "{p:p} is not aligned to {align}"
        );
        for i in 0..size {
            // SAFETY: the block is `size` bytes, ours until freed.
            unsafe { p.add(i).write(pattern(u64::from(shift), i)) };
        }
        blocks.push((p, layout));
    }
    for &(p, layout) in &blocks {
        let shift = u64::from(layout.align().trailing_zeros());
        for i in 0..layout.size() {
            // SAFETY: as above.
            let b = unsafe { p.add(i).read() };
            ensure!(b == pattern(shift, i), "block {p:p} differs at byte {i}");
        }
    }
    for (p, layout) in blocks {
        // SAFETY: allocated above with this layout, freed once.
        unsafe { dealloc(p, layout) };
    }
    Ok(())
}
