//! Every scenario in `wasm-harness/scenarios/` gives the same bytes (JSON
//! Lines and readable view) natively and in the Wasm module, and matches
//! its reviewed snapshot `snapshots/scenario@NAME.vmem.snap` (at the
//! repository root): the readable view, a blank line, the JSON Lines.
//! Review changes with `cargo insta review`.

use std::fs;
use std::path::{Path, PathBuf};

use wasm_harness::{run_native, run_wasm};

/// Where the snapshots live, from this file's directory (insta's rule).
const SNAPSHOT_DIR: &str = "../../snapshots";

fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(SNAPSHOT_DIR);
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

#[test]
fn scenarios_give_the_same_bytes_in_both_engines() {
    let mut scenarios: Vec<PathBuf> = fs::read_dir(scenario_dir())
        .expect("wasm-harness/scenarios/ is readable")
        .map(|entry| entry.expect("wasm-harness/scenarios/ is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "vmem"))
        .collect();
    scenarios.sort();
    assert!(!scenarios.is_empty(), "no scenarios found");
    let disagreements: Vec<String> = scenarios
        .iter()
        .filter_map(|path| {
            let script =
                fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            match run_wasm(&script) {
                Ok(wasm) if wasm == run_native(&script) => None,
                Ok(_) => Some(format!("{}: the outputs differ", path.display())),
                Err(e) => Some(format!("{}: {e}", path.display())),
            }
        })
        .collect();
    assert!(
        disagreements.is_empty(),
        "native and Wasm disagree (see `vmem-harness diff FILE`):\n{}",
        disagreements.join("\n")
    );
}

#[test]
fn scenarios_match_their_snapshots() {
    snapshot_settings().bind(|| {
        insta::glob!("../scenarios", "*.vmem", |path| {
            let script =
                fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let output = run_native(&script);
            insta::assert_snapshot!("scenario", format!("{}\n{}", output.render, output.jsonl));
        });
    });
}

/// A snapshot whose scenario was renamed or removed would otherwise sit in
/// `snapshots/` unchecked for ever.
#[test]
fn every_snapshot_has_its_scenario() {
    let scenarios = scenario_dir();
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(SNAPSHOT_DIR);
    let Ok(entries) = fs::read_dir(&snapshots) else {
        return; // no snapshots yet: nothing can be stale
    };
    let mut stale = Vec::new();
    for entry in entries {
        let name = entry.expect("snapshots/ is readable").file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".snap") else {
            continue;
        };
        let scenario = stem.strip_prefix("scenario@");
        if !scenario.is_some_and(|s| scenarios.join(s).is_file()) {
            stale.push(name.into_owned());
        }
    }
    stale.sort();
    assert!(
        stale.is_empty(),
        "snapshots without a scenario in wasm-harness/scenarios/ (delete them): {stale:?}"
    );
}
