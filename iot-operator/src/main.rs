//! `iot-operator`: serve the operator API, or act on one as an operator.
//!
//! ```text
//! iot-operator run                      # the whole system on embedded defaults (see README)
//! iot-operator serve --devices 1000     # the API over a seeded in-memory fleet
//! iot-operator --api ADDR --token T devices --health low_battery
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iot_operator::cli::{self, Connection, Task};

#[derive(Debug, Parser)]
#[command(
    name = "iot-operator",
    version,
    about = "Fleet operator API, dashboard and CLI"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the API and dashboard over a seeded in-memory fleet (no devices attached).
    Serve(iot_operator::serve::ServeArgs),
    /// Runs the real system: broker, backend, SQLite-free in-memory fleet, API, dashboard
    /// and simulated devices running the real agent over MQTT.
    Run(iot_operator::system::RunArgs),
    #[command(flatten)]
    Task(Task),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => iot_operator::serve::serve(&args),
        Command::Run(args) => iot_operator::system::run(&args),
        Command::Task(task) => match cli::run(&cli.connection, &task) {
            Ok((status, text)) => {
                println!("{text}");
                if (200..300).contains(&status) {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("HTTP {status}");
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
