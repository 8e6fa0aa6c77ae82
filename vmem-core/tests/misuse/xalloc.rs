//! Constrained allocation: xalloc and xfree.

use vmem_core::ErrorKind::*;
use vmem_core::Policy::{BestFit, InstantFit, NextFit};
use vmem_core::{Arena, Constraints, Policy};

use crate::Case;
use crate::harness::{Outcome, Q, after_alloc, child, on_standard, probe, standard};

/// No constraint: the base the rows below change one field of.
const NONE: Constraints = Constraints::NONE;

/// The layer's cases, in the page's order.
#[rustfmt::skip]
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("xalloc/size-zero", "`xalloc(0, align 0x2000)`", ZeroSize,
            place(0, Constraints::aligned(0x2000), InstantFit)),
        Case::new("xalloc/size-overflow", "`xalloc(2^64 - 1, align 0x2000)`", Overflow,
            place(u64::MAX, Constraints::aligned(0x2000), InstantFit)),
        Case::new("xalloc/align-off-quantum", "align 0x800, below the quantum", Misaligned,
            place(Q, Constraints::aligned(0x800), InstantFit)),
        Case::new("xalloc/align-not-power-of-two", "align 0x3000", BadConstraint,
            place(Q, Constraints::aligned(0x3000), InstantFit)),
        Case::new("xalloc/phase-off-quantum", "phase 0x800", Misaligned,
            place(Q, Constraints { align: 0x4000, phase: 0x800, ..NONE }, InstantFit)),
        Case::new("xalloc/phase-equals-align", "phase 0x4000 with align 0x4000", BadConstraint,
            place(Q, Constraints { align: 0x4000, phase: 0x4000, ..NONE }, InstantFit)),
        Case::new("xalloc/phase-without-align", "phase 0x2000 with the default align (the quantum)", BadConstraint,
            place(Q, Constraints { phase: 0x2000, ..NONE }, BestFit)),
        Case::new("xalloc/nocross-off-quantum", "nocross 0x800", Misaligned,
            place(Q, Constraints { nocross: 0x800, ..NONE }, InstantFit)),
        Case::new("xalloc/nocross-not-power-of-two", "nocross 0x3000", BadConstraint,
            place(Q, Constraints { nocross: 0x3000, ..NONE }, InstantFit)),
        Case::new("xalloc/nocross-below-size", "nocross 0x2000 for a request of 0x3000", Overconstrained,
            place(0x3000, Constraints { nocross: 0x2000, ..NONE }, InstantFit)),
        Case::new("xalloc/align-above-nocross", "align 0x8000 with nocross 0x4000", Overconstrained,
            place(Q, Constraints { align: 0x8000, nocross: 0x4000, ..NONE }, InstantFit)),
        Case::new("xalloc/phase-and-size-cross", "phase 0x3000 + size 0x2000 past nocross 0x4000", Overconstrained,
            place(0x2000, Constraints { align: 0x4000, phase: 0x3000, nocross: 0x4000, ..NONE }, InstantFit)),
        Case::new("xalloc/min-equals-max", "min 0x150000 = max 0x150000", BadConstraint,
            place(Q, Constraints { min: 0x15_0000, max: 0x15_0000, ..NONE }, InstantFit)),
        Case::new("xalloc/min-above-max", "min 0x180000 above max 0x150000", BadConstraint,
            place(Q, Constraints { min: 0x18_0000, max: 0x15_0000, ..NONE }, InstantFit)),
        Case::new("xalloc/window-too-small", "a [min, max) window of 0x1000 for a request of 0x2000", Overconstrained,
            place(0x2000, Constraints { min: 0x15_0000, max: 0x15_1000, ..NONE }, InstantFit)),
        Case::new("xalloc/window-without-aligned-spot", "window [0x151000, 0x154000) with align 0x4000", Overconstrained,
            place(Q, Constraints { align: 0x4000, min: 0x15_1000, max: 0x15_4000, ..NONE }, InstantFit)),
        Case::new("xalloc/align-above-every-span", "align 0x1000000 in an arena whose only span holds no such address", NoSpace,
            place(Q, Constraints::aligned(0x100_0000), InstantFit)),
        Case::new("xalloc/min-above-every-span", "min 0x400000, above every span", NoSpace,
            place(Q, Constraints { min: 0x40_0000, ..NONE }, NextFit)),
        Case::new("xalloc/max-below-every-span", "max 0x80000, below every span", NoSpace,
            place(Q, Constraints { max: 0x8_0000, ..NONE }, BestFit)),
        Case::new("xalloc/exact-taken", "`Constraints::exact` at an address already allocated", NoSpace,
            || after_alloc(0x2000, |a, x| a.xalloc(Q, &Constraints::exact(x + Q, Q)?, InstantFit))),
        Case::new("xalloc/exact-overflow", "`Constraints::exact(2^64 - 0x1000, 0x2000)`", Overflow,
            || on_standard(|a| a.xalloc(0x2000, &Constraints::exact(u64::MAX - 0xfff, 0x2000)?, InstantFit))),
        Case::new("xalloc/nocross-never-imports", "a request with a `nocross` boundary on an importing arena that has no span yet (boundaries and windows never import)", NoSpace,
            never_imports),
        Case::new("xalloc/xfree-of-alloc", "`xfree` of what `alloc` returned", BadFree,
            || after_alloc(Q, |a, x| a.xfree(x, Q))),
        Case::new("xalloc/free-of-xalloc", "`free` of what `xalloc` returned", BadFree,
            || after_xalloc(Q, |a, x| a.free(x, Q))),
        Case::new("xalloc/xfree-wrong-size", "`xfree` with another size than allocated", BadFree,
            || after_xalloc(0x2000, |a, x| a.xfree(x, Q))),
        Case::new("xalloc/xfree-double", "the same `xalloc` result freed twice", BadFree,
            xfree_double),
        Case::new("xalloc/xfree-zero", "`xfree(addr, 0)`", ZeroSize,
            || after_xalloc(Q, |a, x| a.xfree(x, 0))),
        Case::new("xalloc/min-at-the-top", "min 2^64 - 1 with no max: no aligned start fits below 2^64", Overconstrained,
            place(Q, Constraints { min: u64::MAX, ..NONE }, InstantFit)),
        Case::new("xalloc/phase-and-size-near-2^64", "size 2^64 - 0x1000 with align 0x2000, phase 0x1000, nocross 2^63 (phase + size passes 2^64)", Overconstrained,
            place(u64::MAX - 0xfff, Constraints { align: 0x2000, phase: 0x1000, nocross: 1 << 63, ..NONE }, InstantFit)),
    ]
}

/// A case that asks a fresh `standard` arena for `size` under `constraints`.
fn place(size: u64, constraints: Constraints, policy: Policy) -> impl Fn() -> Outcome {
    move || on_standard(|a| a.xalloc(size, &constraints, policy))
}

/// Takes `size` aligned to 0x4000 from a fresh `standard` arena, then makes
/// `call` on the arena and the address it got.
fn after_xalloc<T>(
    size: u64,
    call: impl FnOnce(&Arena<'static>, u64) -> vmem_core::Result<T>,
) -> Outcome {
    let a = standard();
    let x = a
        .xalloc(size, &Constraints::aligned(0x4000), InstantFit)
        .unwrap();
    probe(&[&a], || call(&a, x))
}

fn never_imports() -> Outcome {
    let root = standard();
    let c = child(&root, 0);
    probe(&[&root, &c], || {
        c.xalloc(
            Q,
            &Constraints {
                nocross: 0x4000,
                ..NONE
            },
            InstantFit,
        )
    })
}

fn xfree_double() -> Outcome {
    let a = standard();
    let x = a
        .xalloc(Q, &Constraints::aligned(0x4000), InstantFit)
        .unwrap();
    a.xfree(x, Q).unwrap();
    probe(&[&a], || a.xfree(x, Q))
}
