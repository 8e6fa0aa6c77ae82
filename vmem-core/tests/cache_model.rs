//! Property tests for the cache layers: random sequences of allocations,
//! frees (on any CPU), bad frees, reaps and quantum-cached arena calls.
//! After every step the checkers pass, live objects never overlap, and a
//! refused free changes nothing; at the end, freeing everything and reaping
//! puts every arena back exactly as it was before the caches were used.

use std::collections::BTreeMap;

use proptest::prelude::*;
use vmem_core::{
    Arena, ArenaConfig, CacheConfig, ErrorKind, FixedCpu, HeapMeta, ObjectCache, Policy,
    QuantumCaches,
};
use vmem_testkit::walk;

#[derive(Clone, Debug)]
enum Op {
    Cpu(usize),
    Alloc(usize),
    Free(usize),
    DoubleFree(usize),
    ArenaAlloc(u64),
    ArenaFree(usize),
    ArenaBadFree(usize),
    Reap,
    ReapIdle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0usize..40).prop_map(Op::Cpu),
        6 => (0usize..3).prop_map(Op::Alloc),
        5 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::DoubleFree),
        4 => (1u64..=6).prop_map(Op::ArenaAlloc),
        3 => any::<usize>().prop_map(Op::ArenaFree),
        1 => any::<usize>().prop_map(Op::ArenaBadFree),
        1 => Just(Op::Reap),
        1 => Just(Op::ReapIdle),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn caches_lose_nothing(ops in prop::collection::vec(op(), 1..300), magazine in 0u32..8) {
        let cpu = FixedCpu::new(0);
        let ids: Arena = Arena::create(ArenaConfig::new("ids", 1).span(100, 5_000).meta(&HeapMeta)).unwrap();
        let qc = QuantumCaches::new(16, 4 * 16, &HeapMeta, &cpu).unwrap();
        let va: Arena = Arena::create(ArenaConfig::new("va", 16).span(0x10000, 0x4000).meta(&HeapMeta).qcache(&qc)).unwrap();
        let (ids_before, va_before) = (walk(&ids), walk(&va));
        let caches: Vec<ObjectCache> = [(3u64, false), (8, true), (20, true)]
            .iter()
            .map(|&(size, debug)| {
                let config = CacheConfig::new("c", size, &HeapMeta, &cpu).magazine(magazine).debug(debug);
                ObjectCache::new(config, &ids).unwrap()
            })
            .collect();
        // Live objects: address -> (cache, size); live arena allocations.
        let mut live: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
        let mut freed: Vec<(usize, u64)> = Vec::new();
        let mut va_live: BTreeMap<u64, u64> = BTreeMap::new();
        for op in &ops {
            let state = (walk(&ids), walk(&va));
            let refused = match *op {
                Op::Cpu(n) => { cpu.set(n); false }
                Op::Alloc(c) => match caches[c].alloc() {
                    Ok(obj) => {
                        let size = caches[c].object_size();
                        let overlaps = live.range(..obj + size).next_back().is_some_and(|(&a, &(_, s))| a + s > obj);
                        prop_assert!(!overlaps, "object {:#x} overlaps a live one", obj);
                        live.insert(obj, (c, size));
                        false
                    }
                    Err(e) => { prop_assert_eq!(e.kind(), ErrorKind::NoSpace); true }
                },
                Op::Free(pick) if !live.is_empty() => {
                    let (&obj, &(c, _)) = live.iter().nth(pick % live.len()).unwrap();
                    caches[c].free(obj).unwrap();
                    live.remove(&obj);
                    freed.push((c, obj));
                    false
                }
                Op::DoubleFree(pick) if !freed.is_empty() => {
                    let (c, obj) = freed[pick % freed.len()];
                    // Only debug caches can tell; and only if nobody holds it again.
                    if caches[c].debug() && !live.contains_key(&obj) {
                        prop_assert_eq!(caches[c].free(obj).unwrap_err().kind(), ErrorKind::BadFree);
                        true
                    } else { false }
                }
                Op::ArenaAlloc(quanta) => match va.alloc(quanta * 16, Policy::InstantFit) {
                    Ok(a) => {
                        let overlaps = va_live.range(..a + quanta * 16).next_back().is_some_and(|(&b, &s)| b + s > a);
                        prop_assert!(!overlaps, "arena allocation {:#x} overlaps", a);
                        va_live.insert(a, quanta * 16);
                        false
                    }
                    Err(e) => { prop_assert_eq!(e.kind(), ErrorKind::NoSpace); true }
                },
                Op::ArenaFree(pick) if !va_live.is_empty() => {
                    let (&a, &s) = va_live.iter().nth(pick % va_live.len()).unwrap();
                    va.free(a, s).unwrap();
                    va_live.remove(&a);
                    false
                }
                Op::ArenaBadFree(pick) if !va_live.is_empty() => {
                    let (&a, &s) = va_live.iter().nth(pick % va_live.len()).unwrap();
                    prop_assert_eq!(va.free(a, s + 16).unwrap_err().kind(), ErrorKind::BadFree);
                    prop_assert_eq!(va.xfree(a, s).unwrap_err().kind(), ErrorKind::BadFree);
                    true
                }
                Op::Reap => {
                    for c in &caches { c.reap().unwrap(); }
                    va.reap().unwrap();
                    false
                }
                Op::ReapIdle => {
                    for c in &caches { c.reap_idle().unwrap(); }
                    false
                }
                _ => false,
            };
            if refused {
                prop_assert_eq!((walk(&ids), walk(&va)), state, "a refused call changed an arena ({:?})", op);
            }
            for c in &caches { c.check().unwrap(); }
            ids.check().unwrap();
            va.check().unwrap();
            let in_use: u64 = caches.iter().map(|c| c.stats().in_use).sum();
            prop_assert_eq!(in_use, live.len() as u64);
        }
        for (obj, (c, _)) in live { caches[c].free(obj).unwrap(); }
        for (a, s) in va_live { va.free(a, s).unwrap(); }
        for c in &caches { c.reap().unwrap(); c.check().unwrap(); }
        va.reap().unwrap();
        prop_assert_eq!(walk(&ids), ids_before);
        prop_assert_eq!(walk(&va), va_before);
    }
}
