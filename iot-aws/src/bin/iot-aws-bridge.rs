//! Serves AWS IoT Device Shadow requests through an MQTT broker.
//!
//! `iot-aws-bridge --port PORT [--host 127.0.0.1] [--seconds 600] [--max-requests N]`
//!
//! Prints `ready` on stdout once subscribed; exits 0 when its time or request budget is
//! spent, 1 on a connection error, 2 on bad arguments.

use std::io::Write as _;
use std::time::Duration;

use iot_aws::ShadowService;
use iot_aws::bridge::{BridgeOptions, run};

fn parse_args() -> Result<BridgeOptions, String> {
    let mut options = BridgeOptions::loopback(0);
    let mut port = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--port" => {
                let p = u16::try_from(number()?).map_err(|_| "--port: out of range".to_owned())?;
                port = Some(p);
            }
            "--host" => options.host = value.clone(),
            "--seconds" => options.run_for = Duration::from_secs(number()?),
            "--max-requests" => options.max_requests = number()?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    options.port = port.ok_or("--port is required")?;
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("iot-aws-bridge: {e}");
            std::process::exit(2);
        }
    };
    let mut service = ShadowService::default();
    let ready = || {
        println!("ready");
        let _ = std::io::stdout().flush();
    };
    match run(&mut service, &options, ready).await {
        Ok(stats) => {
            eprintln!(
                "iot-aws-bridge: {} requests answered, {} messages published, {} skipped",
                stats.requests, stats.publications, stats.skipped
            );
        }
        Err(e) => {
            eprintln!("iot-aws-bridge: {e}");
            std::process::exit(1);
        }
    }
}
