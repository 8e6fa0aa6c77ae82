//! The readable view: each arena with a map of its spans and segments
//! (handles labelled), then each cache and reserve.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::{Interpreter, Object};
use crate::arena::{Segment, SegmentKind};

/// Columns in a span's map.
const MAP_WIDTH: usize = 64;
/// Segments listed per arena before the rest are summarised.
const LISTED: usize = 48;

pub(super) fn render(interpreter: &Interpreter) -> String {
    let mut out = String::new();
    let mut labels: BTreeMap<(usize, u64), &str> = BTreeMap::new();
    for (name, h) in &interpreter.handles {
        labels.insert((h.owner, h.addr), name);
    }
    let name_of = |index: usize| {
        interpreter
            .objects
            .get(index)
            .and_then(|o| o.as_ref())
            .map_or("?", |(n, _)| n.as_str())
    };
    for (index, (name, object)) in interpreter
        .objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.as_ref().map(|o| (i, o)))
    {
        match object {
            Object::Arena(slot) => {
                let arena = &slot.arena;
                let size = arena.size();
                let _ = writeln!(
                    out,
                    "arena {name}  quantum {:#x}  alloc {:#x}  free {:#x}  total {:#x}",
                    arena.quantum(),
                    size.alloc,
                    size.free,
                    size.total
                );
                let mut segments: Vec<Segment> = Vec::new();
                arena.walk(|s| segments.push(s));
                let mut listed = 0;
                for (i, seg) in segments.iter().enumerate() {
                    if let SegmentKind::Span { imported } = seg.kind {
                        let end = seg.start + seg.size;
                        let how = if imported { "imported span" } else { "span" };
                        let _ = writeln!(out, "  {how} [{:#x}, {end:#x})", seg.start);
                        let inside = segments[i + 1..]
                            .iter()
                            .take_while(|s| !matches!(s.kind, SegmentKind::Span { .. }));
                        let _ = writeln!(out, "  |{}|", map(seg, inside));
                        continue;
                    }
                    listed += 1;
                    if listed > LISTED {
                        continue;
                    }
                    let kind = if seg.kind == SegmentKind::Free {
                        "free"
                    } else {
                        "alloc"
                    };
                    let label = labels
                        .get(&(index, seg.start))
                        .map_or(String::new(), |h| format!("  {h}"));
                    let _ = writeln!(out, "    {:#x} +{:#x} {kind}{label}", seg.start, seg.size);
                }
                if listed > LISTED {
                    let _ = writeln!(out, "    ... {} more segments", listed - LISTED);
                }
                if let Some(qc) = arena.qcaches() {
                    for (size, s) in qc.stats().filter(|(_, s)| s.in_use > 0 || s.slabs > 0) {
                        let _ = writeln!(
                            out,
                            "  qcache {size:#x}  in use {}  slabs {}",
                            s.in_use, s.slabs
                        );
                    }
                }
            }
            Object::Cache(cache, over) => {
                let s = cache.stats();
                let _ = writeln!(
                    out,
                    "cache {name} on {}  object {:#x}  in use {}  slabs {} ({} objects each)",
                    name_of(*over),
                    cache.object_size(),
                    s.in_use,
                    s.slabs,
                    s.objects_per_slab,
                );
                let mut held: Vec<(&str, u64)> = interpreter
                    .handles
                    .iter()
                    .filter(|(_, h)| h.owner == index)
                    .map(|(n, h)| (n.as_str(), h.addr))
                    .collect();
                held.sort_by_key(|&(_, addr)| addr);
                for (handle, addr) in held.iter().take(LISTED) {
                    let _ = writeln!(out, "    {addr:#x} {handle}");
                }
            }
            Object::Reserve(reserve, over) => {
                let _ = writeln!(
                    out,
                    "reserve {name} of {}  available {} of {}",
                    name_of(*over),
                    reserve.available(),
                    reserve.capacity()
                );
            }
        }
    }
    out
}

/// A span as `MAP_WIDTH` columns: `#` where any integer is allocated, `.`
/// where all are free.
fn map<'a>(span: &Segment, segments: impl Iterator<Item = &'a Segment>) -> String {
    let mut cells = [b'.'; MAP_WIDTH];
    let cell = |x: u64| {
        ((u128::from(x - span.start) * MAP_WIDTH as u128) / u128::from(span.size)) as usize
    };
    for seg in segments.filter(|s| s.kind == SegmentKind::Alloc) {
        for c in cells
            .iter_mut()
            .take(cell(seg.start + seg.size - 1) + 1)
            .skip(cell(seg.start))
        {
            *c = b'#';
        }
    }
    cells.iter().map(|&b| b as char).collect()
}
