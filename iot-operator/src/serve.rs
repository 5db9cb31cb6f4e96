//! `iot-operator serve`: the API and dashboard over a seeded in-memory fleet.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use iot_core::{NodeId, TenantId};
use iot_fleet::{DeviceServer, Fleet, Principal, Role, Scope};
use iot_lifecycle::config::DeviceConfig;

use crate::engine::{LocalEngine, unix_ms};
use crate::seed::seed_tenant;
use crate::{AppState, TokenStore, router};

/// Options of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Tenants to seed (`tenant-0`, `tenant-1`...).
    #[arg(long, default_value_t = 2)]
    pub tenants: usize,
    /// Devices per tenant.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
}

/// A seeded engine, its token store and one admin token per tenant.
pub type Seeded = (LocalEngine, Arc<TokenStore>, Vec<(TenantId, String)>);

/// Seeds `tenants` tenants of `devices` devices each.
pub fn seeded(tenants: usize, devices: usize) -> Result<Seeded, String> {
    let mut fleet = Fleet::default();
    let tokens = Arc::new(TokenStore::new());
    let now = unix_ms();
    let mut issued = Vec::new();
    for t in 0..tenants {
        let tenant = TenantId::new(&format!("tenant-{t}")).map_err(|e| e.to_string())?;
        seed_tenant(&mut fleet, tenant, t, devices, 4, now).map_err(|e| e.to_string())?;
        issued.push((
            tenant,
            tokens.issue(Principal::new("admin", tenant, Scope::root(), Role::Admin)),
        ));
    }
    let server = DeviceServer::with_os_rng(fleet, DeviceConfig::default(), NodeId(1));
    Ok((LocalEngine::new(server), tokens, issued))
}

/// Runs `serve` until interrupted.
pub fn serve(args: &ServeArgs) -> ExitCode {
    let (engine, tokens, issued) = match seeded(args.tenants, args.devices) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("seeding failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        println!("API and dashboard: http://{addr}/");
        for (tenant, token) in &issued {
            println!("admin token of {tenant}: {token}");
        }
        let app = router(AppState::new(Arc::new(engine), tokens));
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serve: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
