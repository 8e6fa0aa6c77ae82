//! `vmem_vmm::GuestLayout::restore` on hostile bytes.
//!
//! The first input byte picks how the rest is used: even, as a snapshot
//! itself; odd, as damage (byte offsets and XOR masks) done to a valid
//! snapshot of a q35 guest with BARs, reserved ranges, owners of every
//! kind and IDs, so the fuzzer reaches the deep checks at once. Either way
//! restore must answer `Ok` or `BadSnapshot`, never panic; a layout it
//! accepts must pass `check` and save to exactly the bytes it came from
//! (the format is canonical), and take a few more calls without panicking.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmem_vmm::{DeviceId, ErrorKind, GuestLayout, IdPick, Machine, Owner, Request};

fn sample() -> &'static [u8] {
    static SAMPLE: OnceLock<Vec<u8>> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let mut g = GuestLayout::new(Machine::q35(4 << 30)).expect("q35 is a valid machine");
        let (mmio32, mmio64) = (g.region("mmio32").unwrap(), g.region("mmio64").unwrap());
        let gsi = g.pool("gsi").unwrap();
        for d in 0..4u32 {
            let bar = |b| Owner::Bar {
                device: DeviceId(d),
                bar: b,
            };
            g.allocate(mmio32, &Request::bar(0x10_0000), bar(0))
                .unwrap();
            g.allocate(mmio64, &Request::bar(1 << 30).top_down(), bar(2))
                .unwrap();
            g.allocate_id(gsi, IdPick::Next, Owner::Device(DeviceId(d)))
                .unwrap();
        }
        let label = Owner::label("firmware").unwrap();
        g.allocate(
            mmio32,
            &Request::new(0x3000)
                .align(0x10000)
                .phase(0x1000)
                .boundary(0x100000),
            label,
        )
        .unwrap();
        g.save()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut bytes = sample().to_vec();
        for pair in rest.chunks(3) {
            if let [hi, lo, mask] = *pair {
                let at = usize::from(u16::from_le_bytes([lo, hi])) % bytes.len();
                bytes[at] ^= mask;
            }
        }
        bytes
    };
    match GuestLayout::restore(&bytes) {
        Ok(mut g) => {
            g.check().expect("a restored layout checks");
            assert_eq!(g.save(), bytes, "save after restore gives other bytes");
            for region in 0..g.machine().regions.len() as u16 {
                let _ = g.allocate(
                    vmem_vmm::RegionId(region),
                    &Request::bar(0x1000).top_down(),
                    Owner::Device(DeviceId(9)),
                );
            }
            let _ = g.free_device(DeviceId(0));
            g.check()
                .expect("the restored layout checks after more calls");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::BadSnapshot, "{e}"),
    }
});
