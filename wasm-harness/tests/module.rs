//! The module itself: it imports nothing, exports the documented ABI, has
//! stack to spare, and fails within its limits with errors that name the
//! scenario line.

use std::fs;
use std::path::Path;

use wasm_harness::workload::churn;
use wasm_harness::{GUEST_STACK_BYTES, HarnessError, Limits, run_wasm, run_wasm_with};
use wasmtime::{ExternType, Instance, Store, ValType};

#[test]
fn module_imports_nothing() {
    let module = wasm_harness::module().expect("the module compiles");
    let imports: Vec<String> = module
        .imports()
        .map(|i| format!("{}::{}", i.module(), i.name()))
        .collect();
    assert_eq!(
        imports,
        Vec::<String>::new(),
        "the guest must import nothing"
    );
}

#[test]
fn module_exports_the_documented_abi() {
    let module = wasm_harness::module().expect("the module compiles");
    let mut exports: Vec<String> = module
        .exports()
        .map(|e| match e.ty() {
            ExternType::Func(f) => {
                let types = |t: &mut dyn Iterator<Item = ValType>| {
                    t.map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
                };
                let params = types(&mut f.params());
                let results = types(&mut f.results());
                format!("func {}({params}) -> ({results})", e.name())
            }
            ExternType::Memory(_) => format!("memory {}", e.name()),
            ExternType::Global(_) => format!("global {}", e.name()),
            other => format!("{other:?} {}", e.name()),
        })
        .collect();
    exports.sort();
    assert_eq!(
        exports,
        [
            "func vmem_input(i32) -> (i32)",
            "func vmem_line() -> (i32)",
            "func vmem_output() -> (i32)",
            "func vmem_render() -> (i32)",
            "func vmem_run(i32) -> (i32)",
            // The linker exports these two for every cdylib; no host uses them.
            "global __data_end",
            "global __heap_base",
            "memory memory",
        ]
    );
}

/// Runs `script` through the raw ABI and returns the deepest stack
/// address the guest touched, in bytes below the stack's top. Linear
/// memory starts zeroed and the stack sits first in it, growing down from
/// `GUEST_STACK_BYTES`, so the lowest non-zero byte marks the high water.
fn stack_used(script: &str) -> usize {
    let module = wasm_harness::module().expect("the module compiles");
    let mut store = Store::new(module.engine(), ());
    store.set_fuel(Limits::DEFAULT.fuel).expect("fuel is on");
    let instance = Instance::new(&mut store, module, &[]).expect("instantiates");
    let memory = instance
        .get_memory(&mut store, "memory")
        .expect("memory export");
    let input = instance
        .get_typed_func::<u32, u32>(&mut store, "vmem_input")
        .expect("vmem_input export");
    let run = instance
        .get_typed_func::<u32, u32>(&mut store, "vmem_run")
        .expect("vmem_run export");
    let render = instance
        .get_typed_func::<(), u32>(&mut store, "vmem_render")
        .expect("vmem_render export");
    let len = u32::try_from(script.len()).expect("a small script");
    let at = input.call(&mut store, len).expect("vmem_input runs");
    memory
        .write(&mut store, at as usize, script.as_bytes())
        .expect("the input buffer is in memory");
    run.call(&mut store, len).expect("vmem_run runs");
    render.call(&mut store, ()).expect("vmem_render runs");
    let stack = &memory.data(&store)[..GUEST_STACK_BYTES];
    let lowest = stack
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(GUEST_STACK_BYTES);
    GUEST_STACK_BYTES - lowest
}

#[test]
fn stack_has_headroom() {
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut scripts: Vec<(String, String)> = fs::read_dir(&scenarios)
        .expect("scenarios/ is readable")
        .map(|entry| entry.expect("scenarios/ is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "vmem"))
        .map(|path| {
            let script = fs::read_to_string(&path).expect("a scenario is readable");
            (path.display().to_string(), script)
        })
        .collect();
    scripts.push(("churn(2000)".to_owned(), churn(2000)));
    for (name, script) in scripts {
        let used = stack_used(&script);
        assert!(used > 0, "{name}: the stack scan found nothing");
        assert!(
            used <= GUEST_STACK_BYTES * 3 / 4,
            "{name}: the guest used {used} of its {GUEST_STACK_BYTES} stack bytes; \
             raise GUEST_STACK_BYTES (wasm-harness/src/guest_stack.rs)"
        );
    }
}

#[test]
fn the_benchmark_scenario_runs_within_the_default_limits() {
    let script = churn(100_000);
    let output = run_wasm(&script).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        output.jsonl.lines().count(),
        100_003,
        "one line per command"
    );
}

#[test]
fn running_out_of_fuel_names_the_line() {
    let script = churn(5_000);
    let limits = Limits {
        fuel: 20_000_000,
        ..Limits::DEFAULT
    };
    match run_wasm_with(&script, limits) {
        Err(HarnessError::FuelExhausted { line, fuel }) => {
            assert_eq!(fuel, limits.fuel);
            assert!(line.number > 3, "fuel ran out in the churn, not at {line}");
            assert_eq!(
                Some(line.text.as_str()),
                script.lines().nth(line.number - 1)
            );
        }
        other => panic!("expected FuelExhausted, got {other:?}"),
    }
}

#[test]
fn running_out_of_memory_names_the_line() {
    let script = churn(100_000);
    // The script alone is about 2.8 MiB of guest memory and the setup (the
    // stack, the heap, three arenas) about 1 MiB more; the churn needs
    // about 24 MiB, so 6 MiB runs out part way through it.
    let limits = Limits {
        memory: 6 << 20,
        ..Limits::DEFAULT
    };
    match run_wasm_with(&script, limits) {
        Err(HarnessError::MemoryLimit { line, memory }) => {
            assert_eq!(memory, limits.memory);
            assert!(
                line.number > 3,
                "memory ran out in the churn, not at {line}"
            );
            assert_eq!(
                Some(line.text.as_str()),
                script.lines().nth(line.number - 1)
            );
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
}

#[test]
fn a_limit_below_the_initial_memory_is_a_memory_error() {
    let limits = Limits {
        memory: 64 << 10,
        ..Limits::DEFAULT
    };
    match run_wasm_with("check\n", limits) {
        Err(HarnessError::MemoryLimit { line, memory }) => {
            assert_eq!((line.number, memory), (0, limits.memory));
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
}
