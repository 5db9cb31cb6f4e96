//! A fog gateway's store-and-forward uplink: per-stream window aggregation (`iot_core::flow`)
//! whose closed windows travel upstream as CBOR [`FogAggregate`]s through an
//! `iot_transport` [`ReliableEndpoint`], so they wait in its bounded outbox while the uplink
//! is down and reach the cloud exactly once when it returns.
//!
//! The outbox bounds what an outage can cost: when it is full its overflow policy decides, and
//! every aggregate that does not make it is counted ([`FogGateway::dropped`]), never lost
//! silently. On the cloud side, [`FogAggregate::decode`] and [`FogAggregate::store_into`] put
//! each aggregate into the [`SeriesStore`] rollups. A rollup merge is not idempotent, which is
//! why aggregates should travel with [`QoS::ExactlyOnce`] (the default here).
//!
//! ```
//! use iot_core::flow::Quantity;
//! use iot_core::telemetry::{Measurement, Reading};
//! use iot_core::{DeviceId, ManualClock};
//! use iot_fleet::gateway::{FogAggregate, FogGateway, StreamKey};
//! use iot_fleet::retention::{RetentionPolicy, SeriesStore};
//! use iot_transport::outbox::OverflowPolicy;
//! use iot_transport::qos::ReliableEndpoint;
//! use iot_transport::retry::BackoffPolicy;
//! use iot_transport::sim::{SimConfig, SimNetwork};
//! use iot_transport::SplitMix64;
//!
//! let clock = ManualClock::new(0);
//! let net: SimNetwork<_, 16, 128> = SimNetwork::new(&clock, SimConfig::ideal(5), 1);
//! let (up, _cloud_end) = net.endpoints();
//! let uplink: ReliableEndpoint<_, _, 8, 128, 16> = ReliableEndpoint::new(
//!     up, DeviceId::new("fog-gw")?, OverflowPolicy::DropOldest,
//!     BackoffPolicy::new(100, 5_000), SplitMix64::new(7));
//! let mut gateway = FogGateway::new(uplink, 60_000)?;
//!
//! let sensor = DeviceId::new("temp-1")?;
//! let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
//! gateway.ingest(sensor, &t(1_000, 20.0), 1_000)?;
//! gateway.ingest(sensor, &t(30_000, 22.0), 30_000)?;
//! assert_eq!(gateway.advance_to(60_000)?, 1); // the first minute closes and is queued
//! assert_eq!(gateway.uplink().outbox().len(), 1);
//!
//! // What the cloud does with the payload it receives.
//! let entry = gateway.uplink().outbox().iter().next().ok_or("queued")?;
//! let envelope = iot_core::EnvelopeRef::decode(&entry.data)?;
//! let aggregate = FogAggregate::decode(envelope.payload)?;
//! let mut store = SeriesStore::new(RetentionPolicy::default())?;
//! aggregate.store_into(&mut store)?;
//! let key = StreamKey { source: sensor, quantity: aggregate.summary.quantity };
//! assert_eq!(store.rollups(&key, 0, 3_600_000)[0].1.mean(), Some(21.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use alloc::collections::BTreeMap;

use iot_core::codec::{self, DecodeError, EncodeError};
use iot_core::flow::{Aggregate, FlowError, Quantity, WindowAggregator, WindowSummary};
use iot_core::telemetry::Reading;
use iot_core::{DeviceId, EnvelopeRef, Error, ErrorKind, MessageId, MessageKind, QoS};
use iot_transport::outbox::{OutboxError, Priority};
use iot_transport::qos::{EndpointError, PollReport, ReliableEndpoint};
use iot_transport::{Link, Rng};
use minicbor::{CborLen, Decode, Decoder, Encode, Encoder};

use crate::retention::{RetentionError, SeriesStore};

/// One stream of a fog gateway, and the key of its series in the cloud's [`SeriesStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StreamKey {
    /// The sensor that produced the readings.
    pub source: DeviceId,
    /// What they measure.
    pub quantity: Quantity,
}

/// One closed window of one sensor's readings: the payload a fog gateway sends upstream.
///
/// CBOR form: `[source, start_ms, window_ms, code, custom_id, count, min, max, sum]`, with
/// `min` and `max` as 32-bit floats (`0.0` for an empty window) and `sum` as a 64-bit float.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FogAggregate {
    /// The sensor whose readings were aggregated.
    pub source: DeviceId,
    /// The window and its aggregate.
    pub summary: WindowSummary,
}

impl FogAggregate {
    /// The stream this aggregate belongs to.
    pub const fn key(&self) -> StreamKey {
        StreamKey {
            source: self.source,
            quantity: self.summary.quantity,
        }
    }

    /// Encodes the aggregate as canonical CBOR at the start of `buf`.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        codec::encode_into(self, buf)
    }

    /// Decodes an aggregate, refusing inconsistent parts (see [`Aggregate::from_parts`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }

    /// Merges the aggregate into its stream's rollup bucket in the cloud's store.
    pub fn store_into(&self, store: &mut SeriesStore<StreamKey>) -> Result<(), RetentionError> {
        store.insert_summary(self.key(), &self.summary)
    }
}

const F32_LEN: usize = 5;
const F64_LEN: usize = 9;

impl<C> Encode<C> for FogAggregate {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let s = &self.summary;
        let a = &s.aggregate;
        let sum = a.sum();
        if !sum.is_finite() {
            return Err(minicbor::encode::Error::message("non-finite sum"));
        }
        e.array(9)?;
        self.source.encode(e, ctx)?;
        e.u64(s.start_ms)?
            .u64(s.window_ms)?
            .u8(s.quantity.code)?
            .u16(s.quantity.custom_id)?
            .u64(a.count())?;
        codec::encode_f32(e, a.min().unwrap_or(0.0))?;
        codec::encode_f32(e, a.max().unwrap_or(0.0))?;
        e.f64(if sum == 0.0 { 0.0 } else { sum })?;
        Ok(())
    }
}

impl<C> CborLen<C> for FogAggregate {
    fn cbor_len(&self, ctx: &mut C) -> usize {
        let s = &self.summary;
        [
            1,
            self.source.cbor_len(ctx),
            s.start_ms.cbor_len(ctx),
            s.window_ms.cbor_len(ctx),
            s.quantity.code.cbor_len(ctx),
            s.quantity.custom_id.cbor_len(ctx),
            s.aggregate.count().cbor_len(ctx),
            F32_LEN,
            F32_LEN,
            F64_LEN,
        ]
        .into_iter()
        .fold(0usize, usize::saturating_add)
    }
}

impl<'b, C> Decode<'b, C> for FogAggregate {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        if d.array()? != Some(9) {
            return Err(codec::invalid_value());
        }
        let source = DeviceId::decode(d, ctx)?;
        let start_ms = d.u64()?;
        let window_ms = d.u64()?;
        let quantity = Quantity {
            code: d.u8()?,
            custom_id: d.u16()?,
        };
        let count = d.u64()?;
        let min = codec::decode_f32(d)?;
        let max = codec::decode_f32(d)?;
        let sum = d.f64()?;
        let aggregate =
            Aggregate::from_parts(count, min, max, sum).map_err(|_| codec::invalid_value())?;
        if window_ms == 0 {
            return Err(codec::invalid_value());
        }
        Ok(Self {
            source,
            summary: WindowSummary {
                start_ms,
                window_ms,
                quantity,
                aggregate,
            },
        })
    }
}

/// Why the gateway refused a reading or could not queue an aggregate.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The reading was refused (not a valid measurement, or older than its stream's current
    /// window); nothing changed.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The aggregate does not fit in the outbox's message size once encoded (counted in
    /// [`GatewayStats::unencodable`]).
    #[error("aggregate does not fit in an outbox slot")]
    Encode,
    /// The outbox refused the aggregate (counted in its statistics).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl Error for GatewayError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Flow(e) => e.kind(),
            Self::Encode => ErrorKind::Capacity,
            Self::Outbox(e) => e.kind(),
        }
    }
}

/// What the gateway has done, beside its uplink's outbox and endpoint statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GatewayStats {
    /// Readings accepted from sensors.
    pub readings: u64,
    /// Windows closed (each one aggregate handed to the outbox).
    pub aggregates: u64,
    /// Aggregates too large for an outbox slot: never queued.
    pub unencodable: u64,
}

impl GatewayStats {
    /// Fraction of messages the gateway saved: `1 - aggregates / readings`.
    pub fn reduction(&self) -> Option<f64> {
        iot_core::flow::TierCounts {
            messages_in: self.readings,
            messages_out: self.aggregates,
        }
        .reduction()
    }
}

/// A fog gateway: one [`WindowAggregator`] per sensor and quantity, and an uplink whose outbox
/// stores closed windows until the cloud acknowledges them. See the [module docs](self).
///
/// Each aggregate travels as one [`MessageKind::Telemetry`] envelope from the uplink's device
/// id, at [`Priority::Normal`], its payload a CBOR [`FogAggregate`]. Windows without readings
/// produce nothing.
#[derive(Debug)]
pub struct FogGateway<L, R, const N: usize, const M: usize, const D: usize> {
    uplink: ReliableEndpoint<L, R, N, M, D>,
    window_ms: u64,
    qos: QoS,
    streams: BTreeMap<StreamKey, WindowAggregator>,
    stats: GatewayStats,
}

impl<L: Link, R: Rng, const N: usize, const M: usize, const D: usize> FogGateway<L, R, N, M, D> {
    /// A gateway aggregating over windows of `window_ms` (not zero) and forwarding through
    /// `uplink` with [`QoS::ExactlyOnce`].
    pub fn new(uplink: ReliableEndpoint<L, R, N, M, D>, window_ms: u64) -> Result<Self, FlowError> {
        WindowAggregator::new(window_ms)?;
        Ok(Self {
            uplink,
            window_ms,
            qos: QoS::ExactlyOnce,
            streams: BTreeMap::new(),
            stats: GatewayStats::default(),
        })
    }

    /// Forwards with `qos` instead (at-least-once may store an aggregate twice).
    #[must_use]
    pub const fn with_qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Counters so far.
    pub const fn stats(&self) -> GatewayStats {
        self.stats
    }

    /// Aggregates that will never reach the cloud: too large, or refused, evicted or expired
    /// by the outbox.
    pub fn dropped(&self) -> u64 {
        self.stats
            .unencodable
            .saturating_add(u64::from(self.uplink.outbox().stats().dropped()))
    }

    /// The uplink (outbox, endpoint statistics, QoS monitor).
    pub const fn uplink(&self) -> &ReliableEndpoint<L, R, N, M, D> {
        &self.uplink
    }

    /// The uplink, mutably (outbox persistence, medium control).
    pub fn uplink_mut(&mut self) -> &mut ReliableEndpoint<L, R, N, M, D> {
        &mut self.uplink
    }

    /// Adds `source`'s reading to its stream; when it opens a later window, the previous one
    /// is queued upstream and its message id returned.
    ///
    /// [`GatewayError::Flow`] means the reading was refused; [`GatewayError::Encode`] and
    /// [`GatewayError::Outbox`] mean the reading was taken but the closed window could not
    /// be queued (and was counted in [`FogGateway::dropped`]).
    pub fn ingest(
        &mut self,
        source: DeviceId,
        reading: &Reading,
        now_ms: u64,
    ) -> Result<Option<MessageId>, GatewayError> {
        let key = StreamKey {
            source,
            quantity: Quantity::of(&reading.measurement),
        };
        let closed = match self.streams.get_mut(&key) {
            Some(stream) => stream.push(reading)?,
            None => {
                let mut stream = WindowAggregator::new(self.window_ms)?;
                stream.push(reading)?;
                self.streams.insert(key, stream);
                None
            }
        };
        self.stats.readings = self.stats.readings.saturating_add(1);
        closed
            .map(|summary| self.forward(source, summary, now_ms))
            .transpose()
    }

    /// Closes every window that ended by `now_ms` and queues it; returns how many were
    /// queued. Call it at least once per window so quiet streams report on time. On an error
    /// the remaining windows are still queued, and the first error is returned.
    pub fn advance_to(&mut self, now_ms: u64) -> Result<usize, GatewayError> {
        self.close_all(now_ms, |stream| stream.advance_to(now_ms))
    }

    /// Closes and queues every open window (before a shutdown or at the end of a batch).
    pub fn flush(&mut self, now_ms: u64) -> Result<usize, GatewayError> {
        self.close_all(now_ms, WindowAggregator::flush)
    }

    /// Drives the uplink: receives acknowledgements and downstream messages (handed to
    /// `deliver`), and sends what is due. Messages wait in the outbox while the link is down
    /// and all become due when it comes back.
    pub async fn poll<F>(
        &mut self,
        now_ms: u64,
        deliver: F,
    ) -> Result<PollReport, EndpointError<L::Error>>
    where
        F: FnMut(EnvelopeRef<'_>),
    {
        self.uplink.poll(now_ms, deliver).await
    }

    fn close_all<F>(&mut self, now_ms: u64, mut close: F) -> Result<usize, GatewayError>
    where
        F: FnMut(&mut WindowAggregator) -> Option<WindowSummary>,
    {
        let closed: alloc::vec::Vec<_> = self
            .streams
            .iter_mut()
            .filter_map(|(key, stream)| close(stream).map(|s| (key.source, s)))
            .collect();
        let mut queued = 0usize;
        let mut first_error = None;
        for (source, summary) in closed {
            match self.forward(source, summary, now_ms) {
                Ok(_) => queued = queued.saturating_add(1),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(queued), Err)
    }

    fn forward(
        &mut self,
        source: DeviceId,
        summary: WindowSummary,
        now_ms: u64,
    ) -> Result<MessageId, GatewayError> {
        self.stats.aggregates = self.stats.aggregates.saturating_add(1);
        let mut payload = [0u8; M];
        let encoded = FogAggregate { source, summary }
            .encode_into(&mut payload)
            .ok()
            .and_then(|n| payload.get(..n));
        let Some(bytes) = encoded else {
            self.stats.unencodable = self.stats.unencodable.saturating_add(1);
            return Err(GatewayError::Encode);
        };
        match self.uplink.enqueue(
            MessageKind::Telemetry,
            self.qos,
            Priority::Normal,
            bytes,
            now_ms,
        ) {
            Ok(id) => Ok(id),
            Err(EndpointError::Outbox(e)) => Err(GatewayError::Outbox(e)),
            Err(_) => {
                // The envelope around the payload does not fit in `M` bytes.
                self.stats.unencodable = self.stats.unencodable.saturating_add(1);
                Err(GatewayError::Encode)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::telemetry::Measurement;

    fn aggregate() -> FogAggregate {
        let mut a = Aggregate::of(20.5).unwrap();
        a.add(-3.25).unwrap();
        FogAggregate {
            source: DeviceId::new("temp-1").unwrap(),
            summary: WindowSummary {
                start_ms: 3_600_000,
                window_ms: 60_000,
                quantity: Quantity::of(&Measurement::Temperature { celsius: 0.0 }),
                aggregate: a,
            },
        }
    }

    #[test]
    fn aggregates_round_trip_through_cbor_with_exact_length() {
        let a = aggregate();
        let mut buf = [0u8; 64];
        let n = a.encode_into(&mut buf).unwrap();
        assert_eq!(n, codec::encoded_len(&a));
        assert_eq!(FogAggregate::decode(&buf[..n]).unwrap(), a);
        let mut short = [0u8; 8];
        assert!(a.encode_into(&mut short).is_err());
    }

    #[test]
    fn refused_readings_change_nothing_and_streams_are_kept_apart() {
        use iot_core::ManualClock;
        use iot_transport::SplitMix64;
        use iot_transport::outbox::OverflowPolicy;
        use iot_transport::retry::BackoffPolicy;
        use iot_transport::sim::{SimConfig, SimNetwork};

        let clock = ManualClock::new(0);
        let net: SimNetwork<_, 8, 128> = SimNetwork::new(&clock, SimConfig::ideal(5), 1);
        let (up, _) = net.endpoints();
        let uplink: ReliableEndpoint<_, _, 8, 128, 8> = ReliableEndpoint::new(
            up,
            DeviceId::new("gw").unwrap(),
            OverflowPolicy::RejectNewest,
            BackoffPolicy::new(100, 1_000),
            SplitMix64::new(1),
        );
        assert!(FogGateway::new(uplink, 0).is_err());
        let (up, _) = net.endpoints();
        let uplink: ReliableEndpoint<_, _, 8, 128, 8> = ReliableEndpoint::new(
            up,
            DeviceId::new("gw").unwrap(),
            OverflowPolicy::RejectNewest,
            BackoffPolicy::new(100, 1_000),
            SplitMix64::new(1),
        );
        let mut gw = FogGateway::new(uplink, 60_000).unwrap();
        let a = DeviceId::new("a").unwrap();
        let b = DeviceId::new("b").unwrap();
        let t = |at_ms, celsius| Reading::new(at_ms, Measurement::Temperature { celsius });
        let h = |at_ms, percent| Reading::new(at_ms, Measurement::Humidity { percent });
        assert_eq!(gw.ingest(a, &t(120_000, 20.0), 0), Ok(None));
        assert_eq!(
            gw.ingest(a, &t(1_000, 20.0), 0),
            Err(GatewayError::Flow(FlowError::OutOfOrder))
        );
        assert!(matches!(
            gw.ingest(a, &t(121_000, f32::NAN), 0),
            Err(GatewayError::Flow(FlowError::Measurement(_)))
        ));
        assert_eq!(gw.stats().readings, 1);
        // Another sensor and another quantity of the same sensor are separate streams.
        gw.ingest(b, &t(1_000, 30.0), 0).unwrap();
        gw.ingest(a, &h(1_000, 40.0), 0).unwrap();
        let id = gw.ingest(a, &t(200_000, 21.0), 0).unwrap();
        assert!(id.is_some(), "a later window closes the first");
        assert_eq!(gw.advance_to(200_000), Ok(2)); // b's and a's humidity windows
        assert_eq!(gw.flush(200_000), Ok(1));
        assert_eq!(gw.stats().aggregates, 4);
        assert_eq!(gw.uplink().outbox().len(), 4);
        assert_eq!(gw.dropped(), 0);
        assert_eq!(gw.stats().reduction(), Some(0.0));
    }

    #[test]
    fn empty_windows_round_trip_and_inconsistent_parts_are_refused() {
        let mut a = aggregate();
        a.summary.aggregate = Aggregate::EMPTY;
        let bytes = codec::encode_to_vec(&a).unwrap();
        assert_eq!(FogAggregate::decode(&bytes).unwrap(), a);

        // min above max: patch the encoded min (the first 0xfa float) to 99.0.
        let good = codec::encode_to_vec(&aggregate()).unwrap();
        let at = good.iter().position(|&b| b == 0xfa).unwrap();
        let mut bad = good.clone();
        bad[at + 1..at + 5].copy_from_slice(&99.0f32.to_be_bytes());
        assert!(FogAggregate::decode(&bad).is_err());
        for cut in 0..good.len() {
            assert!(FogAggregate::decode(&good[..cut]).is_err());
        }
    }
}
