//! What the layout tests share: a q35 guest, owners, the observable state,
//! and random operations.
#![allow(dead_code)]

use proptest::prelude::*;
use vmem_vmm::{Allocation, DeviceId, GuestLayout, IdPick, Machine, Owner, Request};

pub const MIB: u64 = 1 << 20;

pub fn q35() -> GuestLayout {
    GuestLayout::new(Machine::q35(4 << 30)).unwrap()
}

pub fn bar(device: u32, bar: u8) -> Owner {
    Owner::Bar {
        device: DeviceId(device),
        bar,
    }
}

/// Everything observable: walks, allocations, IDs.
pub type State = (
    Vec<vmem_vmm::Segment>,
    Vec<Allocation>,
    Vec<Vec<(u32, Owner)>>,
);

/// The observable state of `g`.
pub fn state(g: &GuestLayout) -> State {
    let mut walk = Vec::new();
    g.walk(|s| walk.push(s));
    let pools = (0..g.machine().pools.len() as u16)
        .map(|p| g.ids(vmem_vmm::PoolId(p)).collect())
        .collect();
    (walk, g.allocations().copied().collect(), pools)
}

#[derive(Clone, Debug)]
pub enum Op {
    Alloc {
        region: u16,
        size_log: u8,
        align_log: u8,
        how: u8,
        device: u32,
        bar: u8,
    },
    At {
        region: u16,
        page: u64,
        pages: u64,
        device: u32,
    },
    Free {
        pick: usize,
        wrong_size: bool,
    },
    Containing {
        addr: u64,
    },
    Unplug {
        device: u32,
    },
    Move {
        pick: usize,
        delta_pages: i64,
    },
    Id {
        pool: u16,
        how: u8,
        id: u32,
        device: u32,
    },
    FreeId {
        pool: u16,
        id: u32,
    },
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..4, 12u8..32, 0u8..32, 0u8..5, 0u32..8, 0u8..6).prop_map(
            |(region, size_log, align_log, how, device, bar)| Op::Alloc {
                region,
                size_log,
                align_log,
                how,
                device,
                bar
            }
        ),
        (0u16..3, 0u64..0x10_0000, 1u64..64, 0u32..8).prop_map(|(region, page, pages, device)| {
            Op::At {
                region,
                page,
                pages,
                device,
            }
        }),
        (any::<usize>(), any::<bool>())
            .prop_map(|(pick, wrong_size)| Op::Free { pick, wrong_size }),
        (0u64..(1 << 40)).prop_map(|addr| Op::Containing { addr }),
        (0u32..8).prop_map(|device| Op::Unplug { device }),
        (any::<usize>(), -64i64..64).prop_map(|(pick, delta_pages)| Op::Move { pick, delta_pages }),
        (0u16..3, 0u8..3, 0u32..1100, 0u32..8).prop_map(|(pool, how, id, device)| Op::Id {
            pool,
            how,
            id,
            device
        }),
        (0u16..3, 0u32..1100).prop_map(|(pool, id)| Op::FreeId { pool, id }),
    ]
}

/// Applies `op`, returning what it answered (for comparing layouts).
pub fn apply(g: &mut GuestLayout, op: &Op) -> String {
    use vmem_vmm::{Placement, PoolId, RegionId};
    let pick = |g: &GuestLayout, i: usize| {
        let n = g.allocations().count();
        (n > 0).then(|| *g.allocations().nth(i % n).unwrap())
    };
    match *op {
        Op::Alloc {
            region,
            size_log,
            align_log,
            how,
            device,
            bar: b,
        } => {
            let size = 1u64 << size_log;
            let mut r = Request::new(size).align(if align_log >= 12 { 1 << align_log } else { 0 });
            r = match how {
                0 => r.placed(Placement::Fit),
                1 => r.bottom_up(),
                2 => r.top_down(),
                3 => r.below_4g(),
                _ => r.boundary(size.max(1 << 22)),
            };
            format!("{:?}", g.allocate(RegionId(region), &r, bar(device, b)))
        }
        Op::At {
            region,
            page,
            pages,
            device,
        } => {
            format!(
                "{:?}",
                g.allocate_at(
                    RegionId(region),
                    page << 12,
                    pages << 12,
                    Owner::Device(DeviceId(device))
                )
            )
        }
        Op::Free {
            pick: i,
            wrong_size,
        } => match pick(g, i) {
            Some(a) => format!(
                "{:?}",
                g.free(a.start, if wrong_size { a.size + 0x1000 } else { a.size })
            ),
            None => "none".into(),
        },
        Op::Containing { addr } => format!("{:?}", g.free_containing(addr)),
        Op::Unplug { device } => format!("{:?}", g.free_device(DeviceId(device))),
        Op::Move {
            pick: i,
            delta_pages,
        } => match pick(g, i) {
            Some(a) => {
                let to = a.start.wrapping_add_signed(delta_pages * 0x1000);
                format!("{:?}", g.relocate(a.start, to))
            }
            None => "none".into(),
        },
        Op::Id {
            pool,
            how,
            id,
            device,
        } => {
            let pick = match how {
                0 => IdPick::Next,
                1 => IdPick::Lowest,
                _ => IdPick::Exactly(id),
            };
            format!(
                "{:?}",
                g.allocate_id(PoolId(pool), pick, Owner::Device(DeviceId(device)))
            )
        }
        Op::FreeId { pool, id } => format!("{:?}", g.free_id(PoolId(pool), id)),
    }
}
