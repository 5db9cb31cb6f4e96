//! The CLI's tasks against a served API on an ephemeral loopback port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use iot_operator::cli::{Connection, RolloutTask, Task, run};
use iot_operator::serve::seeded;
use iot_operator::{AppState, router};

#[test]
fn cli_tasks_reach_the_api_and_report_refusals() {
    let (engine, tokens, issued) = seeded(2, 20).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let app = router(AppState::new(Arc::new(engine.clone()), tokens));
    runtime.spawn(async move { axum::serve(listener, app).await });

    let conn = Connection {
        api: addr,
        token: Some(issued[0].1.clone()),
    };
    let (status, text) = run(
        &conn,
        &Task::Devices {
            state: None,
            health: Some("low_battery".into()),
            scope: None,
            firmware: None,
            battery_below: None,
            limit: 5,
        },
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["total"], 2, "devices 3 and 13 have a low battery");
    let id = body["devices"][0]["id"].as_str().unwrap().to_owned();

    let (status, _) = run(
        &conn,
        &Task::SetDesired {
            id: id.clone(),
            path: "led".into(),
            value: "true".into(),
            version: None,
        },
    )
    .unwrap();
    assert_eq!(status, 200);
    let (_, shadow) = run(&conn, &Task::Shadow { id: id.clone() }).unwrap();
    assert!(shadow.contains("\"led\": true"), "{shadow}");
    let (status, _) = run(
        &conn,
        &Task::Command {
            id: id.clone(),
            kind: "diagnostics".into(),
            times: None,
            period_ms: None,
            sensor: None,
        },
    )
    .unwrap();
    assert_eq!(status, 202);
    assert_eq!(engine.take_outbox().len(), 2);
    let (status, text) = run(&conn, &Task::Rollout(RolloutTask::Pause { id: 0 })).unwrap();
    assert_eq!(status, 404, "{text}");
    let (status, audit) = run(
        &conn,
        &Task::Audit {
            device: Some(id.clone()),
            limit: None,
        },
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(audit.contains("\"verified\": true"));
    // The other tenant's token cannot see the device; no token is refused.
    let other = Connection {
        api: addr,
        token: Some(issued[1].1.clone()),
    };
    assert_eq!(
        run(&other, &Task::Device { id: id.clone() }).unwrap().0,
        404
    );
    let anonymous = Connection {
        api: addr,
        token: None,
    };
    assert_eq!(
        run(&anonymous, &Task::Health { scope: None }).unwrap().0,
        401
    );
    assert!(
        run(
            &conn,
            &Task::SetDesired {
                id,
                path: "led".into(),
                value: "tru".into(),
                version: None
            }
        )
        .is_err()
    );
}
