//! `vmem-harness`: runs a vmem scenario natively or in the Wasm module, or
//! both, and compares them.
//!
//! ```sh
//! vmem-harness run FILE [--engine native|wasm] [--render]
//! vmem-harness diff FILE
//! ```
//!
//! Exit codes: 0 success (and `diff`: identical), 1 `diff` found a
//! difference, 2 bad usage or an I/O error, 3 the Wasm run failed.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use similar::TextDiff;
use wasm_harness::{Output, run_native, run_wasm};

#[derive(Parser)]
#[command(
    name = "vmem-harness",
    version,
    about = "Runs vmem scenarios natively and in the Wasm module",
    after_help = "The scenario language (commands, JSON Lines output, error kinds): \
                  docs/src/scenario-language.md in the repository."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario and prints its JSON Lines output.
    Run {
        /// The scenario (`.vmem`) file.
        file: PathBuf,
        /// Where to run it.
        #[arg(long, value_enum, default_value_t = Engine::Wasm)]
        engine: Engine,
        /// Print the readable view of the final state before the JSON Lines.
        #[arg(long)]
        render: bool,
    },
    /// Runs a scenario in both engines; prints "identical", or a unified
    /// diff of their outputs and exits 1.
    Diff {
        /// The scenario (`.vmem`) file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// On the host.
    Native,
    /// In the Wasm module under wasmtime.
    Wasm,
}

/// Exit code for a scenario that differs between the engines.
const DIFFERENT: u8 = 1;
/// Exit code for a file that cannot be read or output that cannot be
/// written (clap also exits 2 on bad usage).
const IO_FAILED: u8 = 2;
/// Exit code for a Wasm run that failed (trap, fuel, memory, bad module).
const WASM_FAILED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            file,
            engine,
            render,
        } => run(&file, engine, render),
        Command::Diff { file } => diff(&file),
    };
    match result {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("vmem-harness: {message}");
            ExitCode::from(code)
        }
    }
}

type Outcome = Result<ExitCode, (u8, String)>;

fn read(file: &Path) -> Result<String, (u8, String)> {
    fs::read_to_string(file).map_err(|e| (IO_FAILED, format!("{}: {e}", file.display())))
}

fn run_in(engine: Engine, script: &str) -> Result<Output, (u8, String)> {
    match engine {
        Engine::Native => Ok(run_native(script)),
        Engine::Wasm => run_wasm(script).map_err(|e| (WASM_FAILED, e.to_string())),
    }
}

fn run(file: &Path, engine: Engine, render: bool) -> Outcome {
    let script = read(file)?;
    let output = run_in(engine, &script)?;
    let mut stdout = io::stdout().lock();
    let printed = if render {
        write!(stdout, "{}", output.render)
            .and_then(|()| ensure_newline(&mut stdout, &output.render))
            .and_then(|()| write!(stdout, "{}", output.jsonl))
    } else {
        write!(stdout, "{}", output.jsonl)
    };
    finish(printed, stdout)
}

fn ensure_newline(out: &mut impl Write, text: &str) -> io::Result<()> {
    if text.is_empty() || text.ends_with('\n') {
        Ok(())
    } else {
        writeln!(out)
    }
}

fn diff(file: &Path) -> Outcome {
    let script = read(file)?;
    let native = run_in(Engine::Native, &script)?;
    let wasm = run_in(Engine::Wasm, &script)?;
    let mut stdout = io::stdout().lock();
    if native == wasm {
        return finish(writeln!(stdout, "identical"), stdout);
    }
    let mut printed = Ok(());
    for (which, native, wasm) in [
        ("jsonl", &native.jsonl, &wasm.jsonl),
        ("render", &native.render, &wasm.render),
    ] {
        if native != wasm {
            let diff = TextDiff::from_lines(native.as_str(), wasm.as_str());
            let unified = diff
                .unified_diff()
                .header(&format!("native {which}"), &format!("wasm {which}"))
                .to_string();
            printed = printed.and_then(|()| write!(stdout, "{unified}"));
        }
    }
    finish(printed, stdout).map(|_| ExitCode::from(DIFFERENT))
}

fn finish(printed: io::Result<()>, mut stdout: io::StdoutLock<'_>) -> Outcome {
    match printed.and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err((IO_FAILED, format!("writing the output: {e}"))),
    }
}
