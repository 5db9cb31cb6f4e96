//! One field-policy schema on both ends: a device class declares its fields and their
//! policies once (`shadow_state!`), the device announces the table's fingerprint at
//! registration, and the backend resolves that device's shadow with the same table. The
//! property: any interleaving of operator and device writes to a CloudWins and a
//! DeviceWins field, delivered late, duplicated and out of order, converges to one document
//! on both ends, and to the value the field's owner wrote last.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use std::collections::VecDeque;

use iot_core::NodeId;
use iot_core::time::HybridLogicalClock;
use iot_fleet::{ClassPolicies, ServerShadow};
use iot_shadow::cbor::decode_message;
use iot_shadow::typed::FieldTable;
use iot_shadow::{
    DeviceShadow, Limits, MapStore, Origin, Path, Resolver, Section, Shadow, Stamp, Update, Value,
    Write, shadow_state,
};
use proptest::prelude::*;

shadow_state! {
    #[derive(Debug, Clone, PartialEq)]
    pub struct Thermostat {
        pub mode: i64 => MODE, "mode", CloudWins;
        pub setpoint: i64 => SETPOINT, "setpoint", DeviceWins;
    }
}

const PATHS: [&str; 2] = ["mode", "setpoint"];
const DRIFT_MS: u64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    /// The device changes a field locally.
    Device(usize, i64),
    /// The operator sets a desired value.
    Operator(usize, i64),
    /// Deliver the message at this index of the uplink queue (kept when `dup`).
    Up(usize, bool),
    /// Deliver the message at this index of the downlink queue (kept when `dup`).
    Down(usize, bool),
    /// Time passes.
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..4i64).prop_map(|(f, v)| Op::Device(f, v)),
        (0..2usize, 0..4i64).prop_map(|(f, v)| Op::Operator(f, v)),
        (0..4usize, any::<bool>()).prop_map(|(i, d)| Op::Up(i, d)),
        (0..4usize, any::<bool>()).prop_map(|(i, d)| Op::Down(i, d)),
        (1..500u64).prop_map(Op::Tick),
    ]
}

struct Ends {
    device: DeviceShadow<Thermostat, 16>,
    server: ServerShadow,
    clock: HybridLogicalClock,
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
    now: u64,
}

impl Ends {
    fn new() -> Self {
        let mut ends = Self {
            device: DeviceShadow::new(
                Thermostat {
                    mode: 0,
                    setpoint: 20,
                },
                NodeId(7),
                Limits::DEFAULT,
                DRIFT_MS,
            ),
            server: Shadow::new(
                MapStore::new(),
                ClassPolicies::Table(FieldTable::of::<Thermostat>()),
                Limits::DEFAULT.with_max_drift(DRIFT_MS),
            ),
            clock: HybridLogicalClock::new(NodeId(1), DRIFT_MS),
            up: VecDeque::new(),
            down: VecDeque::new(),
            now: 1_000,
        };
        // As the agent does once registered: report the whole state.
        ends.device.report_state(ends.now).unwrap();
        ends.send_pending();
        ends
    }

    fn send_pending(&mut self) {
        let mut buf = [0u8; 1024];
        if let Some(n) = self.device.encode_pending(None, &mut buf).unwrap() {
            self.up.push_back(buf[..n].to_vec());
        }
    }

    /// The backend handles a device update as `DeviceServer` does: apply, then ack.
    fn server_receive(&mut self, bytes: &[u8]) {
        let mut writes = Vec::new();
        let header = decode_message(bytes, &mut writes).unwrap();
        let update = Update {
            client_token: header.client_token,
            expected_version: header.version,
            writes: &writes,
        };
        let Ok(outcome) = self.server.apply(&update, self.now) else {
            return;
        };
        for w in &writes {
            let _ = self.clock.observe(w.stamp.hlc(), self.now);
        }
        let mut buf = vec![0u8; 4096];
        let n = self
            .server
            .encode_accepted(&update, &outcome, &mut buf)
            .unwrap();
        self.down.push_back(buf[..n].to_vec());
    }

    /// The operator's write, stamped with the field's policy from the server's table.
    fn operator(&mut self, field: usize, value: i64) {
        let path = Path::new(PATHS[field]).unwrap();
        let policy = self.server.resolver().policy(&path);
        let stamp = Stamp::new(self.clock.now(self.now).unwrap(), policy, Origin::Cloud);
        let write = Write::new(Section::Desired, path, Value::Int(value), stamp);
        self.server.apply(&Update::new(&[write]), self.now).unwrap();
        let mut buf = vec![0u8; 4096];
        if let Some(n) = self.server.encode_delta(&mut buf).unwrap() {
            self.down.push_back(buf[..n].to_vec());
        }
    }

    fn device_receive(&mut self, bytes: &[u8]) {
        let handled = self.device.handle_cbor::<16>(bytes, self.now);
        if matches!(handled, Ok(iot_shadow::Handled::AppliedWithGap)) {
            let mut buf = vec![0u8; 4096];
            let n = self.server.encode_document(&mut buf).unwrap();
            self.down.push_back(buf[..n].to_vec());
        }
        self.send_pending();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Device(field, value) => {
                self.device.set(field, Value::Int(value), self.now).unwrap();
                self.send_pending();
            }
            Op::Operator(field, value) => self.operator(field, value),
            Op::Up(i, dup) if !self.up.is_empty() => {
                let i = i % self.up.len();
                let msg = if dup {
                    self.up[i].clone()
                } else {
                    self.up.remove(i).unwrap()
                };
                self.server_receive(&msg);
            }
            Op::Down(i, dup) if !self.down.is_empty() => {
                let i = i % self.down.len();
                let msg = if dup {
                    self.down[i].clone()
                } else {
                    self.down.remove(i).unwrap()
                };
                self.device_receive(&msg);
            }
            Op::Tick(ms) => self.now += ms,
            _ => {}
        }
    }

    /// Delivers everything in order until nothing is in flight or pending.
    fn settle(&mut self) {
        for _ in 0..50 {
            self.now += 100;
            self.send_pending();
            if self.up.is_empty() && self.down.is_empty() {
                break;
            }
            while let Some(msg) = self.up.pop_front() {
                self.server_receive(&msg);
            }
            while let Some(msg) = self.down.pop_front() {
                self.device_receive(&msg);
            }
        }
        // A final full document, as a device's periodic sync would fetch.
        let mut buf = vec![0u8; 4096];
        let n = self.server.encode_document(&mut buf).unwrap();
        let doc = buf[..n].to_vec();
        self.device_receive(&doc);
        while let Some(msg) = self.up.pop_front() {
            self.server_receive(&msg);
        }
        while let Some(msg) = self.down.pop_front() {
            self.device_receive(&msg);
        }
    }

    fn server_value(&self, section: Section, field: usize) -> Option<Value> {
        self.server
            .value(section, &Path::new(PATHS[field]).unwrap())
            .cloned()
    }
}

#[test]
fn the_device_and_the_server_use_one_table_identified_by_its_fingerprint() {
    let table = FieldTable::of::<Thermostat>();
    let id = table.fingerprint();
    assert_ne!(id, 0);
    let mut fleet = iot_fleet::Fleet::default();
    assert!(
        fleet.schema_policies(id).is_none(),
        "unknown until registered"
    );
    assert_eq!(fleet.register_schema(table), id);
    let Some(ClassPolicies::Table(known)) = fleet.schema_policies(id) else {
        panic!("registered");
    };
    for path in PATHS {
        let path = Path::new(path).unwrap();
        assert_eq!(known.policy(&path), table.policy(&path));
    }
    // Another table (one policy changed) has another fingerprint.
    shadow_state! {
        #[derive(Debug, Clone, PartialEq)]
        pub struct Other {
            pub mode: i64 => MODE, "mode", LastWriterWins;
            pub setpoint: i64 => SETPOINT, "setpoint", DeviceWins;
        }
    }
    assert_ne!(FieldTable::of::<Other>().fingerprint(), id);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn concurrent_writes_converge_to_one_document_owned_as_declared(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let mut ends = Ends::new();
        let mut last_operator = [None; 2];
        let mut last_device = [None; 2];
        for op in &ops {
            match *op {
                Op::Operator(f, v) => last_operator[f] = Some(v),
                Op::Device(f, v) => last_device[f] = Some(v),
                _ => {}
            }
            ends.apply(op);
        }
        ends.settle();
        let state = ends.device.state().clone();
        let device_values = [state.mode, state.setpoint];
        for field in 0..2 {
            // One document: the server holds what the device holds, and no delta remains.
            prop_assert_eq!(
                ends.server_value(Section::Reported, field),
                Some(Value::Int(device_values[field])),
                "reported {}", PATHS[field]
            );
            if let Some(desired) = ends.server_value(Section::Desired, field) {
                prop_assert_eq!(desired, Value::Int(device_values[field]), "delta {}", PATHS[field]);
            }
        }
        // CloudWins: the operator's last write is in force whenever there was one.
        if let Some(v) = last_operator[0] {
            prop_assert_eq!(state.mode, v);
        }
        // DeviceWins: the device's own value is in force; the operator never overrides it.
        prop_assert_eq!(state.setpoint, last_device[1].unwrap_or(20));
    }
}
