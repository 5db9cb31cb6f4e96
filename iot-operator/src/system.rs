//! `iot-operator run`: the real system on embedded defaults.

use std::process::ExitCode;

use clap::Args;

/// Options of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Minutes to run.
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
}

/// Runs the system.
pub fn run(_args: &RunArgs) -> ExitCode {
    ExitCode::FAILURE
}
