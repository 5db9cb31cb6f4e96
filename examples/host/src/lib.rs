//! Shared helpers for the host examples: a result type, a check that turns a wrong result
//! into a non-zero exit, and headings for the printed report.

use std::fmt::Display;

/// What every example's `main` returns: an error (and a non-zero exit) when a check fails.
pub type Outcome = Result<(), Box<dyn std::error::Error>>;

/// Fails with `what` unless `ok`, so that CI's smoke run catches a wrong result.
pub fn check(ok: bool, what: impl Display) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

/// Prints a section heading.
pub fn section(title: &str) {
    println!("\n== {title} ==");
}

/// Formats milliseconds since the start of a simulation as `h:mm:ss`.
pub fn clock(ms: u64) -> String {
    let s = ms / 1_000;
    format!("{}:{:02}:{:02}", s / 3_600, s / 60 % 60, s % 60)
}
