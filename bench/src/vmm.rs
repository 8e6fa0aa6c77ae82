//! The VMM workload (issue 16): PCI BARs placed and removed with device
//! hotplug churn, vmem-vmm against vm-allocator.
//!
//! `devices` devices with six BARs each (sizes 4 KiB to 16 MiB, each
//! aligned to its size, from one seeded generator) fill a 16 TiB 64-bit
//! window; then, timed, a random device is unplugged (its six BARs freed)
//! and a new one plugged (six BARs placed), over and over. The figure is
//! the time per BAR operation (one placement or one removal).

use std::collections::HashMap;
use std::hint::black_box;

use vmem_testkit::SplitMix64;
use vmem_vmm::{DeviceId, GuestLayout, Machine, Owner, Placement, RegionId, Request};

use crate::workloads::{Budget, timed};

/// One peer at one device count.
pub struct Row {
    pub peer: &'static str,
    pub devices: usize,
    pub ns_per_op: f64,
    pub ops: u64,
}

const WINDOW_BASE: u64 = 1 << 40;
const WINDOW: u64 = 1 << 44;

fn bar_sizes(rng: &mut SplitMix64) -> [u64; 6] {
    core::array::from_fn(|_| 4096 << rng.below(13))
}

trait Peer {
    const NAME: &'static str;
    fn new() -> Self;
    fn plug(&mut self, device: u32, sizes: &[u64; 6]);
    fn unplug(&mut self, device: u32);
}

/// A `GuestLayout` with one 64-bit region, BARs placed by `placement`.
struct Vmm<const INSTANT: bool>(GuestLayout);

impl<const INSTANT: bool> Peer for Vmm<INSTANT> {
    const NAME: &'static str = if INSTANT {
        "vmem-vmm (instant fit)"
    } else {
        "vmem-vmm (best fit)"
    };
    fn new() -> Self {
        let machine = Machine::new(46).region("mmio", &[(WINDOW_BASE, WINDOW)]);
        Vmm(GuestLayout::new(machine).expect("machine"))
    }
    fn plug(&mut self, device: u32, sizes: &[u64; 6]) {
        let placement = if INSTANT {
            Placement::Instant
        } else {
            Placement::Fit
        };
        for (bar, &size) in sizes.iter().enumerate() {
            let owner = Owner::Bar {
                device: DeviceId(device),
                bar: bar as u8,
            };
            let request = Request::bar(size).placed(placement);
            black_box(self.0.allocate(RegionId(0), &request, owner)).expect("BAR");
        }
    }
    fn unplug(&mut self, device: u32) {
        self.0.free_device(DeviceId(device)).expect("unplug");
    }
}

struct VmAlloc {
    space: vm_allocator::AddressAllocator,
    bars: HashMap<u32, Vec<vm_allocator::RangeInclusive>>,
}

impl Peer for VmAlloc {
    const NAME: &'static str = "vm-allocator (first match)";
    fn new() -> Self {
        VmAlloc {
            space: vm_allocator::AddressAllocator::new(WINDOW_BASE, WINDOW).expect("space"),
            bars: HashMap::new(),
        }
    }
    fn plug(&mut self, device: u32, sizes: &[u64; 6]) {
        let ranges = sizes
            .iter()
            .map(|&size| {
                black_box(
                    self.space
                        .allocate(size, size, vm_allocator::AllocPolicy::FirstMatch)
                        .expect("BAR"),
                )
            })
            .collect();
        self.bars.insert(device, ranges);
    }
    fn unplug(&mut self, device: u32) {
        for r in self.bars.remove(&device).expect("plugged") {
            self.space.free(&r).expect("free BAR");
        }
    }
}

fn hotplug<P: Peer>(devices: usize, b: Budget) -> Row {
    let mut rng = SplitMix64::new(0x16 ^ devices as u64);
    let mut peer = P::new();
    let mut live: Vec<u32> = (0..devices as u32).collect();
    for &d in &live {
        peer.plug(d, &bar_sizes(&mut rng));
    }
    let mut next = devices as u32;
    let mut cycle = || {
        let slot = rng.below(live.len() as u64) as usize;
        peer.unplug(live[slot]);
        let sizes = bar_sizes(&mut rng);
        peer.plug(next, &sizes);
        live[slot] = next;
        next += 1;
    };
    // Warm up, then time: each cycle is twelve BAR operations.
    timed(&mut cycle, b.warm / 12, b.time);
    let (cycles, el) = timed(&mut cycle, (b.ops / 12).max(1), b.time);
    Row {
        peer: P::NAME,
        devices,
        ns_per_op: el.as_nanos() as f64 / (cycles * 12) as f64,
        ops: cycles * 12,
    }
}

/// The workload at 100, 1,000 and 10,000 devices, for every peer `peer`
/// selects by name.
pub fn run(b: Budget, peer: impl Fn(&str) -> bool) -> Vec<Row> {
    type Run = fn(usize, Budget) -> Row;
    let peers: [(&str, Run); 3] = [
        (Vmm::<false>::NAME, hotplug::<Vmm<false>>),
        (Vmm::<true>::NAME, hotplug::<Vmm<true>>),
        (VmAlloc::NAME, hotplug::<VmAlloc>),
    ];
    let mut rows = Vec::new();
    for devices in [100, 1_000, 10_000] {
        for (_, run) in peers.iter().filter(|(n, _)| peer(n)) {
            rows.push(run(devices, b));
        }
    }
    rows
}
