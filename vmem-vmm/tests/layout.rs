//! The layout's verbs on a q35-like guest, their errors, and random
//! sequences in which every failed call changes nothing.

mod common;

use common::{MIB, apply, bar, op, q35, state};
use proptest::prelude::*;
use vmem_vmm::{
    DeviceId, ErrorKind, FOUR_GIB, GuestLayout, IdPick, Machine, MapEntry, Owner, Request,
};

#[test]
fn the_map_tiles_the_address_space() {
    let g = q35();
    let map = g.map();
    let mut next = 0;
    for &(start, size, _) in &map {
        assert_eq!(start, next);
        next = start + size;
    }
    assert_eq!(next, 1 << 40);
    let ram = g.region("ram").unwrap();
    let ram_ranges: Vec<_> = map
        .iter()
        .filter(|e| e.2 == MapEntry::Region(ram))
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(ram_ranges, vec![(0, 2 << 30), (FOUR_GIB, 2 << 30)]);
    assert!(
        map.iter()
            .any(|e| e.0 == 0xfee0_0000 && matches!(e.2, MapEntry::Reserved(_)))
    );
    g.check().unwrap();
}

#[test]
fn bars_meet_alignment_window_boundary_and_direction() {
    let mut g = q35();
    let mmio32 = g.region("mmio32").unwrap();
    let mmio64 = g.region("mmio64").unwrap();
    let low = g
        .allocate(mmio32, &Request::bar(16 * MIB).bottom_up(), bar(1, 0))
        .unwrap();
    assert_eq!(low.start, 0x8000_0000);
    let high = g
        .allocate(mmio32, &Request::bar(16 * MIB).top_down(), bar(1, 1))
        .unwrap();
    assert_eq!(
        high.end(),
        0xfe00_0000,
        "the highest 16 MiB-aligned range below the IOAPIC"
    );
    let big = g
        .allocate(mmio64, &Request::bar(8 << 30), bar(2, 0))
        .unwrap();
    assert_eq!(big.start % (8 << 30), 0);
    // A 64-bit BAR that must sit below 4 GiB goes to mmio32; in mmio64 the
    // window holds nothing.
    let err = g
        .allocate(mmio64, &Request::bar(MIB).below_4g(), bar(2, 1))
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::NoSpace,
        "mmio64 has nothing below 4 GiB"
    );
    let dma = g
        .allocate(
            mmio32,
            &Request::new(3 * MIB).boundary(4 * MIB).top_down(),
            Owner::label("dma").unwrap(),
        )
        .unwrap();
    assert_eq!(dma.start / (4 * MIB), (dma.end() - 1) / (4 * MIB));
    let phased = g
        .allocate(
            mmio32,
            &Request::new(MIB).align(16 * MIB).phase(MIB),
            bar(3, 0),
        )
        .unwrap();
    assert_eq!(phased.start % (16 * MIB), MIB);
    g.check().unwrap();
}

#[test]
fn instant_fit_places_aligned_bars() {
    let mut g = q35();
    let mmio64 = g.region("mmio64").unwrap();
    for (i, log) in (12..34).enumerate() {
        let r = Request::bar(1 << log).placed(vmem_vmm::Placement::Instant);
        let a = g.allocate(mmio64, &r, bar(i as u32, 0)).unwrap();
        assert_eq!(a.start % (1 << log), 0);
        assert!(a.start >= 512 << 30 && a.end() <= 1 << 40);
    }
    g.check().unwrap();
}

#[test]
fn extreme_parameters_are_refused_or_met_without_panic() {
    let mut g = GuestLayout::new(Machine::new(63).region("top", &[(1 << 62, 1 << 62)])).unwrap();
    let top = g.region("top").unwrap();
    let o = bar(0, 0);
    for r in [
        Request::new(1 << 62).align(1 << 62),
        Request::new(1 << 62).align(1 << 62).top_down(),
        Request::new(1 << 62).align(1 << 62).bottom_up(),
        Request::new(0x1000).align(1 << 63),
        Request::new(0x1000).align(1 << 63).bottom_up(),
        Request::new(0x1000).align(1 << 63).top_down(),
        Request::new(0x2000).boundary(1 << 63).bottom_up(),
        Request::new(0x2000).boundary(1 << 63).top_down(),
        Request::new(0x1000)
            .align(1 << 62)
            .phase(0x1000)
            .bottom_up(),
        Request::new(u64::MAX - 0xfff),
        Request::new(0x1000)
            .window(u64::MAX - 0x1000, u64::MAX)
            .bottom_up(),
    ] {
        if let Ok(a) = g.allocate(top, &r, o) {
            assert!(a.start >= 1 << 62 && a.end() <= 1 << 63, "{r:?}");
            g.free(a.start, a.size).unwrap();
        }
        g.check().unwrap();
    }
    let a = g.allocate_at(top, 1 << 62, 0x1000, o).unwrap();
    assert!(g.relocate(a.start, u64::MAX - 0xfff).is_err());
    assert!(g.allocate_at(top, u64::MAX - 0xfff, 0x2000, o).is_err());
    g.check().unwrap();
}

#[test]
fn allocate_at_free_and_containing() {
    let mut g = q35();
    let ram = g.region("ram").unwrap();
    let fw = Owner::label("firmware-tables").unwrap();
    let a = g.allocate_at(ram, 0xe_0000, 0x2_0000, fw).unwrap();
    assert_eq!(
        g.allocate_at(ram, 0xf_0000, 0x1000, fw).unwrap_err().kind(),
        ErrorKind::InUse
    );
    assert_eq!(
        g.allocate_at(ram, 0x7fff_f000, 0x2000, fw)
            .unwrap_err()
            .kind(),
        ErrorKind::NoSpace,
        "crosses the end of low RAM"
    );
    assert_eq!(g.find(0xf_1234), Some(&a));
    assert_eq!(
        g.free(a.start, 0x1000).unwrap_err().kind(),
        ErrorKind::NotAllocated
    );
    assert_eq!(g.free_containing(0xf_1234).unwrap(), a);
    assert_eq!(
        g.free_containing(0xf_1234).unwrap_err().kind(),
        ErrorKind::NotAllocated
    );
    g.check().unwrap();
}

#[test]
fn owners_and_hot_unplug() {
    let mut g = q35();
    let mmio32 = g.region("mmio32").unwrap();
    let mmio64 = g.region("mmio64").unwrap();
    let gsi = g.pool("gsi").unwrap();
    for dev in 1..=3 {
        for b in 0..6u8 {
            let region = if b % 2 == 0 { mmio32 } else { mmio64 };
            g.allocate(region, &Request::bar(0x4000 << b), bar(dev, b))
                .unwrap();
        }
        g.allocate_id(gsi, IdPick::Next, Owner::Device(DeviceId(dev)))
            .unwrap();
    }
    assert_eq!(g.owned_by(bar(2, 3)).count(), 1);
    let freed = g.free_device(DeviceId(2)).unwrap();
    assert_eq!(freed.len(), 6);
    assert!(freed.iter().all(|a| a.owner.device() == Some(DeviceId(2))));
    assert_eq!(g.allocations().count(), 12);
    assert_eq!(g.ids(gsi).count(), 2);
    assert_eq!(
        g.free_device(DeviceId(2)).unwrap_err().kind(),
        ErrorKind::NotAllocated
    );
    assert_eq!(g.free_owner(bar(1, 0)).unwrap().len(), 1);
    g.check().unwrap();
}

#[test]
fn ids_by_next_fit_lowest_and_number() {
    let mut g = q35();
    let gsi = g.pool("gsi").unwrap();
    let o = Owner::label("legacy").unwrap();
    for irq in 0..24 {
        assert_eq!(g.allocate_id(gsi, IdPick::Exactly(irq), o).unwrap(), irq);
    }
    assert_eq!(
        g.allocate_id(gsi, IdPick::Exactly(4), o)
            .unwrap_err()
            .kind(),
        ErrorKind::InUse
    );
    assert_eq!(
        g.allocate_id(gsi, IdPick::Exactly(5000), o)
            .unwrap_err()
            .kind(),
        ErrorKind::BadRequest
    );
    let a = g.allocate_id(gsi, IdPick::Next, o).unwrap();
    let b = g.allocate_id(gsi, IdPick::Next, o).unwrap();
    assert_eq!((a, b), (24, 25));
    g.free_id(gsi, a).unwrap();
    g.free_id(gsi, 3).unwrap();
    assert_eq!(
        g.allocate_id(gsi, IdPick::Next, o).unwrap(),
        26,
        "next fit does not reuse at once"
    );
    assert_eq!(g.allocate_id(gsi, IdPick::Lowest, o).unwrap(), 3);
    assert_eq!(
        g.free_id(gsi, 3000).unwrap_err().kind(),
        ErrorKind::NotAllocated
    );
    let slots = g.pool("pci-slot").unwrap();
    for _ in 0..256 {
        g.allocate_id(slots, IdPick::Next, o).unwrap();
    }
    assert_eq!(
        g.allocate_id(slots, IdPick::Next, o).unwrap_err().kind(),
        ErrorKind::NoSpace
    );
    g.check().unwrap();
}

#[test]
fn a_refused_move_changes_nothing() {
    let mut g = q35();
    let mmio32 = g.region("mmio32").unwrap();
    let a = g.allocate(mmio32, &Request::bar(MIB), bar(1, 0)).unwrap();
    let b = g.allocate(mmio32, &Request::bar(MIB), bar(1, 1)).unwrap();
    let before = state(&g);
    // Taken by b.
    assert_eq!(
        g.relocate(a.start, b.start).unwrap_err().kind(),
        ErrorKind::InUse
    );
    // Off the BAR's alignment.
    assert_eq!(
        g.relocate(a.start, a.start + 0x1000).unwrap_err().kind(),
        ErrorKind::Constraint
    );
    // Overlapping its own range and b's.
    let c = g
        .allocate(mmio32, &Request::new(2 * MIB).align(MIB), bar(1, 2))
        .unwrap();
    let before_c = state(&g);
    assert_eq!(
        g.relocate(c.start, b.start).unwrap_err().kind(),
        ErrorKind::InUse
    );
    assert_eq!(state(&g), before_c);
    g.free(c.start, c.size).unwrap();
    assert_eq!(state(&g), before);
    // Into the ECAM window, which is not the region's.
    assert_eq!(
        g.relocate(a.start, 0xb000_0000).unwrap_err().kind(),
        ErrorKind::NoSpace
    );
    assert_eq!(state(&g), before);
    // A move that overlaps its own range succeeds.
    let c = g
        .allocate(
            mmio32,
            &Request::new(2 * MIB).align(MIB).top_down(),
            bar(1, 3),
        )
        .unwrap();
    let moved = g.relocate(c.start, c.start - MIB).unwrap();
    assert_eq!(
        (moved.start, moved.size, moved.owner),
        (c.start - MIB, c.size, c.owner)
    );
    assert_eq!(g.find(c.start + MIB), None);
    g.check().unwrap();
}

#[test]
fn bad_machines_are_refused() {
    let cases = [
        Machine::new(8),
        Machine::new(40)
            .region("a", &[(0, 0x1000)])
            .region("b", &[(0x800, 0x1000)]),
        Machine::new(40).region("a", &[(0, 0x1800)]),
        Machine::new(40).region("a", &[(0, 0)]),
        Machine::new(32).region("a", &[(0xffff_f000, 0x2000)]),
        Machine::new(40)
            .region("a", &[(0, 0x1000)])
            .region("a", &[(0x1000, 0x1000)]),
        Machine::new(40)
            .region("a", &[(0, 0x1000)])
            .reserve("r", 0, 0x1000),
        Machine::new(40).id_pool("p", u32::MAX, 2),
        Machine::new(40).region("", &[(0, 0x1000)]),
    ];
    for m in cases {
        assert_eq!(
            GuestLayout::new(m.clone()).unwrap_err().kind(),
            ErrorKind::BadMachine,
            "{m:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random calls: a refused one changes nothing, and the layout checks
    /// after every call.
    #[test]
    fn failed_calls_change_nothing(ops in proptest::collection::vec(op(), 1..120)) {
        let mut g = q35();
        for op in &ops {
            let before = state(&g);
            let answer = apply(&mut g, op);
            if answer.starts_with("Err") {
                prop_assert_eq!(&state(&g), &before, "{:?} -> {}", op, answer);
            }
            prop_assert!(g.check().is_ok(), "{:?}", g.check());
        }
    }
}
