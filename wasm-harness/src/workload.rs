//! Generated scenarios for benchmarks and budget tests: long, deterministic
//! churn over a few arenas.

use std::fmt::Write;

use vmem_testkit::SplitMix64;

/// A scenario of `operations` allocation commands (`alloc`, `xalloc`, and
/// the frees that match them) over three arenas, the same text for the same
/// arguments. About half the handles stay live at any time, so the arenas
/// fragment as a long-running host's do.
pub fn churn(operations: usize) -> String {
    // (name, quantum, whether to xalloc there too, how it is made)
    let arenas = [
        // Guest-physical pages, 1 GiB of them.
        (
            "phys",
            4096,
            true,
            "arena phys quantum=4K base=0x100000 size=1G",
        ),
        // Interrupt-like IDs, quantum 1.
        ("ids", 1, true, "arena ids quantum=1 base=32 size=1M"),
        // Kernel virtual space importing 4 MiB spans from phys (plain
        // allocations only).
        (
            "kva",
            4096,
            false,
            "arena kva quantum=4K source=phys import=4M",
        ),
    ];
    let mut script = String::with_capacity(operations * 28);
    for (_, _, _, create) in &arenas {
        script.push_str(create);
        script.push('\n');
    }
    let mut rng = SplitMix64::new(0x766d_656d);
    // Live handles: (name, arena index, whether xalloc made it).
    let mut live: Vec<(usize, usize, bool)> = Vec::new();
    let mut next_handle = 0usize;
    for _ in 0..operations {
        let free = !live.is_empty() && rng.below(100) < 48;
        if free {
            let index = rng.below(live.len() as u64) as usize;
            let (handle, arena, by_xalloc) = live.swap_remove(index);
            let verb = if by_xalloc { "xfree" } else { "free" };
            let _ = writeln!(script, "{verb} {} h{handle}", arenas[arena].0);
            continue;
        }
        let arena = rng.below(arenas.len() as u64) as usize;
        let (name, quantum, constrained, _) = arenas[arena];
        let size = quantum * (1 + rng.below(16) * rng.below(4));
        let handle = next_handle;
        next_handle += 1;
        let by_xalloc = constrained && rng.below(100) < 25;
        if by_xalloc {
            let align = quantum << rng.below(4);
            let _ = writeln!(
                script,
                "h{handle} = xalloc {name} {size} align={align} nocross={}",
                quantum << 12
            );
        } else {
            let _ = writeln!(script, "h{handle} = alloc {name} {size}");
        }
        live.push((handle, arena, by_xalloc));
    }
    script
}
