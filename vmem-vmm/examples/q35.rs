//! A q35-like guest laid out with vmem-vmm: 4 GiB of RAM split around the
//! 32-bit hole, 64 PCI devices with 6 BARs each (32- and 64-bit, of mixed
//! sizes), the 24 legacy IRQs taken by number, MSI routes by next fit, hot
//! unplug and plug, a BAR moved, the map printed as a table, a save and
//! restore, and an SVG of the guest-physical map.
//!
//! `cargo run -p vmem-vmm --example q35 [SVG]` (the SVG goes to
//! `target/q35-map.svg` unless a path is given).

use std::fmt::Write as _;

use vmem_vmm::{
    Allocation, DeviceId, GuestLayout, IdPick, Machine, MapEntry, Owner, RegionId, Request,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// A device's six BARs: (64-bit, size). Even BARs are 32-bit MMIO (4 KiB to
/// 16 MiB), odd ones 64-bit prefetchable (1 MiB to 4 GiB), chosen by a
/// small deterministic generator so every run lays out the same guest.
fn bars(device: u32) -> [(bool, u64); 6] {
    let mut x = u64::from(device).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    core::array::from_fn(|b| {
        if b % 2 == 0 {
            (false, (4 * KIB) << (next() % 13))
        } else {
            (true, MIB << (next() % 13))
        }
    })
}

fn human(bytes: u64) -> String {
    let (unit, name) = match bytes {
        b if b >= GIB => (GIB, "GiB"),
        b if b >= MIB => (MIB, "MiB"),
        _ => (KIB, "KiB"),
    };
    if bytes.is_multiple_of(unit) {
        format!("{} {name}", bytes / unit)
    } else {
        format!("{:.1} {name}", bytes as f64 / unit as f64)
    }
}

fn plug(g: &mut GuestLayout, device: u32) -> vmem_vmm::Result<(u32, Vec<u32>)> {
    let (mmio32, mmio64) = (g.region("mmio32")?, g.region("mmio64")?);
    let (slots, gsi) = (g.pool("pci-slot")?, g.pool("gsi")?);
    let dev = DeviceId(device);
    let slot = g.allocate_id(slots, IdPick::Lowest, Owner::Device(dev))?;
    for (bar, (wide, size)) in bars(device).into_iter().enumerate() {
        let owner = Owner::Bar {
            device: dev,
            bar: bar as u8,
        };
        // 32-bit BARs bottom-up in the hole, 64-bit ones top-down in the
        // high window, each aligned to its size.
        let (region, request) = if wide {
            (mmio64, Request::bar(size).top_down())
        } else {
            (mmio32, Request::bar(size))
        };
        if let Err(e) = g.allocate(region, &request, owner) {
            // Plugging is all or nothing: give back what the device got.
            let _ = g.free_device(dev);
            return Err(e);
        }
    }
    let vectors = 1 + device % 4;
    let msi = (0..vectors)
        .map(|_| g.allocate_id(gsi, IdPick::Next, Owner::Device(dev)))
        .collect::<vmem_vmm::Result<Vec<u32>>>()?;
    Ok((slot, msi))
}

fn map_table(g: &GuestLayout) -> String {
    let mut out = String::new();
    writeln!(out, "{:<27} {:>10}  {:<10} use", "range", "size", "what").unwrap();
    for (start, size, entry) in g.map() {
        let (what, usage) = match entry {
            MapEntry::Region(r) => {
                let in_range: u64 = g
                    .allocations()
                    .filter(|a| a.region == r && a.start >= start && a.end() <= start + size)
                    .map(|a| a.size)
                    .sum();
                let n = g
                    .allocations()
                    .filter(|a| a.region == r && a.start >= start && a.end() <= start + size)
                    .count();
                (
                    g.region_name(r).unwrap_or("?").to_string(),
                    format!("{n} allocations, {} used", human(in_range)),
                )
            }
            MapEntry::Reserved(i) => (
                g.reserved_name(i)
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                "reserved".into(),
            ),
            MapEntry::Unassigned => ("-".into(), String::new()),
        };
        writeln!(
            out,
            "{:#013x}-{:#013x} {:>10}  {:<10} {}",
            start,
            start + size,
            human(size),
            what,
            usage
        )
        .unwrap();
    }
    out
}

/// The guest-physical map as an SVG: one row per region range and
/// reserved range (each drawn to its own scale), allocations as boxes
/// coloured by kind.
fn svg(g: &GuestLayout) -> String {
    let rows: Vec<(u64, u64, MapEntry)> = g
        .map()
        .into_iter()
        .filter(|e| e.2 != MapEntry::Unassigned)
        .collect();
    let (width, row_h, left) = (900.0, 26.0, 250.0);
    let height = 40.0 + rows.len() as f64 * row_h;
    let mut s = String::new();
    writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="monospace" font-size="11">"#, width + left + 20.0).unwrap();
    writeln!(s, r#"<text x="10" y="20" font-size="14">q35 guest-physical map (each row to its own scale)</text>"#).unwrap();
    for (i, &(start, size, entry)) in rows.iter().enumerate() {
        let y = 30.0 + i as f64 * row_h;
        let name = match entry {
            MapEntry::Region(r) => g.region_name(r).unwrap_or("?").to_string(),
            MapEntry::Reserved(r) => g
                .reserved_name(r)
                .map(|l| l.to_string())
                .unwrap_or_default(),
            MapEntry::Unassigned => String::new(),
        };
        writeln!(
            s,
            r#"<text x="10" y="{}">{name} {start:#x} {}</text>"#,
            y + 15.0,
            human(size)
        )
        .unwrap();
        let fill = if matches!(entry, MapEntry::Reserved(_)) {
            "#ddd"
        } else {
            "#f4f4f4"
        };
        writeln!(s, r##"<rect x="{left}" y="{y}" width="{width}" height="{}" fill="{fill}" stroke="#999"/>"##, row_h - 6.0).unwrap();
        let scale = width / size as f64;
        for a in g
            .allocations()
            .filter(|a| a.start >= start && a.end() <= start + size)
        {
            let colour = match a.owner {
                Owner::Bar { bar, .. } if bar % 2 == 0 => "#4a90d9",
                Owner::Bar { .. } => "#e07b39",
                Owner::Device(_) => "#7bb661",
                Owner::Label(_) => "#9b59b6",
            };
            let x = left + (a.start - start) as f64 * scale;
            let w = (a.size as f64 * scale).max(0.5);
            writeln!(s, r#"<rect x="{x:.2}" y="{}" width="{w:.2}" height="{}" fill="{colour}"><title>{} {:#x} {}</title></rect>"#, y + 1.0, row_h - 8.0, a.owner, a.start, human(a.size)).unwrap();
        }
    }
    s.push_str("</svg>\n");
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut g = GuestLayout::new(Machine::q35(4 * GIB))?;
    let ram = g.region("ram")?;
    let gsi = g.pool("gsi")?;

    // RAM: 2 GiB below the hole, 2 GiB from 4 GiB.
    g.allocate_at(ram, 0, 2 * GIB, Owner::label("ram-low")?)?;
    g.allocate_at(ram, 4 * GIB, 2 * GIB, Owner::label("ram-high")?)?;

    // The 24 IOAPIC pins, by number.
    let legacy = Owner::label("ioapic-pin")?;
    for pin in 0..24 {
        g.allocate_id(gsi, IdPick::Exactly(pin), legacy)?;
    }

    // 64 PCI devices, 6 BARs each, and 1 to 4 MSI routes each.
    for device in 0..64 {
        plug(&mut g, device)?;
    }
    let bars_placed = g
        .allocations()
        .filter(|a| matches!(a.owner, Owner::Bar { .. }))
        .count();
    println!(
        "q35: 4 GiB RAM, 64 devices, {bars_placed} BARs placed, {} GSIs taken",
        g.ids(gsi).count()
    );

    // Hot-unplug devices 10 to 19, then plug 10 new ones: they reuse the
    // freed slots (lowest free) and the freed BAR ranges.
    for device in 10..20 {
        let freed = g.free_device(DeviceId(device))?;
        assert_eq!(freed.len(), 6);
    }
    for device in 100..110 {
        let (slot, msi) = plug(&mut g, device)?;
        if device == 100 {
            println!("hotplug: device 100 got slot {slot}, MSI routes {msi:?}");
        }
    }

    // A guest reprograms a BAR: moved within the 32-bit window, and a move
    // onto another device's BAR is refused with nothing changed.
    let mmio32 = g.region("mmio32")?;
    let victim: Allocation = *g
        .owned_by(Owner::Bar {
            device: DeviceId(0),
            bar: 0,
        })
        .next()
        .expect("device 0 has BAR 0");
    let other = *g
        .owned_by(Owner::Bar {
            device: DeviceId(1),
            bar: 0,
        })
        .next()
        .expect("device 1 has BAR 0");
    let refused = g.relocate(victim.start, other.start).unwrap_err();
    println!("move dev 0 bar 0 onto dev 1 bar 0: refused ({refused})");
    let spot = g.allocate(
        mmio32,
        &Request::bar(victim.size).top_down(),
        Owner::label("probe")?,
    )?;
    g.free(spot.start, spot.size)?;
    let moved = g.relocate(victim.start, spot.start)?;
    println!(
        "move dev 0 bar 0: {:#x} -> {:#x}",
        victim.start, moved.start
    );

    println!();
    print!("{}", map_table(&g));
    println!();
    println!("device 0..3 BARs:");
    for device in 0..4 {
        let mut line = format!("  dev {device}:");
        for bar in 0..6 {
            for a in g.owned_by(Owner::Bar {
                device: DeviceId(device),
                bar,
            }) {
                write!(line, " {bar}:{:#x}+{}", a.start, human(a.size))?;
            }
        }
        println!("{line}");
    }
    let region_use = |r: RegionId| {
        g.usage(r)
            .map(|(used, total)| format!("{} of {}", human(used), human(total)))
    };
    println!(
        "mmio32 {}, mmio64 {}",
        region_use(mmio32)?,
        region_use(g.region("mmio64")?)?
    );

    // Save and restore.
    let bytes = g.save();
    let restored = GuestLayout::restore(&bytes)?;
    restored.check()?;
    assert!(restored.allocations().eq(g.allocations()));
    println!(
        "snapshot: {} bytes for {} allocations; restored and checked",
        bytes.len(),
        g.allocations().count()
    );

    g.check()?;
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{dir}/q35-map.svg")
    });
    std::fs::write(&path, svg(&g))?;
    println!("wrote {path}");
    Ok(())
}
