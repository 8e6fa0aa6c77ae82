//! # vmem-vmm: a guest's physical address space for VMMs
//!
//! A virtual machine monitor lays out each guest's physical address space
//! (RAM below and above the 32-bit hole, 32- and 64-bit MMIO windows, PCI
//! BARs, fixed devices) and hands out numbers (GSIs, MSI routes, PCI
//! slots). This crate does both on vmem arenas ([`vmem_core`]).
//!
//! A [`Machine`] describes the guest: its address bits, its **regions**
//! (named sets of ranges: `ram`, `mmio32`, `mmio64`), the **reserved**
//! ranges of fixed devices (IOAPIC, LAPIC, the PCIe configuration window,
//! firmware) and its **ID pools**. [`GuestLayout::new`] checks it and
//! builds a root arena over `[0, 2^phys_bits)` holding every region range
//! and reserved range, so the root's walk ([`GuestLayout::map`]) is the
//! machine's map, and one arena per region and per pool.
//!
//! The verbs:
//! - [`GuestLayout::allocate`] places a [`Request`] in a region: alignment
//!   (a BAR's natural alignment: [`Request::bar`]), phase, a boundary not
//!   to cross, a window ([`Request::below_4g`]), and [`Placement`]: the
//!   smallest free range that holds it (vmem's best fit), vmem's O(1)
//!   instant fit, the lowest address (bottom-up) or the highest (top-down);
//!   [`GuestLayout::allocate_at`] takes a given range;
//! - [`GuestLayout::free`] (an exact range), [`GuestLayout::free_containing`]
//!   (the allocation holding an address), [`GuestLayout::free_owner`] and
//!   [`GuestLayout::free_device`] (everything an owner or device holds, IDs
//!   included, as on hot-unplug);
//! - every allocation and ID carries an [`Owner`]: a device's BAR, a device,
//!   or a label;
//! - [`GuestLayout::allocate_id`] takes an ID by next fit, lowest free, or
//!   exactly the one asked for ([`IdPick`]);
//! - [`GuestLayout::relocate`] moves an allocation (a guest reprogramming a
//!   BAR) transactionally: the target must meet the allocation's recorded
//!   rules and be free (its own range aside), and on any failure nothing
//!   changes;
//! - [`GuestLayout::save`] and [`GuestLayout::restore`]: the snapshot format
//!   below.
//!
//! Every call returns a [`Result`] with an [`ErrorKind`]; a failed call
//! changes nothing, and [`GuestLayout::check`] verifies the arenas and the
//! records agree. [`compat`] has drop-in adapters for rust-vmm's
//! `vm-allocator` 0.1.
//!
//! The crate is `no_std` (it needs `alloc`): the arenas' boundary tags and
//! the records come from the heap; `ci/test` builds it for
//! `x86_64-unknown-none`. The `std` feature adds
//! [`GuestLayout::save_to`] and [`GuestLayout::restore_from`], the snapshot
//! written to and read from `std::io` streams.
//!
//! ## Example
//!
//! ```
//! use vmem_vmm::{DeviceId, GuestLayout, IdPick, Machine, Owner, Request};
//!
//! # fn main() -> vmem_vmm::Result<()> {
//! let mut guest = GuestLayout::new(Machine::q35(4 << 30))?;
//! let mmio64 = guest.region("mmio64")?;
//! let nic = DeviceId(3);
//! // A 256 MiB 64-bit BAR, naturally aligned, placed top-down.
//! let bar = guest.allocate(mmio64, &Request::bar(256 << 20).top_down(), Owner::Bar { device: nic, bar: 2 })?;
//! assert_eq!(bar.start % (256 << 20), 0);
//! let gsi = guest.pool("gsi")?;
//! let irq = guest.allocate_id(gsi, IdPick::Exactly(5), Owner::Device(nic))?;
//! // Saved and restored, the layout is the same.
//! let copy = GuestLayout::restore(&guest.save())?;
//! assert_eq!(copy.find(bar.start), guest.find(bar.start));
//! // Hot-unplug: the BAR and the GSI go back.
//! guest.free_device(nic)?;
//! assert!(guest.id_owner(gsi, irq).is_none());
//! guest.check()?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Snapshot format, version 1
//!
//! A hand-specified binary format rather than serde: the crate is `no_std`
//! with no serialization dependency, the format records what the layout
//! *means* (the machine, allocations with owners and rules, ID state)
//! rather than any arena's internals, so it survives changes to vmem-core,
//! and every field is one restore can check. It is compact: 64 bytes per
//! allocation with a BAR owner. Integers are little-endian; a *name* is one
//! length byte (1 to 31) and that many bytes of UTF-8; an *owner* is a
//! kind byte then `u32 device, u8 bar` (0, a BAR), `u32 device` (1, a
//! device) or a name (2, a label).
//!
//! ```text
//! magic     8 bytes  "VMEMVMM\0"
//! version   u16      1
//! machine   u8 phys_bits, u64 quantum,
//!           u16 regions,  each: name, u16 ranges, each: u64 start, u64 size
//!           u16 reserved, each: name, u64 start, u64 size
//!           u16 pools,    each: name, u32 base, u32 count
//! allocs    u32 count, each in address order:
//!           u16 region, u64 start, size, align, phase, boundary, min, max
//!           (max u64::MAX: no limit), owner
//! pools     for each pool of the machine, in order:
//!           u32 next-fit rotor, u32 taken, each in ID order: u32 id, owner
//! ```
//!
//! Nothing may follow. [`GuestLayout::restore`] lists what it checks.

#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod compat;
mod error;
mod layout;
mod machine;
mod owner;
mod request;
mod snapshot;

pub use error::{Error, ErrorKind, Result};
pub use layout::{Allocation, GuestLayout, IdPick, MapEntry, PoolId, RegionId};
pub use machine::{FOUR_GIB, IdPoolSpec, Machine, RegionSpec, ReservedSpec};
pub use owner::{DeviceId, LABEL_MAX, Label, Owner};
pub use request::{Placement, Request};
pub use snapshot::{MAGIC, VERSION};
/// What [`GuestLayout::walk`] reports, from vmem-core.
pub use vmem_core::{Segment, SegmentKind};
