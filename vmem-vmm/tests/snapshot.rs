//! Snapshots: a restored layout walks as the original and answers every
//! later call as the original does; malformed snapshots are refused with
//! `BadSnapshot`, never a panic.

mod common;

use common::{apply, op, q35, state};
use proptest::prelude::*;
use vmem_vmm::{ErrorKind, GuestLayout, MAGIC, Machine};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn restore_walks_and_answers_as_the_original(
        before in proptest::collection::vec(op(), 0..100),
        after in proptest::collection::vec(op(), 1..60),
    ) {
        let mut original = q35();
        for op in &before {
            apply(&mut original, op);
        }
        let bytes = original.save();
        let mut restored = GuestLayout::restore(&bytes).unwrap();
        prop_assert_eq!(state(&restored), state(&original));
        prop_assert_eq!(restored.save(), bytes.clone());
        prop_assert!(restored.check().is_ok());
        for op in &after {
            prop_assert_eq!(apply(&mut restored, op), apply(&mut original, op), "{:?}", op);
            prop_assert_eq!(state(&restored), state(&original));
        }
    }

    /// Any damage is refused or restores a layout that checks.
    #[test]
    fn damaged_snapshots_are_refused_cleanly(
        ops in proptest::collection::vec(op(), 0..40),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let mut g = q35();
        for op in &ops {
            apply(&mut g, op);
        }
        let mut bytes = g.save();
        for (at, x) in flips {
            let n = bytes.len();
            bytes[at % n] ^= x.max(1);
        }
        match GuestLayout::restore(&bytes) {
            Ok(restored) => prop_assert!(restored.check().is_ok()),
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::BadSnapshot),
        }
    }
}

#[cfg(feature = "std")]
#[test]
fn snapshots_go_through_io_streams() {
    let mut g = q35();
    apply(
        &mut g,
        &common::Op::Alloc {
            region: 2,
            size_log: 30,
            align_log: 30,
            how: 2,
            device: 7,
            bar: 1,
        },
    );
    let mut file = Vec::new();
    g.save_to(&mut file).unwrap();
    assert_eq!(file, g.save());
    let back = GuestLayout::restore_from(&mut file.as_slice()).unwrap();
    assert_eq!(state(&back), state(&g));
    let e = GuestLayout::restore_from(&mut &file[..10]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn every_truncation_is_refused() {
    let mut g = q35();
    for op in [
        common::Op::Alloc {
            region: 1,
            size_log: 20,
            align_log: 20,
            how: 0,
            device: 1,
            bar: 0,
        },
        common::Op::Id {
            pool: 0,
            how: 2,
            id: 4,
            device: 1,
        },
    ] {
        apply(&mut g, &op);
    }
    let bytes = g.save();
    for n in 0..bytes.len() {
        let e = GuestLayout::restore(&bytes[..n]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadSnapshot, "{n}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        GuestLayout::restore(&longer).unwrap_err().what(),
        "bytes are left after the snapshot"
    );
}

/// Hand-made snapshots, each wrong in one way, name what is wrong.
#[test]
fn each_check_names_its_problem() {
    let mut g = q35();
    let mmio32 = g.region("mmio32").unwrap();
    let a = g
        .allocate(
            mmio32,
            &vmem_vmm::Request::bar(0x10_0000),
            common::bar(1, 0),
        )
        .unwrap();
    let good = g.save();
    // The allocation record starts after the machine; find it by its start.
    let start_at = good
        .windows(8)
        .rposition(|w| w == a.start.to_le_bytes())
        .unwrap();
    let region_at = start_at - 2;
    let align_at = start_at + 16;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut b = good.clone();
                b[0] ^= 1;
                b
            },
            "not a vmem-vmm snapshot (bad magic)",
        ),
        (
            {
                let mut b = good.clone();
                b[MAGIC.len()] = 9;
                b
            },
            "unsupported snapshot version",
        ),
        (
            {
                let mut b = good.clone();
                b[region_at] = 7;
                b
            },
            "an allocation names no region",
        ),
        (
            {
                let mut b = good.clone();
                b[start_at..start_at + 8].copy_from_slice(&0xb000_0000u64.to_le_bytes());
                b
            },
            "an allocation is not inside one range of its region",
        ),
        (
            {
                let mut b = good.clone();
                b[start_at..start_at + 8].copy_from_slice(&(a.start + 0x1000).to_le_bytes());
                b
            },
            "an allocation's constraints are invalid or unmet",
        ),
        (
            {
                let mut b = good.clone();
                b[align_at..align_at + 8].copy_from_slice(&3u64.to_le_bytes());
                b
            },
            "an allocation's constraints are invalid or unmet",
        ),
        (
            {
                let mut b = good.clone();
                b[start_at + 1] = 0x12;
                b
            },
            "an allocation is off the quantum",
        ),
    ];
    for (bytes, what) in cases {
        let e = GuestLayout::restore(&bytes).unwrap_err();
        assert_eq!((e.kind(), e.what()), (ErrorKind::BadSnapshot, what));
    }
    // Overlap: two records over the same range.
    let b2 = g
        .allocate(
            mmio32,
            &vmem_vmm::Request::bar(0x10_0000),
            common::bar(1, 1),
        )
        .unwrap();
    let two = g.save();
    let second = two
        .windows(8)
        .position(|w| w == b2.start.to_le_bytes())
        .unwrap();
    let mut bytes = two.clone();
    bytes[second..second + 8].copy_from_slice(&a.start.to_le_bytes());
    assert_eq!(
        GuestLayout::restore(&bytes).unwrap_err().what(),
        "allocations overlap or are out of address order"
    );
    // A snapshot of another machine.
    assert_eq!(
        GuestLayout::restore_for(&Machine::q35(8 << 30), &good)
            .unwrap_err()
            .kind(),
        ErrorKind::BadSnapshot
    );
    assert!(GuestLayout::restore_for(&Machine::q35(4 << 30), &good).is_ok());
}
