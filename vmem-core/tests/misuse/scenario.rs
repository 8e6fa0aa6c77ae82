//! The scenario interpreter: each case is one bad line run after a setup
//! script, and the kind is the `error.kind` of its JSON line.

use vmem_core::scenario::Interpreter;

use crate::harness::Outcome;
use crate::{ALL_KINDS, Case};

/// What every scenario case starts from (shown on the page).
pub const WORLD: &str = "\
arena a quantum=4K base=1M size=1M
arena b quantum=1 base=100 size=100
arena p quantum=4K base=16M size=1M
arena k quantum=4K source=p import=64K
cache c size=64 arena=a
cache d size=32 arena=a
reserve r cache=c count=2
h = alloc a 8K
x = xalloc a 4K align=64K
id = alloc b 1
kh = alloc k 4K
o = cache_alloc c
od = cache_alloc d
ro = reserve_alloc r
gone = alloc a 4K
free a gone
";

/// The layer's cases, in the page's order, one a row: the id after
/// `scenario/`, the error kind, and the bad line, with what the page says
/// about it after `#` (a comment, as in a scenario).
const CASES: &str = "\
unknown-command             Parse            frobnicate a
bad-number                  Parse            alloc a 12q
number-too-large            Parse            alloc a 18446744073709551616  # 2^64
suffix-overflow             Parse            alloc a 16777216T  # the suffix passes 2^64
bad-name                    Parse            arena 9lives quantum=4K
bad-handle-name             Parse            h-1! = alloc a 4K
missing-option              Parse            arena e  # no quantum
unknown-option              Parse            alloc a 4K align=8K  # alloc takes no options
option-twice                Parse            xalloc a 4K align=8K align=16K
positional-after-option     Parse            xalloc a align=8K 4K
too-few-arguments           Parse            alloc a
too-many-arguments          Parse            walk a b
handle-on-non-allocation    Parse            w = walk a
policy-twice                Parse            alloc a 4K best next
base-without-size           Parse            arena e quantum=4K base=0
import-without-source       Parse            arena e quantum=4K import=64K
fail-without-import         Parse            fail k export
magazine-too-large          Parse            cache e size=64 arena=a magazine=0x100000000
reserve-too-large           Parse            reserve e cache=c count=2M
unknown-arena               UnknownArena     alloc nosuch 4K
unknown-source              UnknownArena     arena e quantum=4K source=nosuch
cache-over-unknown-arena    UnknownArena     cache e size=64 arena=nosuch
alloc-from-a-cache          UnknownArena     alloc c 64  # c is a cache, not an arena
destroy-unknown             UnknownArena     destroy nosuch
stats-unknown               UnknownArena     stats nosuch
unknown-cache               UnknownCache     cache_alloc nosuch
cache-alloc-from-arena      UnknownCache     cache_alloc a  # a is an arena
reserve-over-unknown-cache  UnknownCache     reserve e cache=nosuch count=1
unknown-reserve             UnknownCache     reserve_alloc nosuch
unknown-handle              UnknownHandle    free a nosuch
freed-handle                UnknownHandle    free a gone  # gone was freed
cache-free-unknown-handle   UnknownHandle    cache_free c nosuch
duplicate-arena             DuplicateName    arena a quantum=4K
cache-named-like-arena      DuplicateName    cache a size=64 arena=a
live-handle-reused          DuplicateName    h = alloc a 4K  # h is live
free-xalloc-handle          BadFree          free a x  # x came from xalloc
xfree-alloc-handle          BadFree          xfree a h  # h came from alloc
free-other-arenas-handle    BadFree          free a id  # id is an allocation of arena b
free-by-wrong-size          BadFree          free a 0x100000 4K  # h at 0x100000 has 8K
cache-free-arena-handle     BadFree          cache_free c h  # h came from alloc
cache-free-wrong-cache      BadFree          cache_free d o  # o came from cache c
reserve-free-cache-handle   BadFree          reserve_free r o  # o came from cache_alloc
destroy-arena-with-cache    InUse            destroy a  # caches c and d are built on it
destroy-arena-live          InUse            destroy b  # id is live
destroy-source              InUse            destroy p  # arena k imports from it
destroy-cache-live          InUse            destroy d  # od is live
destroy-cache-with-reserve  InUse            destroy c  # reserve r is built on it
destroy-reserve-out         InUse            destroy r  # ro is out
alloc-zero                  ZeroSize         alloc a 0
cache-size-zero             ZeroSize         cache e size=0 arena=a
reserve-count-zero          ZeroSize         reserve e cache=c count=0
add-misaligned              Misaligned       add a 0x400800 4K
add-overlap                 Overlap          add a 0x180000 4K
add-overflow                Overflow         add a 0xfffffffffffff000 8K
quantum-not-power-of-two    BadConstraint    arena e quantum=3
xalloc-bad-align            BadConstraint    xalloc a 4K align=12K
xalloc-overconstrained      Overconstrained  xalloc a 8K nocross=4K
alloc-too-large             NoSpace          alloc a 2M
import-too-large            ImportFailed     alloc k 2M  # its source p has 1M
free-size-zero              ZeroSize         free a 0x100000 0
contains-zero               ZeroSize         contains a 0x100000 0
qcache-zero                 ZeroSize         arena e quantum=4K qcache=0
qcache-too-large            BadConstraint    arena e quantum=4K qcache=68K  # 17 quanta
cache-bad-align             BadConstraint    cache e size=64 align=3 arena=a
fail-unknown-arena          UnknownArena     fail nosuch import
walk-a-cache                UnknownArena     walk c  # c is a cache
xalloc-window               Overconstrained  xalloc a 8K min=0x150000 max=0x151000
xalloc-min-max              BadConstraint    xalloc a 4K min=0x150000 max=0x150000
xalloc-phase-misaligned     Misaligned       xalloc a 4K align=16K phase=2K
";

/// The layer's cases, read from `CASES`.
pub fn cases() -> Vec<Case> {
    CASES
        .lines()
        .map(|row| {
            let (row, note) = match row.split_once(" # ") {
                Some((row, note)) => (row, Some(note)),
                None => (row, None),
            };
            let mut fields = row.split_whitespace();
            let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
                panic!("scenario case without a name and a kind: {row:?}");
            };
            let line = fields.collect::<Vec<_>>().join(" ");
            let expect = ALL_KINDS
                .into_iter()
                .find(|k| k.name() == kind)
                .unwrap_or_else(|| panic!("{name}: no error kind {kind}"));
            let bad = match note {
                Some(note) => format!("`{line}` ({note})"),
                None => format!("`{line}`"),
            };
            Case::new(format!("scenario/{name}"), bad, expect, move || {
                scenario(&line)
            })
        })
        .collect()
}

/// Runs `WORLD`, then `line`, and reports the line's error kind and whether
/// the interpreter's state moved.
fn scenario(line: &str) -> Outcome {
    let mut interpreter = Interpreter::new();
    for (i, setup) in WORLD.lines().enumerate() {
        let out = interpreter.run_line(i + 1, setup).unwrap_or_default();
        assert!(out.contains("\"ok\":true"), "setup line failed: {out}");
    }
    let before = interpreter.render();
    let out = interpreter.run_line(100, line).unwrap_or_default();
    let result = if out.contains("\"ok\":true") {
        Ok(())
    } else {
        let kind = out
            .split_once("\"kind\":\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(kind, _)| kind)
            .unwrap_or("");
        Err(ALL_KINDS
            .into_iter()
            .find(|k| k.name() == kind)
            .unwrap_or_else(|| panic!("no error kind in {out}")))
    };
    let after = interpreter.render();
    let changed = if after == before {
        Vec::new()
    } else {
        vec![format!("before:\n{before}\n  after:\n{after}")]
    };
    let check = interpreter.run_line(101, "check").unwrap_or_default();
    let broken = (!check.contains("\"ok\":true")).then_some(check);
    Outcome {
        result,
        changed,
        broken,
    }
}
