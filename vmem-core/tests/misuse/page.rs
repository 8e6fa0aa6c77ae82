//! The docs page `docs/src/misuse.md`: the tables generated from the
//! cases, and a line diff to show how the page differs from them.

use std::fmt::Write as _;

use crate::{Case, Layer, scenario};

pub const BEGIN: &str = "<!-- misuse-catalogue:begin (generated from vmem-core/tests/misuse/: run VMEM_BLESS=1 cargo test -p vmem-core --test misuse; do not edit by hand) -->";
pub const END: &str = "<!-- misuse-catalogue:end -->";

/// The generated part of the page: one table per layer.
pub fn render(catalogue: &[(Layer, Vec<Case>)]) -> String {
    let mut out = String::from("\n");
    let total: usize = catalogue.iter().map(|(_, cases)| cases.len()).sum();
    let counts: Vec<String> = catalogue
        .iter()
        .map(|(layer, cases)| format!("{} {}", layer.prefix().trim_end_matches('/'), cases.len()))
        .collect();
    let _ = writeln!(out, "{total} cases ({}).", counts.join(", "));
    for (layer, cases) in catalogue {
        let _ = writeln!(out, "\n## {}\n", layer.title());
        let _ = writeln!(out, "{}\n", layer.setup());
        if *layer == Layer::Scenario {
            out.push_str("```text\n");
            out.push_str(scenario::WORLD);
            out.push_str("```\n\n");
        }
        let _ = writeln!(
            out,
            "| # | Bad input | Error kind | Case in `misuse/{}` |",
            layer.file()
        );
        out.push_str("| ---: | --- | --- | --- |\n");
        for (i, case) in cases.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | `{}` |",
                i + 1,
                case.bad,
                case.expect,
                case.id
            );
        }
    }
    out.push('\n');
    out
}

/// A line diff of `old` against `new` (longest common subsequence), each
/// line marked ` `, `-` or `+`.
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}
