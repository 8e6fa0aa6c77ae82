//! Random scenarios give the same bytes natively and in the Wasm module.
//!
//! The scripts mix every command of the scenario language with plausible
//! arguments (names that exist, sizes in quanta, live handles) and
//! implausible ones (unknown names, zero, misaligned and 64-bit-overflowing
//! numbers, stray options, garbage lines), so both the success paths and
//! every error path run on both engines. What differs between a 64-bit host
//! and wasm32 (`usize` width, allocator, stack) shows up here first.

use proptest::prelude::*;
use proptest::sample::select;
use wasm_harness::{run_native, run_wasm};

/// Names: mostly of things the preamble makes, sometimes of others.
const ARENAS: (&[&str], &[&str]) = (&["a", "b", "kid"], &["c", "nope"]);
const CACHES: (&[&str], &[&str]) = (&["c1"], &["c2", "nocache"]);
const RESERVES: (&[&str], &[&str]) = (&["r1"], &["r2"]);
const HANDLES: (&[&str], &[&str]) = (
    &["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"],
    &["x", "h_1.2-z"],
);

/// What every script starts with, so that most commands have something to
/// work on: pages, IDs, an importing arena with quantum caches, an object
/// cache and a reserve.
const PREAMBLE: &str = "\
arena a quantum=4K base=0x100000 size=4M
arena b quantum=1 base=0 size=1024
arena kid quantum=4K source=a import=64K qcache=32K
cache c1 size=96 arena=a
reserve r1 cache=c1 count=4
";

fn name(pool: (&'static [&'static str], &'static [&'static str])) -> impl Strategy<Value = String> {
    prop_oneof![5 => select(pool.0), 1 => select(pool.1)].prop_map(str::to_owned)
}

/// A number as a script writes it: mostly sensible sizes and addresses,
/// sometimes zero, odd, huge, suffixed, or past 64 bits.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (1u64..=32).prop_map(|pages| format!("{}K", pages * 4)),
        3 => (0u64..=64).prop_map(|n| n.to_string()),
        2 => (0u64..=0x40).prop_map(|pages| format!("{:#x}", 0x100000 + pages * 0x1000)),
        1 => select(&["1M", "2M", "1G", "3T", "0x0", "0"][..]).prop_map(str::to_owned),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| format!("{n:#x}")),
        1 => select(&["18446744073709551616", "0x1_0000", "16E", "-4", "4k", "0x"][..])
            .prop_map(str::to_owned),
    ]
}

fn power_of_two() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (12u32..=22).prop_map(|shift| format!("{:#x}", 1u64 << shift)),
        1 => (0u32..=63).prop_map(|shift| (1u64 << shift).to_string()),
        1 => number(),
    ]
}

fn policy() -> impl Strategy<Value = String> {
    select(&["", " instant", " best", " next", " worst"][..]).prop_map(str::to_owned)
}

/// `H = ` or nothing.
fn handle_prefix() -> impl Strategy<Value = String> {
    prop_oneof![3 => name(HANDLES).prop_map(|h| format!("{h} = ")), 1 => Just(String::new())]
}

/// ` key=value` or nothing.
fn option(
    key: &'static str,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = String> {
    prop::option::of(value).prop_map(move |v| v.map_or_else(String::new, |v| format!(" {key}={v}")))
}

fn arena_line() -> impl Strategy<Value = String> {
    (
        name(ARENAS),
        power_of_two(),
        prop::option::of((number(), number())),
        option("source", name(ARENAS)),
        option("import", number()),
        option("qcache", number()),
    )
        .prop_map(|(arena, quantum, span, source, import, qcache)| {
            let span = span.map_or_else(String::new, |(b, s)| format!(" base={b} size={s}"));
            format!("arena {arena} quantum={quantum}{span}{source}{import}{qcache}")
        })
}

fn xalloc_line() -> impl Strategy<Value = String> {
    (
        handle_prefix(),
        name(ARENAS),
        number(),
        option("align", power_of_two()),
        option("phase", number()),
        option("nocross", power_of_two()),
        option("min", number()),
        option("max", number()),
        policy(),
    )
        .prop_map(
            |(h, arena, size, align, phase, nocross, min, max, policy)| {
                // The spec's synopsis puts the policy last; it is positional, so
                // also try it before the options.
                if size.len() % 2 == 0 {
                    format!("{h}xalloc {arena} {size}{align}{phase}{nocross}{min}{max}{policy}")
                } else {
                    format!("{h}xalloc {arena} {size}{policy}{align}{phase}{nocross}{min}{max}")
                }
            },
        )
}

/// `free`/`xfree` by handle or by address and size.
fn free_line(verb: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (name(ARENAS), name(HANDLES)).prop_map(move |(a, h)| format!("{verb} {a} {h}")),
        1 => (name(ARENAS), number(), number())
            .prop_map(move |(a, addr, size)| format!("{verb} {a} {addr} {size}")),
    ]
}

fn arena_command() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => arena_line(),
        2 => (name(ARENAS), number(), number()).prop_map(|(a, b, s)| format!("add {a} {b} {s}")),
        8 => (handle_prefix(), name(ARENAS), number(), policy())
            .prop_map(|(h, a, s, p)| format!("{h}alloc {a} {s}{p}")),
        5 => xalloc_line(),
        6 => free_line("free"),
        3 => free_line("xfree"),
        1 => (name(ARENAS), number(), number()).prop_map(|(a, b, s)| format!("contains {a} {b} {s}")),
        1 => name(ARENAS).prop_map(|a| format!("walk {a}")),
        1 => name(ARENAS).prop_map(|a| format!("size {a}")),
        1 => name(ARENAS).prop_map(|a| format!("stats {a}")),
        1 => name(ARENAS).prop_map(|a| format!("destroy {a}")),
        1 => Just("check".to_owned()),
        1 => (name(ARENAS), option("count", number()))
            .prop_map(|(a, count)| format!("fail {a} import{count}")),
    ]
}

fn cache_command() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (
            name(CACHES),
            number(),
            option("align", power_of_two()),
            name(ARENAS),
            option("magazine", number()),
        )
            .prop_map(|(c, size, align, arena, magazine)| {
                format!("cache {c} size={size}{align} arena={arena}{magazine}")
            }),
        4 => (handle_prefix(), name(CACHES)).prop_map(|(h, c)| format!("{h}cache_alloc {c}")),
        3 => (name(CACHES), name(HANDLES)).prop_map(|(c, h)| format!("cache_free {c} {h}")),
        2 => prop_oneof![4 => 0u64..4, 1 => any::<u64>()].prop_map(|n| format!("cpu {n}")),
        1 => Just("reap".to_owned()),
        1 => (name(RESERVES), name(CACHES), number())
            .prop_map(|(r, c, n)| format!("reserve {r} cache={c} count={n}")),
        2 => (handle_prefix(), name(RESERVES)).prop_map(|(h, r)| format!("{h}reserve_alloc {r}")),
        2 => (name(RESERVES), name(HANDLES)).prop_map(|(r, h)| format!("reserve_free {r} {h}")),
        1 => name(CACHES).prop_map(|c| format!("destroy {c}")),
        1 => name(CACHES).prop_map(|c| format!("stats {c}")),
    ]
}

/// What a person might mistype: stray words, options, comments, blanks.
fn odd_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("# a comment".to_owned()),
        "[ -~]{0,24}",
        (arena_command(), "[a-z]{1,5}=[0-9a-z]{0,4}").prop_map(|(l, o)| format!("{l} {o}")),
        (arena_command(), "[ -~]{1,10}").prop_map(|(l, junk)| format!("{l} # {junk}")),
        arena_command().prop_map(|l| format!("  {l}\t")),
        arena_command().prop_map(|l| l.to_uppercase()),
    ]
}

/// An allocation with a handle and, some lines later, its free: most frees
/// then name a live handle of the right arena, cache or reserve.
fn lifecycle() -> impl Strategy<Value = (String, String)> {
    let handle = || name(HANDLES);
    prop_oneof![
        4 => (handle(), name(ARENAS), number(), policy()).prop_map(|(h, a, s, p)| {
            (format!("{h} = alloc {a} {s}{p}"), format!("free {a} {h}"))
        }),
        2 => (handle(), name(ARENAS), number(), option("align", power_of_two()))
            .prop_map(|(h, a, s, align)| {
                (format!("{h} = xalloc {a} {s}{align}"), format!("xfree {a} {h}"))
            }),
        2 => (handle(), name(CACHES)).prop_map(|(h, c)| {
            (format!("{h} = cache_alloc {c}"), format!("cache_free {c} {h}"))
        }),
        1 => (handle(), name(RESERVES)).prop_map(|(h, r)| {
            (format!("{h} = reserve_alloc {r}"), format!("reserve_free {r} {h}"))
        }),
    ]
}

/// One step of a script: a line, or a lifecycle whose free comes `delay`
/// steps later (or never, past the end).
#[derive(Clone, Debug)]
enum Step {
    Line(String),
    Lifecycle {
        alloc: String,
        free: String,
        delay: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => arena_command().prop_map(Step::Line),
        4 => cache_command().prop_map(Step::Line),
        1 => odd_line().prop_map(Step::Line),
        6 => (lifecycle(), 0usize..30)
            .prop_map(|((alloc, free), delay)| Step::Lifecycle { alloc, free, delay }),
    ]
}

fn script() -> impl Strategy<Value = String> {
    prop::collection::vec(step(), 0..80).prop_map(|steps| {
        let mut script = PREAMBLE.to_owned();
        let mut due: Vec<(usize, String)> = Vec::new();
        for (at, step) in steps.into_iter().enumerate() {
            let line = match step {
                Step::Line(line) => line,
                Step::Lifecycle { alloc, free, delay } => {
                    due.push((at + delay, free));
                    alloc
                }
            };
            script.push_str(&line);
            script.push('\n');
            due.retain(|(when, free)| {
                if *when <= at {
                    script.push_str(free);
                    script.push('\n');
                }
                *when > at
            });
        }
        script
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_scenarios_give_the_same_bytes_in_both_engines(script in script()) {
        let native = run_native(&script);
        let wasm = run_wasm(&script).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&native.jsonl, &wasm.jsonl, "JSON Lines differ for\n{}", script);
        prop_assert_eq!(&native.render, &wasm.render, "readable views differ for\n{}", script);
    }
}

/// The generator is worth its cases only if the scripts reach the
/// allocator: many allocations succeed, and many kinds of error occur.
#[test]
fn generated_scenarios_reach_the_allocator_and_its_errors() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;

    let mut runner = TestRunner::deterministic();
    let (mut allocations, mut commands) = (0usize, 0usize);
    let mut kinds = BTreeSet::new();
    for _ in 0..200 {
        let script = script().new_tree(&mut runner).expect("a script").current();
        for line in run_native(&script).jsonl.lines() {
            commands += 1;
            let allocating = ["alloc", "xalloc", "cache_alloc", "reserve_alloc"]
                .iter()
                .any(|cmd| line.contains(&format!("\"cmd\":\"{cmd}\",\"ok\":true")));
            allocations += usize::from(allocating);
            if let Some(rest) = line.split("\"kind\":\"").nth(1) {
                kinds.insert(rest.split('"').next().unwrap_or_default().to_owned());
            }
        }
    }
    assert!(
        allocations * 10 >= commands,
        "only {allocations} of {commands} commands allocated"
    );
    assert!(
        kinds.len() >= 10,
        "only these error kinds occurred: {kinds:?}"
    );
}
