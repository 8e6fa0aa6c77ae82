//! Runs vmem scenarios (`docs/src/scenario-language.md`) two ways: on
//! the host ([`run_native`]) and inside the `vmem-wasm` module under
//! wasmtime ([`run_wasm`]). Both call the same interpreter,
//! `vmem_core::scenario`, so they must give the same bytes; the tests and
//! `vmem-harness diff` hold them to it.
//!
//! The module is built from the current sources by this crate's build
//! script and embedded in the library ([`WASM`]). Its ABI is documented in
//! `wasm-harness/guest/src/lib.rs` and `wasm-harness/README.md`: the host
//! asks for an input buffer (`vmem_input`), writes the script there, runs it
//! (`vmem_run`), optionally asks for the readable view (`vmem_render`), and
//! reads the output buffer (`vmem_output`). After a trap, `vmem_line` says
//! which scenario line was running.
//!
//! ```no_run
//! let script = "arena a quantum=4K base=0x1000 size=64K\nh = alloc a 8K\n";
//! let wasm = wasm_harness::run_wasm(script)?;
//! assert_eq!(wasm, wasm_harness::run_native(script));
//! # Ok::<(), wasm_harness::HarnessError>(())
//! ```

use std::fmt;
use std::sync::OnceLock;

use vmem_core::scenario::Interpreter;
use wasmtime::{
    Config, Engine, Instance, Linker, Memory, Module, ResourceLimiter, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc,
};

/// Where the build script put the guest module it built for this library.
pub const WASM_PATH: &str = env!("VMEM_WASM_PATH");

/// The guest module, as built from the current sources.
pub static WASM: &[u8] = include_bytes!(env!("VMEM_WASM_PATH"));

/// How much one scenario's run in the module may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel: about one unit per Wasm instruction executed.
    pub fuel: u64,
    /// The most linear memory the module may have, in bytes.
    pub memory: usize,
}

impl Limits {
    /// The limits [`run_wasm`] uses. Memory: the guest grows its heap on
    /// demand, and the 100,000-operation benchmark scenario needs about
    /// 21 MiB. Fuel: that scenario burns about 6.2e9 units (0.8 s), so this
    /// leaves it eight times over, while a runaway loop ends as
    /// [`HarnessError::FuelExhausted`] within seconds.
    pub const DEFAULT: Limits = Limits {
        fuel: 50_000_000_000,
        memory: 256 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Fuel for the calls that read the guest's buffers and line number, given
/// afresh after the scenario's own budget ran out.
const READ_FUEL: u64 = 1_000_000;

mod guest_stack;
pub mod workload;
pub use guest_stack::GUEST_STACK_BYTES;

/// What one scenario printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The JSON Lines output: one object per command line.
    pub jsonl: String,
    /// The interpreter's readable view after the last line.
    pub render: String,
}

/// A scenario line: its 1-based number and its text, or no line (0) when
/// the guest was between lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based; 0 when no scenario line was running.
    pub number: usize,
    /// The line as the script has it (empty when `number` is 0).
    pub text: String,
}

impl Line {
    fn of(script: &str, number: usize) -> Line {
        let text = number
            .checked_sub(1)
            .and_then(|index| script.lines().nth(index))
            .unwrap_or_default();
        Line {
            number,
            text: text.to_owned(),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number {
            0 => write!(f, "outside any scenario line"),
            n => write!(f, "at line {n}: {}", self.text.trim()),
        }
    }
}

/// Why a scenario did not run to the end in the Wasm module.
#[derive(Debug)]
pub enum HarnessError {
    /// The guest trapped: a panic in the interpreter (always a bug) or a
    /// Wasm fault such as a stack overflow.
    Trap {
        /// The line that was running.
        line: Line,
        /// Wasmtime's description of the trap.
        reason: String,
    },
    /// The scenario used up its fuel ([`Limits::fuel`]): a loop that does
    /// not end, or a scenario far larger than any test's.
    FuelExhausted {
        /// The line that was running.
        line: Line,
        /// The budget it used up.
        fuel: u64,
    },
    /// The guest needed more linear memory than [`Limits::memory`].
    MemoryLimit {
        /// The line that was running.
        line: Line,
        /// The limit, in bytes.
        memory: usize,
    },
    /// The embedded module did not compile, instantiate, or has not the
    /// documented exports.
    BadModule(String),
    /// The guest's output was not UTF-8.
    NonUtf8Output {
        /// Which output: `"jsonl"` or `"render"`.
        which: &'static str,
    },
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Trap { line, reason } => {
                write!(f, "the Wasm guest trapped {line}: {reason}")
            }
            HarnessError::FuelExhausted { line, fuel } => write!(
                f,
                "the Wasm guest used up its fuel ({fuel} units) {line}: a runaway loop?"
            ),
            HarnessError::MemoryLimit { line, memory } => write!(
                f,
                "the Wasm guest needed more than its {memory} bytes of memory {line}"
            ),
            HarnessError::BadModule(why) => write!(f, "the Wasm module is unusable: {why}"),
            HarnessError::NonUtf8Output { which } => {
                write!(f, "the Wasm guest's {which} output is not UTF-8")
            }
        }
    }
}

impl std::error::Error for HarnessError {}

/// Runs `script` on the host.
pub fn run_native(script: &str) -> Output {
    let mut interpreter = Interpreter::new();
    let jsonl = interpreter.run(script);
    Output {
        jsonl,
        render: interpreter.render(),
    }
}

/// Runs `script` in the Wasm module, in a store of its own, within
/// [`Limits::DEFAULT`].
pub fn run_wasm(script: &str) -> Result<Output, HarnessError> {
    run_wasm_with(script, Limits::DEFAULT)
}

/// Runs `script` in the Wasm module, in a store of its own, within `limits`.
pub fn run_wasm_with(script: &str, limits: Limits) -> Result<Output, HarnessError> {
    let compiled = compiled()?;
    // A fresh store per scenario: nothing of one run can reach the next.
    let mut store = Store::new(&compiled.engine, GuestLimits::new(limits));
    store.limiter(|guest| guest);
    store.set_fuel(limits.fuel).map_err(bad_module)?;
    let instance = compiled
        .linker
        .instantiate(&mut store, &compiled.module)
        .map_err(|e| match store.data().memory_denied {
            // The module's initial memory is already over the limit.
            true => HarnessError::MemoryLimit {
                line: Line::of(script, 0),
                memory: limits.memory,
            },
            false => bad_module(e),
        })?;
    let guest = Exports::of(&instance, &mut store)?;
    guest.run(&mut store, script)
}

/// The guest module, compiled (once per process) by the harness's engine.
pub fn module() -> Result<&'static Module, HarnessError> {
    compiled().map(|c| &c.module)
}

/// The one place the wasmtime embedding is configured.
struct Compiled {
    engine: Engine,
    module: Module,
    /// Empty: the module must import nothing, so instantiating anything
    /// that does fails here instead of calling out of the sandbox.
    linker: Linker<GuestLimits>,
}

static COMPILED: OnceLock<Result<Compiled, String>> = OnceLock::new();

fn compiled() -> Result<&'static Compiled, HarnessError> {
    COMPILED
        .get_or_init(|| compile().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|why| HarnessError::BadModule(why.clone()))
}

fn compile() -> wasmtime::Result<Compiled> {
    let mut config = Config::new();
    // Determinism: NaN bit patterns differ between host CPUs; canonical
    // NaNs make float results the same everywhere (the guest has little
    // float code, but a snapshot must not depend on the machine).
    config.cranelift_nan_canonicalization(true);
    // Determinism, should the toolchain ever emit relaxed SIMD: the same
    // results on every CPU instead of each CPU's fastest.
    config.relaxed_simd_deterministic(true);
    // Bounded runs: a store's fuel budget turns a guest that never returns
    // into an error, deterministically (the same instruction count on every
    // machine, unlike a timeout).
    config.consume_fuel(true);
    // Readable traps: the module's names are stripped, so a Wasm backtrace
    // would list bare function indices; a trap names its scenario line
    // instead (`vmem_line`).
    config.wasm_backtrace_max_frames(None);
    let engine = Engine::new(&config)?;
    let module = Module::from_binary(&engine, WASM)?;
    let linker = Linker::new(&engine);
    Ok(Compiled {
        engine,
        module,
        linker,
    })
}

fn bad_module(error: wasmtime::Error) -> HarnessError {
    HarnessError::BadModule(format!("{error:#}"))
}

/// A store's data: its limits, and whether the guest hit the memory limit.
struct GuestLimits {
    requested: Limits,
    limits: StoreLimits,
    memory_denied: bool,
}

impl GuestLimits {
    fn new(requested: Limits) -> Self {
        GuestLimits {
            requested,
            // One instance with one memory and table, of bounded size: a
            // scenario cannot take the host's memory.
            limits: StoreLimitsBuilder::new()
                .memory_size(requested.memory)
                .instances(1)
                .memories(1)
                .tables(1)
                .build(),
            memory_denied: false,
        }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A refused `memory.grow` returns -1 to the guest, as the spec says;
        // remembering it tells the trap that follows from a bug.
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

fn typed_func<Params, Results>(
    instance: &Instance,
    store: &mut Store<GuestLimits>,
    name: &str,
) -> Result<TypedFunc<Params, Results>, HarnessError>
where
    Params: wasmtime::WasmParams,
    Results: wasmtime::WasmResults,
{
    instance
        .get_typed_func(&mut *store, name)
        .map_err(|e| HarnessError::BadModule(format!("export {name}: {e:#}")))
}

/// The guest's exports (the ABI).
struct Exports {
    memory: Memory,
    input: TypedFunc<u32, u32>,
    run: TypedFunc<u32, u32>,
    render: TypedFunc<(), u32>,
    output: TypedFunc<(), u32>,
    line: TypedFunc<(), u32>,
}

impl Exports {
    fn of(instance: &Instance, store: &mut Store<GuestLimits>) -> Result<Exports, HarnessError> {
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| HarnessError::BadModule("no exported memory".into()))?;
        Ok(Exports {
            input: typed_func(instance, store, "vmem_input")?,
            run: typed_func(instance, store, "vmem_run")?,
            render: typed_func(instance, store, "vmem_render")?,
            output: typed_func(instance, store, "vmem_output")?,
            line: typed_func(instance, store, "vmem_line")?,
            memory,
        })
    }

    fn run(&self, store: &mut Store<GuestLimits>, script: &str) -> Result<Output, HarnessError> {
        let fail = |store: &mut Store<GuestLimits>, error| self.failure(store, script, error);
        // A script past 4 GiB cannot fit in 32-bit memory: the memory limit.
        let len = u32::try_from(script.len()).map_err(|_| HarnessError::MemoryLimit {
            line: Line::of(script, 0),
            memory: store.data().requested.memory,
        })?;
        let input = self
            .input
            .call(&mut *store, len)
            .map_err(|e| fail(store, e))?;
        self.memory
            .write(&mut *store, input as usize, script.as_bytes())
            .map_err(|e| HarnessError::BadModule(format!("input buffer out of bounds: {e}")))?;
        let jsonl_len = self
            .run
            .call(&mut *store, len)
            .map_err(|e| fail(store, e))?;
        let jsonl = self.read_output(store, jsonl_len, "jsonl", script)?;
        let render_len = self
            .render
            .call(&mut *store, ())
            .map_err(|e| fail(store, e))?;
        let render = self.read_output(store, render_len, "render", script)?;
        Ok(Output { jsonl, render })
    }

    fn read_output(
        &self,
        store: &mut Store<GuestLimits>,
        len: u32,
        which: &'static str,
        script: &str,
    ) -> Result<String, HarnessError> {
        let ptr = self
            .output
            .call(&mut *store, ())
            .map_err(|e| self.failure(store, script, e))?;
        let start = ptr as usize;
        let bytes = self
            .memory
            .data(&*store)
            .get(start..start + len as usize)
            .ok_or_else(|| HarnessError::BadModule(format!("{which} output out of bounds")))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| HarnessError::NonUtf8Output { which })
    }

    /// Turns a failed call into an error that names the scenario line.
    fn failure(
        &self,
        store: &mut Store<GuestLimits>,
        script: &str,
        error: wasmtime::Error,
    ) -> HarnessError {
        let number = store
            .set_fuel(READ_FUEL)
            .and_then(|()| self.line.call(&mut *store, ()))
            .unwrap_or(0);
        let line = Line::of(script, number as usize);
        let guest = store.data();
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => HarnessError::FuelExhausted {
                line,
                fuel: guest.requested.fuel,
            },
            _ if guest.memory_denied => HarnessError::MemoryLimit {
                line,
                memory: guest.requested.memory,
            },
            _ => HarnessError::Trap {
                line,
                reason: format!("{error:#}"),
            },
        }
    }
}
