//! Instruction counts beside criterion's times. The machine the benches run on is shared, so
//! times move between runs; instructions executed do not. `scripts/instr-counts.sh` runs a
//! bench binary under `valgrind --tool=callgrind --toggle-collect='*instr::timed*'` with
//! `INSTR_BENCH=<name>`: instead of criterion, the binary runs that benchmark's routine
//! [`ITERS`] times, each call through [`timed`], so the collected instructions divided by
//! [`ITERS`] are the instructions of one iteration (set-up, such as cloning the input
//! document, runs outside [`timed`] and is not counted).

use std::hint::black_box;

/// Iterations of one routine under callgrind.
pub(crate) const ITERS: u64 = 1_000;

/// Runs `f`; the only function callgrind collects in instruction-count mode. Criterion's
/// routines call it too, so both measure the same code.
#[inline(never)]
pub(crate) fn timed<R>(f: impl FnOnce() -> R) -> R {
    black_box(f())
}

/// One benchmark in instruction-count mode: its criterion id, and a routine that sets up an
/// input (not counted) and calls [`timed`] once on it.
pub(crate) type Routine<'a> = (&'a str, Box<dyn FnMut() + 'a>);

/// When `INSTR_BENCH` names one of `routines`, runs it [`ITERS`] times and returns `true`
/// (the caller then skips criterion); returns `false` when the variable is unset.
///
/// # Panics
/// If `INSTR_BENCH` names no routine (a typo must not count nothing silently).
pub(crate) fn instruction_mode(routines: Vec<Routine<'_>>) -> bool {
    let Ok(name) = std::env::var("INSTR_BENCH") else {
        return false;
    };
    let known: Vec<&str> = routines.iter().map(|(n, _)| *n).collect();
    let Some((_, mut routine)) = routines.into_iter().find(|(n, _)| *n == name) else {
        panic!("INSTR_BENCH={name} is none of {known:?}");
    };
    for _ in 0..ITERS {
        routine();
    }
    true
}
