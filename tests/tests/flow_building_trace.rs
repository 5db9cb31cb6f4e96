//! The source material's HVAC case, reproduced on a synthetic building trace: a day of
//! temperatures from 4 zones x 5 sensors sampled every 10 s goes through report-on-change at
//! the edge (+/-0.5 degC, 10-minute heartbeat) and one-minute zone and floor aggregation plus
//! anomaly detection at the fog. The test counts messages per tier and checks that the
//! reduction is of the order the source reports (80% at the edge, 92% at the fog), computed
//! from the trace, and that the floor average the cloud receives stays close to the truth.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::panic,
    missing_docs
)]

use iot_core::flow::{
    AnomalyConfig, AnomalyDetector, FlowStats, KeyedWindow, KeyedWindowAggregator, ReportOnChange,
    Tier, WindowSummary,
};
use iot_core::telemetry::{Measurement, Reading};
use iot_fleet::retention::{QueryResult, RetentionPolicy, SeriesStore};

const ZONES: u8 = 4;
const SENSORS_PER_ZONE: u8 = 5;
const SENSORS: usize = (ZONES as usize) * (SENSORS_PER_ZONE as usize);
const SAMPLE_MS: u64 = 10_000;
const DAY_MS: u64 = 24 * 3_600_000;
const WINDOW_MS: u64 = 60_000;
const DEADBAND: f32 = 0.5;
const HEARTBEAT_MS: u64 = 600_000;
/// Measurement noise of a cheap digital sensor (standard deviation, degC).
const NOISE_SIGMA: f64 = 0.25;

/// Where the injected faults are.
const STUCK_SENSOR: usize = 7;
const STUCK_FROM_MS: u64 = 10 * 3_600_000;
const STUCK_UNTIL_MS: u64 = 12 * 3_600_000;
const SPIKE_SENSOR: usize = 13;
const SPIKE_AT_MS: u64 = 15 * 3_600_000;

/// A small deterministic generator (SplitMix64), so the trace is the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Roughly normal with standard deviation `sigma` (sum of four uniforms).
    fn noise(&mut self, sigma: f64) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        // Four uniforms on [-1, 1) have variance 4/3.
        s * sigma / (4.0f64 / 3.0).sqrt()
    }
}

/// The true temperature of a sensor: a daily swing, the HVAC's on/off cycle, a per-sensor
/// offset and measurement noise; plus the injected faults.
struct Building {
    rng: SplitMix,
    offsets: [f64; SENSORS],
    stuck_value: Option<f32>,
}

impl Building {
    fn new() -> Self {
        let mut rng = SplitMix(0x005E_EDB0_11D1);
        let mut offsets = [0.0; SENSORS];
        for o in &mut offsets {
            *o = rng.unit() * 0.8;
        }
        Self {
            rng,
            offsets,
            stuck_value: None,
        }
    }

    fn sample(&mut self, sensor: usize, at_ms: u64) -> f32 {
        let zone = sensor / usize::from(SENSORS_PER_ZONE);
        let hours = at_ms as f64 / 3_600_000.0;
        let daily = 1.5 * (core::f64::consts::TAU * (hours - 9.0) / 24.0).sin();
        // HVAC cycles every 20 minutes, phase-shifted per zone.
        let cycle_pos = ((at_ms + zone as u64 * 300_000) % 1_200_000) as f64 / 1_200_000.0;
        let hvac = 0.6 * (1.0 - 2.0 * (2.0 * cycle_pos - 1.0).abs());
        let truth = 21.0 + zone as f64 * 0.7 + self.offsets[sensor] + daily + hvac;
        let value = (truth + self.rng.noise(NOISE_SIGMA)) as f32;
        if sensor == STUCK_SENSOR && (STUCK_FROM_MS..STUCK_UNTIL_MS).contains(&at_ms) {
            return *self.stuck_value.get_or_insert(value);
        }
        if sensor == SPIKE_SENSOR && at_ms == SPIKE_AT_MS {
            return value + 12.0;
        }
        value
    }
}

struct Outcome {
    stats: FlowStats,
    /// Per window: the raw floor mean and the floor mean the cloud received.
    floor_means: Vec<(u64, f64, f64)>,
    /// The floor summaries the cloud received.
    floor_windows: Vec<WindowSummary>,
    /// Sensors and times of anomaly alerts.
    stuck_alerts: Vec<(usize, u64)>,
    jump_alerts: Vec<(usize, u64)>,
}

fn run_trace() -> Outcome {
    let mut building = Building::new();
    let mut edge: Vec<ReportOnChange> = (0..SENSORS)
        .map(|_| {
            ReportOnChange::new(DEADBAND)
                .unwrap()
                .with_max_silence_ms(HEARTBEAT_MS)
        })
        .collect();
    let config = AnomalyConfig {
        range: Some((5.0, 40.0)),
        stuck_after: Some(3),
        max_jump: Some(4.0),
    };
    let mut detectors: Vec<AnomalyDetector> = (0..SENSORS)
        .map(|_| AnomalyDetector::new(config).unwrap())
        .collect();
    // Keyed by (zone, sensor): the zones and the floor are unions of keys.
    let mut fog: KeyedWindowAggregator<(u8, u8), SENSORS> = KeyedWindowAggregator::new(WINDOW_MS)
        .unwrap()
        .carry_forward(true);

    let mut stats = FlowStats::new();
    let mut raw_window = (0u64, 0.0f64, 0u64); // start, sum, count
    let mut raw_means = Vec::new();
    let mut floor_windows = Vec::new();
    let mut stuck_alerts = Vec::new();
    let mut jump_alerts = Vec::new();

    let forward_window = |w: KeyedWindow<(u8, u8), SENSORS>, stats: &mut FlowStats| {
        // The fog sends one summary per zone and one for the floor.
        for zone in 0..ZONES {
            let zone_aggregate = w.combined_where(|&(z, _)| z == zone);
            assert!(zone_aggregate.count() > 0, "carry-forward keeps every zone");
            stats.record_out(Tier::Fog, 1);
        }
        stats.record_out(Tier::Fog, 1);
        WindowSummary {
            start_ms: w.start_ms,
            window_ms: w.window_ms,
            quantity: w.quantity,
            aggregate: w.combined(),
        }
    };

    let mut at_ms = 0;
    while at_ms < DAY_MS {
        // The gateway's clock closes each minute, whether or not a reading arrived.
        if let Some(window) = fog.advance_to(at_ms) {
            floor_windows.push(forward_window(window, &mut stats));
        }
        for sensor in 0..SENSORS {
            let value = building.sample(sensor, at_ms);
            let reading = Reading::new(at_ms, Measurement::Temperature { celsius: value });
            // Ground truth for the accuracy check.
            if at_ms / WINDOW_MS * WINDOW_MS != raw_window.0 {
                raw_means.push((raw_window.0, raw_window.1 / raw_window.2 as f64));
                raw_window = (at_ms / WINDOW_MS * WINDOW_MS, 0.0, 0);
            }
            raw_window.1 += f64::from(value);
            raw_window.2 += 1;

            stats.record_in(Tier::Edge, 1);
            if !edge[sensor].offer(&reading).unwrap().is_report() {
                continue;
            }
            stats.record_out(Tier::Edge, 1);
            stats.record_in(Tier::Fog, 1);

            let anomalies = detectors[sensor].check(&reading).unwrap();
            if anomalies.any() {
                // Alerts go upstream immediately, on top of the summaries.
                stats.record_out(Tier::Fog, 1);
                if anomalies.stuck {
                    stuck_alerts.push((sensor, at_ms));
                }
                if anomalies.jump {
                    jump_alerts.push((sensor, at_ms));
                }
            }
            let key = (
                (sensor / usize::from(SENSORS_PER_ZONE)) as u8,
                (sensor % usize::from(SENSORS_PER_ZONE)) as u8,
            );
            if let Some(window) = fog.push(key, &reading).unwrap() {
                floor_windows.push(forward_window(window, &mut stats));
            }
        }
        at_ms += SAMPLE_MS;
    }
    raw_means.push((raw_window.0, raw_window.1 / raw_window.2 as f64));
    if let Some(window) = fog.flush() {
        floor_windows.push(forward_window(window, &mut stats));
    }
    let fog_out = stats.tier(Tier::Fog).messages_out;
    stats.record_in(Tier::Cloud, fog_out);

    let floor_means = floor_windows
        .iter()
        .map(|w| (w.start_ms, w.aggregate.mean().unwrap()))
        .map(|(start, fog_mean)| {
            let raw = raw_means
                .iter()
                .find(|(s, _)| *s == start)
                .map(|(_, m)| *m)
                .unwrap();
            (start, raw, fog_mean)
        })
        .collect();
    Outcome {
        stats,
        floor_means,
        floor_windows,
        stuck_alerts,
        jump_alerts,
    }
}

#[test]
fn edge_and_fog_reduce_a_building_day_by_the_order_the_source_reports() {
    let out = run_trace();
    let raw = out.stats.tier(Tier::Edge).messages_in;
    assert_eq!(raw, SENSORS as u64 * DAY_MS / SAMPLE_MS);

    let edge = out.stats.reduction(Tier::Edge).unwrap();
    let fog_cumulative = out.stats.cumulative_reduction(Tier::Fog).unwrap();
    let fog_own = out.stats.reduction(Tier::Fog).unwrap();
    eprintln!(
        "raw {raw}, edge out {}, fog out {}: edge {:.1}%, fog own {:.1}%, fog cumulative {:.1}%",
        out.stats.tier(Tier::Edge).messages_out,
        out.stats.tier(Tier::Fog).messages_out,
        edge * 100.0,
        fog_own * 100.0,
        fog_cumulative * 100.0
    );
    // The source material: 80% at the edge, 92% at the fog (of the raw volume).
    assert!(edge >= 0.75, "edge reduction {edge:.3}");
    assert!(
        fog_cumulative >= 0.90,
        "fog cumulative reduction {fog_cumulative:.3}"
    );
    assert!(
        fog_own > 0.0,
        "the fog forwards less than it receives: {fog_own:.3}"
    );
    assert!(fog_cumulative > edge);
    // The cloud receives exactly what the fog sent.
    assert_eq!(
        out.stats.tier(Tier::Cloud).messages_in,
        out.stats.tier(Tier::Fog).messages_out
    );
}

#[test]
fn the_cloud_floor_average_stays_within_the_deadband_of_the_truth() {
    let out = run_trace();
    assert_eq!(out.floor_means.len() as u64, DAY_MS / WINDOW_MS);
    let worst = out
        .floor_means
        .iter()
        .map(|(_, raw, fog)| (raw - fog).abs())
        .fold(0.0f64, f64::max);
    eprintln!(
        "worst floor-average error over {} windows: {worst:.3} degC",
        out.floor_means.len()
    );
    assert!(
        worst <= f64::from(DEADBAND),
        "worst floor-average error {worst:.3} degC"
    );
}

#[test]
fn the_fog_catches_the_injected_stuck_sensor_and_spike() {
    let out = run_trace();
    // A stuck sensor is only heard through heartbeats at the edge, so it is flagged after
    // three identical heartbeats: within half an hour of sticking, and never for others.
    let first_stuck = out
        .stuck_alerts
        .iter()
        .find(|(s, _)| *s == STUCK_SENSOR)
        .map(|(_, at)| *at)
        .expect("stuck sensor flagged");
    assert!(first_stuck > STUCK_FROM_MS && first_stuck <= STUCK_FROM_MS + 3 * HEARTBEAT_MS);
    assert!(
        out.stuck_alerts
            .iter()
            .all(|(s, at)| *s == STUCK_SENSOR && (STUCK_FROM_MS..STUCK_UNTIL_MS).contains(at))
    );
    // The spike jumps up and back down.
    assert!(out.jump_alerts.contains(&(SPIKE_SENSOR, SPIKE_AT_MS)));
    assert!(
        out.jump_alerts
            .contains(&(SPIKE_SENSOR, SPIKE_AT_MS + SAMPLE_MS))
    );
}

#[test]
fn the_backend_keeps_the_floor_summaries_as_hourly_rollups_close_to_the_truth() {
    let out = run_trace();
    let mut store: SeriesStore<&str> = SeriesStore::new(RetentionPolicy::default()).unwrap();
    for w in &out.floor_windows {
        store.insert_summary("floor-1/temperature", w).unwrap();
    }
    store.prune(DAY_MS);
    // Summaries carry no raw samples, so every query is answered hourly.
    let QueryResult::Rollup(hours) = store.query(&"floor-1/temperature", 0, DAY_MS, usize::MAX)
    else {
        panic!("summaries are kept as rollups");
    };
    assert_eq!(hours.len(), 24);
    for (start, hour) in hours {
        // The truth: the mean of the raw floor means of the hour's minutes (equal weights).
        let minutes: Vec<f64> = out
            .floor_means
            .iter()
            .filter(|(s, _, _)| (start..start + 3_600_000).contains(s))
            .map(|(_, raw, _)| *raw)
            .collect();
        assert_eq!(minutes.len(), 60);
        let truth = minutes.iter().sum::<f64>() / 60.0;
        let kept = hour.mean().unwrap();
        assert!(
            (truth - kept).abs() <= f64::from(DEADBAND),
            "hour {start}: {kept:.3} vs {truth:.3}"
        );
    }
}
