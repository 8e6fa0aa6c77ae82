//! The scenario language's reference page, `docs/src/scenario-language.md`,
//! is kept true by running it: every example there gives exactly the
//! output the page shows, natively and in the Wasm module.
//!
//! An example is a fenced block marked `vmem` (a whole scenario, run on a
//! fresh interpreter) followed, with only blank lines between, by a block
//! marked `jsonl`: its output, byte for byte. A `vmem` block without its
//! output, or a `jsonl` block without its scenario, fails the test. Other
//! fenced blocks (`text`, `sh`, ...) are not examples.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use similar::TextDiff;
use wasm_harness::{run_native, run_wasm};

/// An example: where it stands on the page, the scenario, and its output.
#[derive(Debug, PartialEq, Eq)]
struct Example {
    /// The page's line of the `vmem` fence (from 1).
    line: usize,
    script: String,
    expected: String,
}

/// A fenced block: the page's line of its opening fence, its info string,
/// its text, and the line of its closing fence.
struct Block<'a> {
    line: usize,
    info: &'a str,
    text: String,
    end: usize,
}

fn blocks(page: &str) -> Result<Vec<Block<'_>>, String> {
    let mut blocks = Vec::new();
    let mut open: Option<Block<'_>> = None;
    for (i, line) in page.lines().enumerate() {
        let number = i + 1;
        match open.as_mut() {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    open = Some(Block {
                        line: number,
                        info: info.trim(),
                        text: String::new(),
                        end: 0,
                    });
                }
            }
            Some(block) if line.trim_end() == "```" => {
                block.end = number;
                blocks.extend(open.take());
            }
            Some(block) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
        }
    }
    match open {
        Some(block) => Err(format!("line {}: the block is never closed", block.line)),
        None => Ok(blocks),
    }
}

/// The page's examples, or what is wrong with how they are marked.
fn examples(page: &str) -> Result<Vec<Example>, String> {
    let lines: Vec<&str> = page.lines().collect();
    let blocks = blocks(page)?;
    let mut examples = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        let block = &blocks[i];
        match block.info {
            "vmem" => {
                let output = blocks.get(i + 1).filter(|next| {
                    next.info == "jsonl"
                        && lines[block.end..next.line - 1]
                            .iter()
                            .all(|l| l.trim().is_empty())
                });
                let Some(output) = output else {
                    return Err(format!(
                        "line {}: a `vmem` example without a `jsonl` block of its output right after it",
                        block.line
                    ));
                };
                examples.push(Example {
                    line: block.line,
                    script: block.text.clone(),
                    expected: output.text.clone(),
                });
                i += 2;
            }
            "jsonl" => {
                return Err(format!(
                    "line {}: a `jsonl` block that follows no `vmem` example",
                    block.line
                ));
            }
            _ => i += 1,
        }
    }
    Ok(examples)
}

fn page() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/scenario-language.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn page_examples() -> Vec<Example> {
    examples(&page()).unwrap_or_else(|e| panic!("docs/src/scenario-language.md: {e}"))
}

/// A unified diff of the page's output against what a run gave.
fn diff(expected: &str, got: &str, engine: &str) -> String {
    TextDiff::from_lines(expected, got)
        .unified_diff()
        .header("the page", engine)
        .to_string()
}

#[test]
fn every_example_gives_the_output_on_the_page_natively_and_in_wasm() {
    let examples = page_examples();
    assert!(!examples.is_empty(), "the page has no examples");
    let mut failures = Vec::new();
    for example in &examples {
        let native = run_native(&example.script).jsonl;
        if native != example.expected {
            failures.push(format!(
                "example at line {}, native:\n{}",
                example.line,
                diff(&example.expected, &native, "native")
            ));
        }
        match run_wasm(&example.script) {
            Ok(wasm) if wasm.jsonl == example.expected => {}
            Ok(wasm) => failures.push(format!(
                "example at line {}, Wasm:\n{}",
                example.line,
                diff(&example.expected, &wasm.jsonl, "wasm")
            )),
            Err(e) => failures.push(format!("example at line {}, Wasm: {e}", example.line)),
        }
    }
    assert!(
        failures.is_empty(),
        "docs/src/scenario-language.md is out of date (fix the page or the interpreter):\n{}",
        failures.join("\n")
    );
}

/// The value of `"key":"..."` in a JSON line, if it has one.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = json.split_once(&format!("\"{key}\":\""))?;
    rest.split_once('"').map(|(value, _)| value)
}

#[test]
fn the_examples_show_every_command_and_every_error_kind() {
    const COMMANDS: [&str; 21] = [
        "arena",
        "add",
        "alloc",
        "xalloc",
        "free",
        "xfree",
        "contains",
        "walk",
        "size",
        "stats",
        "destroy",
        "check",
        "fail",
        "cache",
        "cache_alloc",
        "cache_free",
        "cpu",
        "reap",
        "reserve",
        "reserve_alloc",
        "reserve_free",
    ];
    let examples = page_examples();
    let lines: Vec<&str> = examples.iter().flat_map(|e| e.expected.lines()).collect();
    for command in COMMANDS {
        assert!(
            lines
                .iter()
                .any(|l| field(l, "cmd") == Some(command) && l.contains("\"ok\":true")),
            "no example on the page runs `{command}` successfully"
        );
    }
    // `Corrupt` is left out: only a bug in the crate gives it.
    for kind in listed_kinds(&page()).iter().filter(|k| *k != "Corrupt") {
        assert!(
            lines.iter().any(|l| field(l, "kind") == Some(kind)),
            "no example on the page shows the error kind {kind}"
        );
    }
}

/// The kinds the first column of the page's table under `## Error kinds`
/// names.
fn listed_kinds(page: &str) -> BTreeSet<String> {
    page.lines()
        .skip_while(|l| *l != "## Error kinds")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(kind, _)| kind.to_string())
        .collect()
}

/// The page's table of error kinds is the closed set: the kinds of the
/// misuse page (whose test shows a case of every `ErrorKind` there), no
/// more and no fewer.
#[test]
fn the_page_lists_every_error_kind() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/misuse.md");
    let misuse = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Its rows: | # | bad input | `Kind` | `case` |
    let shown: BTreeSet<String> = misuse
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            match cells.as_slice() {
                ["", n, _, kind, _, ""] if n.parse::<u32>().is_ok() => {
                    Some(kind.trim_matches('`').to_string())
                }
                _ => None,
            }
        })
        .collect();
    assert!(
        shown.len() > 10,
        "the misuse page's tables were not read: {shown:?}"
    );
    assert_eq!(listed_kinds(&page()), shown);
}

#[test]
fn examples_must_come_with_their_output() {
    let good =
        "text\n```vmem\ncheck\n```\n\n```jsonl\n{\"line\":1}\n```\n```text\nnot an example\n```\n";
    assert_eq!(
        examples(good),
        Ok(vec![Example {
            line: 2,
            script: "check\n".into(),
            expected: "{\"line\":1}\n".into(),
        }])
    );
    for (page, why) in [
        ("```vmem\ncheck\n```\n", "a scenario without output"),
        (
            "```vmem\ncheck\n```\nwords\n```jsonl\n{}\n```\n",
            "output not right after its scenario",
        ),
        (
            "```vmem\ncheck\n```\n```text\n{}\n```\n",
            "output marked otherwise",
        ),
        ("```jsonl\n{}\n```\n", "output without a scenario"),
        ("```vmem\ncheck\n", "a block never closed"),
    ] {
        assert!(examples(page).is_err(), "{why} was accepted");
    }
}
