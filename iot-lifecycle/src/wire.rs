//! Small CBOR helpers shared by this crate's wire types.

/// `#[cbor(with = "crate::wire::f32c")]`: canonical, finite 32-bit floats.
pub(crate) mod f32c {
    use minicbor::{Decoder, Encoder};

    pub(crate) fn encode<Ctx, W: minicbor::encode::Write>(
        v: &f32,
        e: &mut Encoder<W>,
        _ctx: &mut Ctx,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        iot_core::codec::encode_f32(e, *v)
    }

    pub(crate) fn decode<Ctx>(
        d: &mut Decoder<'_>,
        _ctx: &mut Ctx,
    ) -> Result<f32, minicbor::decode::Error> {
        iot_core::codec::decode_f32(d)
    }

    pub(crate) fn cbor_len<Ctx>(_v: &f32, _ctx: &mut Ctx) -> usize {
        iot_core::codec::F32_LEN
    }
}

/// Reads a map header and returns its definite length; indefinite maps are not canonical.
pub(crate) fn map_len(d: &mut minicbor::Decoder<'_>) -> Result<u64, minicbor::decode::Error> {
    d.map()?.ok_or_else(iot_core::codec::invalid_value)
}

/// Reads the next key of a canonical map: strictly greater than the previous one.
pub(crate) fn next_key(
    d: &mut minicbor::Decoder<'_>,
    previous: &mut Option<u64>,
) -> Result<u64, minicbor::decode::Error> {
    let key = d.u64()?;
    if previous.is_some_and(|p| key <= p) {
        return Err(iot_core::codec::invalid_value());
    }
    *previous = Some(key);
    Ok(key)
}

/// `#[cbor(with = "crate::wire::hbytes")]`: a `heapless::Vec<u8, N>` as a CBOR byte string.
pub(crate) mod hbytes {
    use minicbor::{Decoder, Encoder};

    pub(crate) fn encode<Ctx, W: minicbor::encode::Write, const N: usize>(
        v: &heapless::Vec<u8, N>,
        e: &mut Encoder<W>,
        _ctx: &mut Ctx,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(v)?;
        Ok(())
    }

    pub(crate) fn decode<Ctx, const N: usize>(
        d: &mut Decoder<'_>,
        _ctx: &mut Ctx,
    ) -> Result<heapless::Vec<u8, N>, minicbor::decode::Error> {
        heapless::Vec::from_slice(d.bytes()?).map_err(|_| iot_core::codec::capacity_exceeded())
    }

    pub(crate) fn cbor_len<Ctx, const N: usize>(v: &heapless::Vec<u8, N>, ctx: &mut Ctx) -> usize {
        minicbor::bytes::CborLenBytes::cbor_len(v.as_slice(), ctx)
    }
}

/// Decodes a map with integer keys the way minicbor's derived `#[cbor(map)]` decoders do
/// (definite or indefinite length, keys read as `i64`, a later duplicate overwriting an
/// earlier one), calling `field` for each entry: `field` decodes the value of a key it knows
/// and returns `true`, or returns `false` without reading anything, and the value is skipped.
///
/// One copy for every hand-written map decoder of this crate: the derived decoders repeat
/// every field's code for each of the two map forms.
#[inline(never)]
pub(crate) fn decode_map<'b>(
    d: &mut minicbor::Decoder<'b>,
    field: &mut dyn FnMut(i64, &mut minicbor::Decoder<'b>) -> Result<bool, minicbor::decode::Error>,
) -> Result<(), minicbor::decode::Error> {
    let mut entry = |d: &mut minicbor::Decoder<'b>| {
        let key = d.i64()?;
        if !field(key, d)? {
            d.skip()?;
        }
        Ok::<(), minicbor::decode::Error>(())
    };
    if let Some(len) = d.map()? {
        for _ in 0..len {
            entry(d)?;
        }
    } else {
        while d.datatype()? != minicbor::data::Type::Break {
            entry(d)?;
        }
        d.skip()?;
    }
    Ok(())
}

/// Decodes the fields of an array-encoded value the way minicbor's derived decoders do
/// (definite or indefinite length, fields by position), calling `field` with each position:
/// it decodes a field it knows and returns `true`, or returns `false` without reading
/// anything, and the item is skipped.
#[inline(never)]
pub(crate) fn decode_array<'b>(
    d: &mut minicbor::Decoder<'b>,
    field: &mut dyn FnMut(u64, &mut minicbor::Decoder<'b>) -> Result<bool, minicbor::decode::Error>,
) -> Result<(), minicbor::decode::Error> {
    let mut item = |i: u64, d: &mut minicbor::Decoder<'b>| {
        if !field(i, d)? {
            d.skip()?;
        }
        Ok::<(), minicbor::decode::Error>(())
    };
    if let Some(len) = d.array()? {
        for i in 0..len {
            item(i, d)?;
        }
    } else {
        let mut i = 0u64;
        while d.datatype()? != minicbor::data::Type::Break {
            item(i, d)?;
            i = i.saturating_add(1);
        }
        d.skip()?;
    }
    Ok(())
}

/// Reads the start of an enum as minicbor's derived decoders write it, a 2-element array of
/// variant index and value, and returns the index and where it was read.
pub(crate) fn enum_header(
    d: &mut minicbor::Decoder<'_>,
) -> Result<(i64, usize), minicbor::decode::Error> {
    let at = d.position();
    if d.array()? != Some(2) {
        return Err(minicbor::decode::Error::message("expected enum (2-element array)").at(at));
    }
    let variant_at = d.position();
    Ok((d.i64()?, variant_at))
}

/// Reads an integer (any CBOR width) that must lie in `min..=max`, as minicbor's `u8`,
/// `u16`, `i16` or `u32` decoders accept it, failing the same way they do (they all read
/// the initial byte first and report another type from it): an unsigned range reads with
/// `u32`, a signed one with `i64`; outside the range it is malformed input.
#[inline(never)]
pub(crate) fn int_in(
    d: &mut minicbor::Decoder<'_>,
    min: i64,
    max: i64,
) -> Result<i64, minicbor::decode::Error> {
    let v = if min < 0 {
        d.i64()?
    } else {
        i64::from(d.u32()?)
    };
    if v < min || v > max {
        return Err(minicbor::decode::Error::message("integer out of range"));
    }
    Ok(v)
}

/// The value of a required field read by [`decode_map`], or the error a derived decoder
/// gives when it is missing (`index`: the field's key; `at`: where the map started).
pub(crate) fn required<T: TryFrom<i64>>(
    slot: Option<i64>,
    index: i64,
    at: usize,
) -> Result<T, minicbor::decode::Error> {
    let v = slot.ok_or_else(|| minicbor::decode::Error::missing_value(index).at(at))?;
    T::try_from(v).map_err(|_| minicbor::decode::Error::message("integer out of range"))
}

/// [`required`] for a value that is not an integer.
pub(crate) fn present<T>(
    slot: Option<T>,
    index: i64,
    at: usize,
) -> Result<T, minicbor::decode::Error> {
    slot.ok_or_else(|| minicbor::decode::Error::missing_value(index).at(at))
}

#[cfg(test)]
mod tests {
    //! The hand-written decoders of `HealthThresholds` and `DeviceConfig` against the
    //! decoders minicbor derives for the same fields: same value or same error class on
    //! every input.
    use iot_core::codec::{DecodeError, decode};
    use minicbor::{Decode, Encoder};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    use crate::command::{Command, CommandKind};
    use crate::config::DeviceConfig;
    use crate::health::HealthThresholds;
    use crate::registration::{RegistrationRejection, RegistrationResponse};

    #[derive(Debug, PartialEq, Decode)]
    #[cbor(map)]
    struct DerivedThresholds {
        #[n(0)]
        a: u8,
        #[n(1)]
        b: u8,
        #[n(2)]
        c: u16,
        #[n(3)]
        d: u16,
        #[n(4)]
        e: i16,
        #[n(5)]
        f: i16,
        #[n(6)]
        g: u16,
        #[n(7)]
        h: u16,
        #[n(8)]
        i: u16,
        #[n(9)]
        #[cbor(with = "super::f32c")]
        j: f32,
        #[n(10)]
        #[cbor(with = "super::f32c")]
        k: f32,
        #[n(11)]
        l: u32,
        #[n(12)]
        m: u32,
        #[n(13)]
        n: u32,
        #[n(14)]
        o: u32,
        #[n(15)]
        p: u32,
        #[n(16)]
        q: u16,
    }

    impl DerivedThresholds {
        fn into_real(self) -> HealthThresholds {
            HealthThresholds {
                battery_warning_percent: self.a,
                battery_critical_percent: self.b,
                battery_warning_mv: self.c,
                battery_critical_mv: self.d,
                rssi_warning_dbm: self.e,
                rssi_critical_dbm: self.f,
                send_failures_warning: self.g,
                send_failures_critical: self.h,
                stuck_readings: self.i,
                reading_min: self.j,
                reading_max: self.k,
                free_memory_warning_bytes: self.l,
                free_memory_critical_bytes: self.m,
                errors_warning: self.n,
                errors_critical: self.o,
                recent_reboot_ms: self.p,
                recovery_checks: self.q,
            }
        }
    }

    #[derive(Debug, PartialEq, Decode)]
    #[cbor(map)]
    struct DerivedConfig {
        #[n(0)]
        a: u32,
        #[n(1)]
        b: u32,
        #[n(2)]
        c: u32,
        #[n(3)]
        d: u32,
        #[n(4)]
        e: u32,
        #[n(5)]
        #[cbor(with = "super::f32c")]
        f: f32,
        #[n(6)]
        g: u8,
        #[n(7)]
        h: DerivedThresholds,
    }

    impl DerivedConfig {
        fn into_real(self) -> DeviceConfig {
            DeviceConfig {
                version: self.a,
                heartbeat_interval_ms: self.b,
                telemetry_interval_ms: self.c,
                health_interval_ms: self.d,
                sync_interval_ms: self.e,
                telemetry_deadband: self.f,
                degraded_telemetry_factor: self.g,
                thresholds: self.h.into_real(),
            }
        }
    }

    #[derive(Debug, PartialEq, Decode)]
    enum DerivedKind {
        #[n(0)]
        Diagnostics,
        #[n(1)]
        BlinkLed {
            #[n(0)]
            times: u8,
            #[n(1)]
            period_ms: u16,
        },
        #[n(2)]
        ReadSensor {
            #[n(0)]
            sensor: u8,
        },
        #[n(3)]
        EnterMaintenance,
        #[n(4)]
        ExitMaintenance,
        #[n(5)]
        Reboot,
        #[n(6)]
        SetConfig(#[n(0)] DerivedConfig),
        #[n(7)]
        Custom {
            #[n(0)]
            code: u16,
            #[n(1)]
            #[cbor(with = "super::hbytes")]
            args: crate::command::CommandArgs,
        },
    }

    impl DerivedKind {
        fn into_real(self) -> CommandKind {
            match self {
                Self::Diagnostics => CommandKind::Diagnostics,
                Self::BlinkLed { times, period_ms } => CommandKind::BlinkLed { times, period_ms },
                Self::ReadSensor { sensor } => CommandKind::ReadSensor { sensor },
                Self::EnterMaintenance => CommandKind::EnterMaintenance,
                Self::ExitMaintenance => CommandKind::ExitMaintenance,
                Self::Reboot => CommandKind::Reboot,
                Self::SetConfig(c) => CommandKind::SetConfig(c.into_real()),
                Self::Custom { code, args } => CommandKind::Custom { code, args },
            }
        }
    }

    #[derive(Debug, PartialEq, Decode)]
    enum DerivedResponse {
        #[n(0)]
        Challenge(
            #[n(0)]
            #[cbor(with = "minicbor::bytes")]
            [u8; 16],
        ),
        #[n(1)]
        Accepted(#[n(0)] DerivedConfig),
        #[n(2)]
        Rejected(#[n(0)] RegistrationRejection),
    }

    impl DerivedResponse {
        fn into_real(self) -> RegistrationResponse {
            match self {
                Self::Challenge(n) => RegistrationResponse::Challenge(n),
                Self::Accepted(c) => RegistrationResponse::Accepted(c.into_real()),
                Self::Rejected(r) => RegistrationResponse::Rejected(r),
            }
        }
    }

    #[derive(Debug, PartialEq, Decode)]
    #[cbor(map)]
    struct DerivedCommand {
        #[n(0)]
        id: u32,
        #[n(1)]
        issued_at_ms: u64,
        #[n(2)]
        expires_at_ms: u64,
        #[n(3)]
        kind: DerivedKind,
    }

    impl DerivedCommand {
        fn into_real(self) -> Command {
            Command::new(
                self.id,
                self.issued_at_ms,
                self.expires_at_ms,
                self.kind.into_real(),
            )
        }
    }

    /// A command map: every field valid (the kind from [`kind_bytes`]), then random changes.
    fn command_entries() -> impl Strategy<Value = Vec<(u64, Item)>> {
        (
            kind_bytes(),
            prop::collection::vec((0u64..6, item()), 0..3),
            prop::collection::vec(any::<prop::sample::Index>(), 0..2),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(kind, changes, removals, at)| {
                let mut entries = vec![
                    (0, Item::Uint(70_000)),
                    (1, Item::Uint(5)),
                    (2, Item::Uint(u64::MAX)),
                    (3, Item::Raw(kind)),
                ];
                for i in removals {
                    entries.remove(i.index(entries.len()));
                }
                for (k, v) in changes {
                    entries.insert(at.index(entries.len() + 1), (k, v));
                }
                entries
            })
    }

    /// A command kind as the derived encoder writes it, or close to it.
    fn kind_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![8 => Just(2u64), 1 => 0u64..4],
            prop_oneof![
                8 => (-1i64..10).prop_map(Item::Nint),
                1 => item(),
            ],
            prop_oneof![
                4 => (prop::collection::vec(prop_oneof![
                    3 => (0u64..300).prop_map(Item::Uint),
                    1 => (0usize..40).prop_map(Item::Bytes),
                    1 => Just(Item::Bytes(16)),
                    1 => Just(valid_config()),
                    1 => item(),
                ], 0..4), any::<bool>()).prop_map(|(e, definite)| Item::Array(e, definite)),
                1 => item(),
            ],
        )
            .prop_map(|(len, variant, value)| {
                let mut bytes = Out::default();
                let mut e = Encoder::new(&mut bytes);
                e.array(len).unwrap();
                match variant {
                    Item::Nint(v) if v >= 0 => {
                        e.u64(v as u64).unwrap();
                    }
                    other => write(&mut e, &other),
                }
                write(&mut e, &value);
                bytes.0
            })
    }

    /// A growing CBOR sink that needs no minicbor feature.
    #[derive(Default)]
    struct Out(Vec<u8>);

    impl minicbor::encode::Write for Out {
        type Error = core::convert::Infallible;
        fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
            self.0.extend_from_slice(buf);
            Ok(())
        }
    }

    /// One map value: integers at the edges of every field type, floats, other types.
    #[derive(Debug, Clone)]
    enum Item {
        Uint(u64),
        Nint(i64),
        Float(f32),
        Text,
        Bytes(usize),
        Thresholds(Vec<(u64, Item)>, bool),
        Array(Vec<Item>, bool),
        Raw(Vec<u8>),
    }

    fn item() -> impl Strategy<Value = Item> {
        let leaf = prop_oneof![
            4 => prop_oneof![
                Just(0u64), Just(255), Just(256), Just(65_535), Just(65_536),
                Just(32_767), Just(32_768), Just(u64::from(u32::MAX)),
                Just(u64::from(u32::MAX) + 1), Just(u64::MAX), any::<u64>(), 0u64..300,
            ].prop_map(Item::Uint),
            2 => prop_oneof![
                Just(-1i64), Just(-32_768), Just(-32_769), Just(i64::MIN), -100i64..0,
            ].prop_map(Item::Nint),
            2 => prop_oneof![any::<f32>(), Just(f32::NAN), Just(0.5f32)].prop_map(Item::Float),
            1 => Just(Item::Text),
            1 => (0usize..40).prop_map(Item::Bytes),
            1 => Just(valid_config()),
        ];
        leaf.prop_recursive(2, 24, 20, |inner| {
            prop_oneof![
                (
                    prop::collection::vec((0u64..20, inner.clone()), 0..20),
                    any::<bool>()
                )
                    .prop_map(|(e, definite)| Item::Thresholds(e, definite)),
                (prop::collection::vec(inner, 0..4), any::<bool>())
                    .prop_map(|(e, definite)| Item::Array(e, definite)),
            ]
        })
    }

    fn valid_config() -> Item {
        let thresholds: Vec<(u64, Item)> = (0..17)
            .map(|k| {
                (
                    k,
                    if k == 9 || k == 10 {
                        Item::Float(1.0)
                    } else {
                        Item::Uint(3)
                    },
                )
            })
            .collect();
        Item::Thresholds(
            (0..8)
                .map(|k| {
                    let v = match k {
                        5 => Item::Float(0.5),
                        7 => Item::Thresholds(thresholds.clone(), true),
                        _ => Item::Uint(9),
                    };
                    (k, v)
                })
                .collect(),
            true,
        )
    }

    fn write(e: &mut Encoder<&mut Out>, item: &Item) {
        match item {
            Item::Uint(v) => {
                e.u64(*v).unwrap();
            }
            Item::Nint(v) => {
                e.i64(*v).unwrap();
            }
            Item::Float(v) => {
                e.f32(*v).unwrap();
            }
            Item::Text => {
                e.str("x").unwrap();
            }
            Item::Bytes(n) => {
                e.bytes(&vec![7; *n]).unwrap();
            }
            Item::Thresholds(entries, definite) => write_map(e, entries, *definite),
            Item::Raw(bytes) => {
                minicbor::encode::Write::write_all(e.writer_mut(), bytes).unwrap();
            }
            Item::Array(items, definite) => {
                if *definite {
                    e.array(items.len() as u64).unwrap();
                } else {
                    e.begin_array().unwrap();
                }
                for item in items {
                    write(e, item);
                }
                if !*definite {
                    e.end().unwrap();
                }
            }
        }
    }

    fn write_map(e: &mut Encoder<&mut Out>, entries: &[(u64, Item)], definite: bool) {
        if definite {
            e.map(entries.len() as u64).unwrap();
        } else {
            e.begin_map().unwrap();
        }
        for (k, v) in entries {
            e.u64(*k).unwrap();
            write(e, v);
        }
        if !definite {
            e.end().unwrap();
        }
    }

    /// Entries for every key 0..=16 from a valid value, then random changes.
    fn full(keys: u64) -> impl Strategy<Value = Vec<(u64, Item)>> {
        let base: Vec<(u64, Item)> = (0..keys)
            .map(|k| {
                let v = match (keys, k) {
                    (17, 9 | 10) | (8, 5) => Item::Float(1.5),
                    (8, 7) => Item::Thresholds(
                        (0..17)
                            .map(|k| {
                                (
                                    k,
                                    if k == 9 || k == 10 {
                                        Item::Float(1.0)
                                    } else {
                                        Item::Uint(3)
                                    },
                                )
                            })
                            .collect(),
                        true,
                    ),
                    _ => Item::Uint(7),
                };
                (k, v)
            })
            .collect();
        (
            Just(base),
            prop::collection::vec((0u64..20, item()), 0..4),
            prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(mut entries, changes, removals, shuffle)| {
                for i in removals {
                    if !entries.is_empty() {
                        entries.remove(i.index(entries.len()));
                    }
                }
                for (k, v) in changes {
                    entries.insert(shuffle.index(entries.len() + 1), (k, v));
                }
                entries
            })
    }

    fn classify<T, E>(r: Result<T, DecodeError>, f: impl FnOnce(T) -> E) -> Result<E, DecodeError> {
        r.map(f)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn hand_written_threshold_decoder_matches_the_derived_one(
            entries in full(17), definite in any::<bool>(), cut in any::<prop::sample::Index>(), truncate in any::<bool>()
        ) {
            let mut out = Out::default();
            write_map(&mut Encoder::new(&mut out), &entries, definite);
            let mut bytes = out.0;
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let ours = decode::<HealthThresholds>(&bytes);
            let derived = classify(decode::<DerivedThresholds>(&bytes), DerivedThresholds::into_real);
            prop_assert_eq!(ours, derived);
        }

        #[test]
        fn hand_written_config_decoder_matches_the_derived_one(
            entries in full(8), definite in any::<bool>(), cut in any::<prop::sample::Index>(), truncate in any::<bool>()
        ) {
            let mut out = Out::default();
            write_map(&mut Encoder::new(&mut out), &entries, definite);
            let mut bytes = out.0;
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            let ours = decode::<DeviceConfig>(&bytes);
            let derived = classify(decode::<DerivedConfig>(&bytes), DerivedConfig::into_real);
            prop_assert_eq!(ours, derived);
        }

        #[test]
        fn hand_written_command_kind_decoder_matches_the_derived_one(
            bytes in kind_bytes(), cut in any::<prop::sample::Index>(), truncate in any::<bool>()
        ) {
            let bytes = if truncate { bytes[..cut.index(bytes.len())].to_vec() } else { bytes };
            prop_assert_eq!(
                decode::<CommandKind>(&bytes),
                classify(decode::<DerivedKind>(&bytes), DerivedKind::into_real)
            );
            prop_assert_eq!(
                decode::<RegistrationResponse>(&bytes),
                classify(decode::<DerivedResponse>(&bytes), DerivedResponse::into_real)
            );
        }

        #[test]
        fn hand_written_registration_response_decoder_matches_the_derived_one(
            bytes in kind_bytes(), cut in any::<prop::sample::Index>(), truncate in any::<bool>()
        ) {
            let bytes = if truncate { bytes[..cut.index(bytes.len())].to_vec() } else { bytes };
            prop_assert_eq!(
                decode::<RegistrationResponse>(&bytes),
                classify(decode::<DerivedResponse>(&bytes), DerivedResponse::into_real)
            );
        }

        #[test]
        fn hand_written_command_decoder_matches_the_derived_one(
            entries in command_entries(), definite in any::<bool>(), cut in any::<prop::sample::Index>(), truncate in any::<bool>()
        ) {
            let mut out = Out::default();
            write_map(&mut Encoder::new(&mut out), &entries, definite);
            let mut bytes = out.0;
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            prop_assert_eq!(
                decode::<Command>(&bytes),
                classify(decode::<DerivedCommand>(&bytes), DerivedCommand::into_real)
            );
        }

        #[test]
        fn decoders_match_the_derived_ones_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(
                decode::<HealthThresholds>(&bytes),
                classify(decode::<DerivedThresholds>(&bytes), DerivedThresholds::into_real)
            );
            prop_assert_eq!(
                decode::<DeviceConfig>(&bytes),
                classify(decode::<DerivedConfig>(&bytes), DerivedConfig::into_real)
            );
            prop_assert_eq!(
                decode::<CommandKind>(&bytes),
                classify(decode::<DerivedKind>(&bytes), DerivedKind::into_real)
            );
            prop_assert_eq!(
                decode::<RegistrationResponse>(&bytes),
                classify(decode::<DerivedResponse>(&bytes), DerivedResponse::into_real)
            );
            prop_assert_eq!(
                decode::<Command>(&bytes),
                classify(decode::<DerivedCommand>(&bytes), DerivedCommand::into_real)
            );
        }
    }
}
