//! Device and backend running the same engine (issue items 7 and 11, and the README's
//! offline scenario): notifications in any order converge, policies settle conflicts so no
//! delta recurs, and both sides end byte-identical.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic
)]

use iot_shadow::cbor::{self, Header, Kind};
use iot_shadow::iot_core::NodeId;
use iot_shadow::iot_core::time::HybridLogicalClock;
use iot_shadow::typed::{ShadowState, TypedPolicies};
use iot_shadow::{
    DeviceShadow, Handled, Limits, MapStore, Origin, Path, Policy, Resolver, Section, Shadow,
    Stamp, Update, Value, Write, shadow_state,
};
use proptest::prelude::*;

macro_rules! lab_config {
    ($name:ident, $policy:ident) => {
        shadow_state! {
            #[derive(Debug, Clone, PartialEq)]
            pub struct $name {
                pub interval_s: u32 => INTERVAL, "telemetry.interval", $policy;
                pub led: bool => LED, "led", LastWriterWins;
                pub mode: i64 => MODE, "mode", CloudWins;
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self {
                    interval_s: 30,
                    led: false,
                    mode: 0,
                }
            }
        }
    };
}

lab_config!(CloudOwned, CloudWins);
lab_config!(DeviceOwned, DeviceWins);
lab_config!(Shared, LastWriterWins);

const DEVICE: NodeId = NodeId(7);
const CLOUD: NodeId = NodeId(1);

/// The backend: the same engine over a heap store, with the same field policies.
struct Cloud<T> {
    shadow: Shadow<MapStore, TypedPolicies<T>>,
    hlc: HybridLogicalClock,
}

impl<T: ShadowState> Cloud<T> {
    fn new() -> Self {
        Self {
            shadow: Shadow::new(MapStore::new(), TypedPolicies::new(), Limits::DEFAULT),
            hlc: HybridLogicalClock::new(CLOUD, 60_000),
        }
    }

    /// Accepted + (if any) delta notifications for an applied update.
    fn notify(&mut self, update: &Update<'_>, outcome: iot_shadow::Outcome) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        let n = self
            .shadow
            .encode_accepted(update, &outcome, &mut buf)
            .unwrap();
        out.push(buf[..n].to_vec());
        // The ack is delivered: tombstones it carried may go.
        let mut ack = Vec::new();
        cbor::decode_message(&buf[..n], &mut ack).unwrap();
        if let Some(t) = ack
            .iter()
            .filter(|w| w.value.is_null())
            .map(|w| w.stamp.hlc())
            .max()
        {
            self.shadow.prune_tombstones(t);
        }
        if let Some(n) = self.shadow.encode_delta(&mut buf).unwrap() {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn desire(&mut self, p: &str, value: Value, wall_ms: u64) -> Vec<Vec<u8>> {
        let path = Path::new(p).unwrap();
        let policy = self.shadow.resolver().policy(&path);
        let stamp = Stamp::new(self.hlc.now(wall_ms).unwrap(), policy, Origin::Cloud);
        let writes = [Write::new(Section::Desired, path, value, stamp)];
        let update = Update::new(&writes);
        let outcome = self.shadow.apply(&update, wall_ms).unwrap();
        if outcome.changed {
            self.notify(&update, outcome)
        } else {
            Vec::new()
        }
    }

    fn receive(&mut self, bytes: &[u8], wall_ms: u64) -> Vec<Vec<u8>> {
        let mut writes = Vec::new();
        let header = cbor::decode_message(bytes, &mut writes).unwrap();
        for w in &writes {
            let _ = self.hlc.observe(w.stamp.hlc(), wall_ms);
        }
        let update = Update {
            client_token: header.client_token,
            expected_version: header.version,
            writes: &writes,
        };
        let outcome = self.shadow.apply(&update, wall_ms).unwrap();
        self.notify(&update, outcome)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.shadow.to_cbor()
    }
}

type Device<T> = DeviceShadow<T, 16>;

fn device<T: ShadowState + Default>() -> Device<T> {
    DeviceShadow::new(T::default(), DEVICE, Limits::DEFAULT, 60_000)
}

fn deliver<T: ShadowState>(d: &mut Device<T>, msgs: &[Vec<u8>], wall_ms: u64) -> Vec<Handled> {
    msgs.iter()
        .map(|m| d.handle_cbor::<16>(m, wall_ms).unwrap())
        .collect()
}

/// Device and cloud exchange pending updates and notifications until both are quiet.
fn sync<T: ShadowState>(d: &mut Device<T>, c: &mut Cloud<T>, wall_ms: u64) -> usize {
    let mut rounds = 0;
    let mut buf = [0u8; 1024];
    static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let token = format!(
            "tok-{}",
            TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let Some(n) = d.encode_pending(Some(&token), &mut buf).unwrap() else {
            break;
        };
        rounds += 1;
        assert!(rounds < 5, "sync does not settle");
        let replies = c.receive(&buf[..n], wall_ms);
        deliver(d, &replies, wall_ms);
    }
    rounds
}

fn boot<T: ShadowState + Default>(c: &mut Cloud<T>, wall_ms: u64) -> Device<T> {
    let mut d = device::<T>();
    d.handle_cbor::<16>(&c.snapshot(), wall_ms).unwrap();
    d.report_state(wall_ms).unwrap();
    sync(&mut d, c, wall_ms);
    d
}

/// The source material's case: the device runs telemetry every 30 s (set locally while
/// offline), the cloud desires 60 s. Returns (device interval, cloud desired, cloud reported).
fn interval_case<T: ShadowState + Default>(
    cloud_first: bool,
) -> (Value, Option<Value>, Option<Value>, Device<T>, Cloud<T>) {
    let mut cloud = Cloud::<T>::new();
    let mut d = boot::<T>(&mut cloud, 1_000);
    let id = T::field_id("telemetry.interval").unwrap();
    d.set(id, Value::Int(45), 2_000).unwrap();
    sync(&mut d, &mut cloud, 2_000);
    // Offline: the notifications of the cloud's change never arrive.
    let (cloud_at, device_at) = if cloud_first {
        (10_000, 20_000)
    } else {
        (20_000, 10_000)
    };
    let _lost = cloud.desire("telemetry.interval", Value::Int(60), cloud_at);
    d.set(id, Value::Int(30), device_at).unwrap();
    // Reconnect: send what is pending, then fetch the full document (a version gap).
    let now = 30_000;
    sync(&mut d, &mut cloud, now);
    deliver(&mut d, &[cloud.snapshot()], now);
    sync(&mut d, &mut cloud, now);
    let p = Path::new("telemetry.interval").unwrap();
    let device_value = d.state().get_field(id).unwrap();
    let desired = cloud.shadow.value(Section::Desired, &p).cloned();
    let reported = cloud.shadow.value(Section::Reported, &p).cloned();
    (device_value, desired, reported, d, cloud)
}

fn assert_settled<T: ShadowState>(d: &mut Device<T>, c: &mut Cloud<T>) {
    assert!(c.shadow.delta_is_empty(), "delta remains");
    assert!(!d.has_pending());
    let version = c.shadow.version();
    // Further sync rounds and snapshots change nothing: the delta never recurs.
    for wall in [40_000, 50_000] {
        deliver(d, &[c.snapshot()], wall);
        assert_eq!(sync(d, c, wall), 0);
    }
    assert_eq!(c.shadow.version(), version);
    assert_eq!(c.shadow.tombstones(), 0);
    assert_eq!(d.replica().tombstones(), 0);
    assert_eq!(
        d.replica().to_cbor(),
        c.snapshot(),
        "device and cloud differ"
    );
}

#[test]
fn telemetry_interval_conflict_cloud_wins() {
    for cloud_first in [true, false] {
        let (value, desired, reported, mut d, mut c) = interval_case::<CloudOwned>(cloud_first);
        assert_eq!(value, Value::Int(60));
        assert_eq!(desired, Some(Value::Int(60)));
        assert_eq!(reported, Some(Value::Int(60)));
        assert_eq!(d.state().interval_s, 60);
        assert_settled(&mut d, &mut c);
    }
}

#[test]
fn telemetry_interval_conflict_device_wins() {
    for cloud_first in [true, false] {
        let (value, desired, reported, mut d, mut c) = interval_case::<DeviceOwned>(cloud_first);
        assert_eq!(value, Value::Int(30));
        // The desired value was cleared (the removal went out in the ack).
        assert_eq!(desired, None);
        assert_eq!(reported, Some(Value::Int(30)));
        assert_settled(&mut d, &mut c);
    }
}

#[test]
fn telemetry_interval_conflict_last_writer_wins_each_way() {
    let (value, desired, _, mut d, mut c) = interval_case::<Shared>(true);
    assert_eq!(value, Value::Int(30), "the device changed it last");
    assert_eq!(desired, None);
    assert_settled(&mut d, &mut c);
    let (value, desired, _, mut d, mut c) = interval_case::<Shared>(false);
    assert_eq!(value, Value::Int(60), "the cloud changed it last");
    assert_eq!(desired, Some(Value::Int(60)));
    assert_settled(&mut d, &mut c);
}

/// A user resolver: the larger interval wins (a safety rule: never report more often than
/// either side asked), whoever wrote last.
mod custom {
    use super::*;
    use iot_shadow::{Leaf, Winner};

    fn larger_wins(_: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        if desired.value.as_int() > reported.value.as_int() {
            Winner::Desired
        } else {
            Winner::Reported
        }
    }

    shadow_state! {
        #[derive(Debug, Clone, PartialEq)]
        pub struct Cautious {
            pub interval_s: u32 => INTERVAL, "telemetry.interval", Custom;
        }
        custom_resolver = larger_wins;
    }

    impl Default for Cautious {
        fn default() -> Self {
            Self { interval_s: 30 }
        }
    }

    #[test]
    fn telemetry_interval_conflict_user_resolver() {
        // The cloud's 60 beats the device's 30 whichever was written last.
        for cloud_first in [true, false] {
            let (value, desired, reported, mut d, mut c) = interval_case::<Cautious>(cloud_first);
            assert_eq!(value, Value::Int(60));
            assert_eq!(desired, Some(Value::Int(60)));
            assert_eq!(reported, Some(Value::Int(60)));
            assert_settled(&mut d, &mut c);
        }
        // A smaller desired value is declined and cleared, even though it is the newest write.
        let mut cloud = Cloud::<Cautious>::new();
        let mut d = boot::<Cautious>(&mut cloud, 1_000);
        let notes = cloud.desire("telemetry.interval", Value::Int(5), 2_000);
        deliver(&mut d, &notes, 2_000);
        sync(&mut d, &mut cloud, 2_000);
        assert_eq!(d.state().interval_s, 30);
        let p = Path::new("telemetry.interval").unwrap();
        assert_eq!(cloud.shadow.value(Section::Desired, &p), None);
        assert_settled(&mut d, &mut cloud);
    }
}

#[test]
fn readme_scenario_offline_changes_on_both_sides_converge() {
    let mut cloud = Cloud::<Shared>::new();
    let mut d = boot::<Shared>(&mut cloud, 1_000);
    // Offline: the cloud switches the LED on, the device changes its interval.
    let lost = cloud.desire("led", Value::Bool(true), 5_000);
    assert_eq!(lost.len(), 2, "accepted and delta were published, and lost");
    d.set(Shared::INTERVAL, Value::Int(10), 6_000).unwrap();
    // Reconnect: the device sends its change; the cloud's answer reveals the gap.
    let mut buf = [0u8; 512];
    let n = d.encode_pending(None, &mut buf).unwrap().unwrap();
    let replies = cloud.receive(&buf[..n], 7_000);
    let handled = deliver(&mut d, &replies, 7_000);
    assert_eq!(handled[0], Handled::AppliedWithGap);
    deliver(&mut d, &[cloud.snapshot()], 7_000);
    sync(&mut d, &mut cloud, 7_000);
    assert_eq!(
        d.state(),
        &Shared {
            interval_s: 10,
            led: true,
            mode: 0
        }
    );
    assert_eq!(d.replica().to_cbor(), cloud.snapshot());
    assert!(cloud.shadow.delta_is_empty());
}

#[test]
fn stale_and_repeated_notifications_are_ignored_and_same_version_kinds_both_apply() {
    let mut cloud = Cloud::<Shared>::new();
    let mut d = boot::<Shared>(&mut cloud, 1_000);
    let first = cloud.desire("mode", Value::Int(1), 2_000);
    let second = cloud.desire("mode", Value::Int(2), 3_000);
    assert_eq!(first.len(), 2);
    // accepted(v) then delta(v): both handled.
    assert_eq!(
        deliver(&mut d, &first, 3_000),
        [Handled::Applied, Handled::Applied]
    );
    // delta(v+1) before accepted(v+1): both handled too.
    let reversed = [second[1].clone(), second[0].clone()];
    assert_eq!(
        deliver(&mut d, &reversed, 3_000),
        [Handled::Applied, Handled::Applied]
    );
    // Repeats and older versions are ignored.
    let again = deliver(&mut d, &second, 3_000);
    assert_eq!(again, [Handled::Ignored, Handled::Ignored]);
    assert_eq!(
        deliver(&mut d, &first, 3_000),
        [Handled::Ignored, Handled::Ignored]
    );
    assert_eq!(d.state().mode, 2);
    // The update kind is never a notification.
    let header = Header {
        kind: Kind::Update,
        version: Some(99),
        client_token: None,
    };
    assert_eq!(d.handle(&header, &[], 3_000).unwrap(), Handled::Ignored);
}

/// Runs one history: the cloud changes desired values, device A sees any interleaving,
/// duplication or reordering of the notifications and then the full document, device B sees
/// only the full document. Returns whether both ended identical.
fn converges<T: ShadowState + Default + PartialEq + std::fmt::Debug>(
    changes: &[(usize, i64)],
    picks: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    let mut cloud = Cloud::<T>::new();
    // A previous life of the device left reported values in the cloud.
    let _ = boot::<T>(&mut cloud, 1_000);
    let mut notifications = Vec::new();
    for (i, (field, v)) in changes.iter().enumerate() {
        let (p, value) = match field {
            0 => ("telemetry.interval", Value::Int(10 + v)),
            1 => ("led", Value::Bool(*v % 2 == 0)),
            _ => ("mode", if *v == 3 { Value::Null } else { Value::Int(*v) }),
        };
        notifications.extend(cloud.desire(p, value, 2_000 + i as u64 * 1_000));
    }
    let snapshot = cloud.snapshot();
    let mut a = device::<T>();
    if !notifications.is_empty() {
        for pick in picks {
            let m: &Vec<u8> = pick.get(&notifications);
            a.handle_cbor::<16>(m, 50_000).unwrap();
        }
    }
    a.handle_cbor::<16>(&snapshot, 50_000).unwrap();
    let mut b = device::<T>();
    b.handle_cbor::<16>(&snapshot, 50_000).unwrap();
    prop_assert_eq!(a.state(), b.state());
    prop_assert_eq!(a.last_version(), b.last_version());
    prop_assert_eq!(a.replica().to_cbor(), b.replica().to_cbor());
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    a.pending(&mut pa).unwrap();
    b.pending(&mut pb).unwrap();
    prop_assert_eq!(pa, pb);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any interleaving, duplication or reordering of notifications followed by one full
    /// document ends in the same device state as the full document alone, whichever side
    /// owns the fields.
    #[test]
    fn any_notification_order_then_snapshot_converges(
        changes in prop::collection::vec((0usize..3, 0i64..4), 1..8),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        owner in 0u8..3,
    ) {
        match owner {
            0 => converges::<Shared>(&changes, &picks)?,
            1 => converges::<CloudOwned>(&changes, &picks)?,
            _ => converges::<DeviceOwned>(&changes, &picks)?,
        }
    }
}

#[test]
fn device_capacity_overflow_is_an_error_not_a_panic() {
    let mut cloud = Cloud::<Shared>::new();
    let _ = boot::<Shared>(&mut cloud, 1_000);
    for (i, p) in ["x1", "x2", "x3", "x4"].iter().enumerate() {
        cloud.desire(p, Value::Int(i as i64), 2_000 + i as u64);
    }
    let mut small: DeviceShadow<Shared, 4> =
        DeviceShadow::new(Shared::default(), DEVICE, Limits::DEFAULT, 60_000);
    let before = small.replica().to_cbor();
    let doc = cloud.snapshot();
    assert_eq!(
        small.handle_cbor::<16>(&doc, 5_000),
        Err(iot_shadow::ShadowError::StoreFull { capacity: 4 })
    );
    // Too many leaves for the decode buffer: a decode error.
    assert!(matches!(
        small.handle_cbor::<2>(&doc, 5_000),
        Err(iot_shadow::ShadowError::Decode(_))
    ));
    assert_eq!(small.replica().to_cbor(), before);
    assert_eq!(small.state(), &Shared::default());
    assert_eq!(small.last_version(), 0);

    // The caller's sink is too small for the pending writes: the sink is full, not the store.
    let mut fresh = device::<Shared>();
    fresh.report_state(6_000).unwrap();
    let mut all = Vec::new();
    assert!(fresh.pending(&mut all).unwrap() >= 2);
    let mut one: heapless::Vec<Write, 1> = heapless::Vec::new();
    let full = fresh.pending(&mut one).unwrap_err();
    assert_eq!(full, iot_shadow::ShadowError::SinkFull { written: 1 });
    assert_eq!(
        iot_shadow::iot_core::Error::kind(&full),
        iot_shadow::iot_core::ErrorKind::Capacity
    );
}

#[test]
fn both_ends_refuse_writes_stamped_beyond_the_drift_bound() {
    const HOUR: u64 = 3_600_000;
    // The device: a delta from a cloud whose clock runs an hour ahead is refused whole.
    let mut cloud = Cloud::<Shared>::new();
    let mut d = boot(&mut cloud, 1_000);
    let before = d.state().clone();
    let ahead = cloud.desire("led", Value::Bool(true), HOUR + 1_000);
    let refused = d.handle_cbor::<16>(&ahead[ahead.len() - 1], 1_000);
    assert_eq!(refused, Err(iot_shadow::ShadowError::ClockDrift));
    assert_eq!(d.state(), &before);
    // Within the bound it applies.
    let mut cloud = Cloud::<Shared>::new();
    let mut d = boot(&mut cloud, 1_000);
    let near = cloud.desire("led", Value::Bool(true), 30_000);
    deliver(&mut d, &near[near.len() - 1..], 1_000);
    assert!(d.state().led);

    // The backend: an update with one write an hour ahead changes nothing.
    let mut server: Shadow<MapStore> = Shadow::new(
        MapStore::new(),
        Policy::LastWriterWins,
        Limits::DEFAULT.with_max_drift(60_000),
    );
    let write = |at_ms: u64| {
        Write::new(
            Section::Reported,
            Path::new("led").unwrap(),
            Value::Bool(true),
            Stamp::new(
                iot_shadow::iot_core::time::HlcTimestamp::from_parts(at_ms, 0, DEVICE).unwrap(),
                Policy::LastWriterWins,
                Origin::Device,
            ),
        )
    };
    let before = server.to_cbor();
    assert_eq!(
        server.apply(&Update::new(&[write(HOUR + 1_000)]), 1_000),
        Err(iot_shadow::ShadowError::ClockDrift)
    );
    assert_eq!((server.to_cbor(), server.version()), (before, 0));
    assert!(
        server
            .apply(&Update::new(&[write(30_000)]), 1_000)
            .unwrap()
            .changed
    );
}
