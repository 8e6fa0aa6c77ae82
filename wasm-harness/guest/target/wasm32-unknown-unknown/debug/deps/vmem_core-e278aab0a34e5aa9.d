/work/main/wasm-harness/guest/target/wasm32-unknown-unknown/debug/deps/vmem_core-e278aab0a34e5aa9.d: /work/main/vmem-core/src/lib.rs /work/main/vmem-core/src/arena.rs /work/main/vmem-core/src/arena/span_tree.rs /work/main/vmem-core/src/cache.rs /work/main/vmem-core/src/constraint.rs /work/main/vmem-core/src/cpu.rs /work/main/vmem-core/src/error.rs /work/main/vmem-core/src/fault.rs /work/main/vmem-core/src/freelist.rs /work/main/vmem-core/src/hash.rs /work/main/vmem-core/src/heap_meta.rs /work/main/vmem-core/src/kmalloc.rs /work/main/vmem-core/src/magazine.rs /work/main/vmem-core/src/meta.rs /work/main/vmem-core/src/qcache.rs /work/main/vmem-core/src/reserve.rs /work/main/vmem-core/src/scenario/mod.rs /work/main/vmem-core/src/scenario/json.rs /work/main/vmem-core/src/scenario/parse.rs /work/main/vmem-core/src/scenario/render.rs /work/main/vmem-core/src/slab.rs /work/main/vmem-core/src/sync.rs /work/main/vmem-core/src/tag.rs

/work/main/wasm-harness/guest/target/wasm32-unknown-unknown/debug/deps/libvmem_core-e278aab0a34e5aa9.rmeta: /work/main/vmem-core/src/lib.rs /work/main/vmem-core/src/arena.rs /work/main/vmem-core/src/arena/span_tree.rs /work/main/vmem-core/src/cache.rs /work/main/vmem-core/src/constraint.rs /work/main/vmem-core/src/cpu.rs /work/main/vmem-core/src/error.rs /work/main/vmem-core/src/fault.rs /work/main/vmem-core/src/freelist.rs /work/main/vmem-core/src/hash.rs /work/main/vmem-core/src/heap_meta.rs /work/main/vmem-core/src/kmalloc.rs /work/main/vmem-core/src/magazine.rs /work/main/vmem-core/src/meta.rs /work/main/vmem-core/src/qcache.rs /work/main/vmem-core/src/reserve.rs /work/main/vmem-core/src/scenario/mod.rs /work/main/vmem-core/src/scenario/json.rs /work/main/vmem-core/src/scenario/parse.rs /work/main/vmem-core/src/scenario/render.rs /work/main/vmem-core/src/slab.rs /work/main/vmem-core/src/sync.rs /work/main/vmem-core/src/tag.rs

/work/main/vmem-core/src/lib.rs:
/work/main/vmem-core/src/arena.rs:
/work/main/vmem-core/src/arena/span_tree.rs:
/work/main/vmem-core/src/cache.rs:
/work/main/vmem-core/src/constraint.rs:
/work/main/vmem-core/src/cpu.rs:
/work/main/vmem-core/src/error.rs:
/work/main/vmem-core/src/fault.rs:
/work/main/vmem-core/src/freelist.rs:
/work/main/vmem-core/src/hash.rs:
/work/main/vmem-core/src/heap_meta.rs:
/work/main/vmem-core/src/kmalloc.rs:
/work/main/vmem-core/src/magazine.rs:
/work/main/vmem-core/src/meta.rs:
/work/main/vmem-core/src/qcache.rs:
/work/main/vmem-core/src/reserve.rs:
/work/main/vmem-core/src/scenario/mod.rs:
/work/main/vmem-core/src/scenario/json.rs:
/work/main/vmem-core/src/scenario/parse.rs:
/work/main/vmem-core/src/scenario/render.rs:
/work/main/vmem-core/src/slab.rs:
/work/main/vmem-core/src/sync.rs:
/work/main/vmem-core/src/tag.rs:
