//! The firmware's own typed state, mapped to shadow fields.
//!
//! A device keeps its configuration in a plain struct. [`ShadowState`] maps each field to a
//! field id (its index in [`ShadowState::FIELDS`]), a dotted path and a [`Policy`]; the
//! [`shadow_state!`](crate::shadow_state) macro writes the implementation for you.
//!
//! ```
//! use iot_shadow::shadow_state;
//! use iot_shadow::typed::ShadowState;
//! use iot_shadow::value::Value;
//!
//! shadow_state! {
//!     /// What the device lab firmware can be told.
//!     #[derive(Debug, Clone, PartialEq)]
//!     pub struct LabConfig {
//!         /// Seconds between telemetry messages.
//!         pub interval_s: u32 => INTERVAL, "telemetry.interval", CloudWins;
//!         /// Status LED.
//!         pub led: bool => LED, "led", LastWriterWins;
//!     }
//! }
//!
//! let mut cfg = LabConfig { interval_s: 30, led: false };
//! assert_eq!(LabConfig::FIELDS[LabConfig::INTERVAL].path, "telemetry.interval");
//! cfg.set_field(LabConfig::INTERVAL, &Value::Int(60))?;
//! assert_eq!(cfg.interval_s, 60);
//! assert_eq!(cfg.get_field(LabConfig::LED), Some(Value::Bool(false)));
//! assert!(cfg.set_field(LabConfig::LED, &Value::Int(1)).is_err()); // wrong type
//! # Ok::<(), iot_shadow::ShadowError>(())
//! ```

use crate::error::ShadowError;
use crate::path::Path;
use crate::policy::{Resolver, Winner};
use crate::stamp::Policy;
use crate::store::Leaf;
use crate::value::{Float, Text, Value};

/// One field of a typed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FieldSpec {
    /// Dotted path in the shadow.
    pub path: &'static str,
    /// Who owns the field.
    pub policy: Policy,
}

/// A typed struct whose fields are shadow leaves. Field ids are indices into `FIELDS`.
pub trait ShadowState {
    /// The fields, by id. At most 64 (the device keeps one dirty bit per field).
    const FIELDS: &'static [FieldSpec];

    /// The current value of field `id`, `None` for an unknown id.
    fn get_field(&self, id: usize) -> Option<Value>;

    /// Sets field `id`; [`ShadowError::TypeMismatch`] if the value does not fit, and then
    /// the field is unchanged.
    fn set_field(&mut self, id: usize, value: &Value) -> Result<(), ShadowError>;

    /// Decides fields marked [`Policy::Custom`]; last-writer-wins unless overridden.
    fn resolve_custom(path: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        Policy::LastWriterWins.resolve_custom(path, desired, reported)
    }

    /// The id of the field at `path`.
    fn field_id(path: &str) -> Option<usize> {
        Self::FIELDS.iter().position(|f| f.path == path)
    }
}

/// The [`Resolver`] of a typed state: its per-field policies (others: last-writer-wins).
#[derive(Debug)]
pub struct TypedPolicies<T>(core::marker::PhantomData<fn() -> T>);

impl<T> TypedPolicies<T> {
    /// The resolver.
    pub const fn new() -> Self {
        Self(core::marker::PhantomData)
    }
}

impl<T> Default for TypedPolicies<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for TypedPolicies<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for TypedPolicies<T> {}

impl<T: ShadowState> Resolver for TypedPolicies<T> {
    fn policy(&self, path: &Path) -> Policy {
        FieldTable::of::<T>().policy(path)
    }

    fn resolve_custom(&self, path: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        T::resolve_custom(path, desired, reported)
    }
}

/// The [`Resolver`] of a typed state without its type: the state's field table and its
/// [`ShadowState::resolve_custom`] as a function pointer. Same decisions as
/// [`TypedPolicies`], but shadows of different state types share one engine.
#[derive(Debug, Clone, Copy)]
pub struct FieldTable {
    fields: &'static [FieldSpec],
    id_of: fn(&str) -> Option<usize>,
    custom: fn(&Path, &Leaf, &Leaf) -> Winner,
}

impl FieldTable {
    /// The table of state type `T`.
    pub const fn of<T: ShadowState>() -> Self {
        Self {
            fields: T::FIELDS,
            id_of: T::field_id,
            custom: T::resolve_custom,
        }
    }

    /// The fields, by id ([`ShadowState::FIELDS`]).
    pub const fn fields(&self) -> &'static [FieldSpec] {
        self.fields
    }

    /// The id of the field at `path` ([`ShadowState::field_id`]).
    pub fn field_id(&self, path: &str) -> Option<usize> {
        (self.id_of)(path)
    }

    /// A fingerprint of the table (FNV-1a over every field's path and policy code, in
    /// order; never 0): the id under which a device announces its shadow schema at
    /// registration, so a backend that registered the same table resolves with the same
    /// policies, and one that did not can refuse instead of guessing.
    pub fn fingerprint(&self) -> u32 {
        const OFFSET: u32 = 0x811c_9dc5;
        const PRIME: u32 = 0x0100_0193;
        let mut hash = OFFSET;
        for field in self.fields {
            for byte in field.path.bytes().chain([0, field.policy.code(), 0xff]) {
                hash = (hash ^ u32::from(byte)).wrapping_mul(PRIME);
            }
        }
        hash.max(1)
    }
}

impl Resolver for FieldTable {
    fn policy(&self, path: &Path) -> Policy {
        self.field_id(path.as_str())
            .and_then(|i| self.fields.get(i))
            .map_or(Policy::LastWriterWins, |f| f.policy)
    }

    fn resolve_custom(&self, path: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        (self.custom)(path, desired, reported)
    }
}

/// Conversion between a Rust field type and a shadow [`Value`].
pub trait FieldValue: Sized {
    /// The value of `self`.
    fn to_value(&self) -> Value;
    /// `None` if `value` does not fit this type.
    fn from_value(value: &Value) -> Option<Self>;
}

impl FieldValue for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_bool()
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
            fn from_value(value: &Value) -> Option<Self> {
                value.as_int().and_then(|i| <$t>::try_from(i).ok())
            }
        }
    )*};
}
int_field!(i8, i16, i32, i64, u8, u16, u32);

impl FieldValue for f64 {
    fn to_value(&self) -> Value {
        Value::from(*self)
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_float()
    }
}

impl FieldValue for f32 {
    fn to_value(&self) -> Value {
        Value::from(f64::from(*self))
    }
    fn from_value(value: &Value) -> Option<Self> {
        // Only values an f32 holds exactly are accepted, so the round trip is lossless.
        crate::value::exact_f32(value.as_float()?)
    }
}

impl FieldValue for Float {
    fn to_value(&self) -> Value {
        Value::Float(*self)
    }
    fn from_value(value: &Value) -> Option<Self> {
        value.as_float().and_then(Float::new)
    }
}

impl FieldValue for Text {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

impl<T: FieldValue> FieldValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_value)
    }
    fn from_value(value: &Value) -> Option<Self> {
        if value.is_null() {
            Some(None)
        } else {
            T::from_value(value).map(Some)
        }
    }
}

/// Position of `name` in `names` (`usize::MAX` if absent); used by [`shadow_state!`].
#[doc(hidden)]
pub const fn field_index(names: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < names.len() {
        // `i < names.len()` bounds the index; `const fn` cannot use iterators.
        #[allow(clippy::indexing_slicing)]
        let candidate = names[i];
        if const_str_eq(candidate, name) {
            return i;
        }
        i = i.saturating_add(1);
    }
    usize::MAX
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        // `i < a.len() == b.len()` bounds both indices.
        #[allow(clippy::indexing_slicing)]
        if a[i] != b[i] {
            return false;
        }
        i = i.saturating_add(1);
    }
    true
}

/// Declares a struct and implements [`ShadowState`] for it.
///
/// Each field is `name: Type => ID, "dotted.path", Policy;` where `Type` implements
/// [`FieldValue`], `ID` becomes an associated `usize` constant (the field id) and `Policy`
/// is a [`Policy`] variant name. Attributes and doc comments pass through. An optional
/// `custom_resolver = path::to::function;` after the struct decides [`Policy::Custom`]
/// fields (`fn(&Path, &Leaf, &Leaf) -> Winner`).
#[macro_export]
macro_rules! shadow_state {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $ty:ty => $id:ident, $path:literal, $policy:ident;
            )*
        }
        $(custom_resolver = $resolver:path;)?
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[$fmeta])*
                $fvis $field: $ty,
            )*
        }

        #[allow(non_upper_case_globals)]
        impl $name {
            const __FIELD_IDS: &'static [&'static str] = &[$(stringify!($id)),*];
            $(
                #[doc = concat!("Field id of `", $path, "`.")]
                $vis const $id: usize =
                    $crate::typed::field_index(Self::__FIELD_IDS, stringify!($id));
            )*
        }

        impl $crate::typed::ShadowState for $name {
            const FIELDS: &'static [$crate::typed::FieldSpec] = &[
                $(
                    $crate::typed::FieldSpec {
                        path: $path,
                        policy: $crate::stamp::Policy::$policy,
                    },
                )*
            ];

            fn get_field(&self, id: usize) -> ::core::option::Option<$crate::value::Value> {
                $(
                    if id == Self::$id {
                        return ::core::option::Option::Some(
                            $crate::typed::FieldValue::to_value(&self.$field),
                        );
                    }
                )*
                ::core::option::Option::None
            }

            fn set_field(
                &mut self,
                id: usize,
                value: &$crate::value::Value,
            ) -> ::core::result::Result<(), $crate::ShadowError> {
                $(
                    if id == Self::$id {
                        self.$field = <$ty as $crate::typed::FieldValue>::from_value(value)
                            .ok_or($crate::ShadowError::TypeMismatch)?;
                        return ::core::result::Result::Ok(());
                    }
                )*
                ::core::result::Result::Err($crate::ShadowError::UnknownField)
            }

            $(
                fn resolve_custom(
                    path: &$crate::Path,
                    desired: &$crate::Leaf,
                    reported: &$crate::Leaf,
                ) -> $crate::Winner {
                    $resolver(path, desired, reported)
                }
            )?
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::shadow_state! {
        #[derive(Debug, Clone, PartialEq, Default)]
        struct Cfg {
            a: u8 => A, "a", CloudWins;
            b: Option<f32> => B, "x.b", DeviceWins;
            c: Text => C, "x.c", Custom;
        }
    }

    fn later_text_wins(_: &Path, desired: &Leaf, reported: &Leaf) -> Winner {
        match (&desired.value, &reported.value) {
            (Value::Text(d), Value::Text(r)) if r > d => Winner::Reported,
            _ => Winner::Desired,
        }
    }

    crate::shadow_state! {
        #[derive(Debug, Clone, PartialEq, Default)]
        struct Custom {
            name: Text => NAME, "name", Custom;
            level: u8 => LEVEL, "level", DeviceWins;
        }
        custom_resolver = later_text_wins;
    }

    /// The type-erased table decides every path exactly as the typed resolver does, custom
    /// resolution included.
    #[test]
    fn field_table_resolves_like_typed_policies() {
        use crate::stamp::Stamp;
        let text = |s: &str| Leaf {
            value: Value::text(s).unwrap(),
            stamp: Stamp::default(),
        };
        fn check<T: ShadowState>(paths: &[&str], leaves: &[(Leaf, Leaf)]) {
            let table = FieldTable::of::<T>();
            let typed = TypedPolicies::<T>::new();
            assert_eq!(table.fields(), T::FIELDS);
            for path in paths {
                assert_eq!(table.field_id(path), T::field_id(path));
                let path = Path::new(path).unwrap();
                assert_eq!(table.policy(&path), typed.policy(&path));
                for (d, r) in leaves {
                    assert_eq!(
                        table.resolve_custom(&path, d, r),
                        typed.resolve_custom(&path, d, r)
                    );
                }
            }
        }
        let leaves = [(text("a"), text("b")), (text("b"), text("a"))];
        check::<Cfg>(&["a", "x.b", "x.c", "other"], &leaves);
        check::<Custom>(&["name", "level", "other"], &leaves);
        let table = FieldTable::of::<Custom>();
        let name = Path::new("name").unwrap();
        assert_eq!(
            table.resolve_custom(&name, &text("a"), &text("b")),
            Winner::Reported
        );
        assert_eq!(
            table.resolve_custom(&name, &text("b"), &text("a")),
            Winner::Desired
        );
    }

    #[test]
    fn macro_maps_fields() {
        assert_eq!((Cfg::A, Cfg::B, Cfg::C), (0, 1, 2));
        assert_eq!(Cfg::FIELDS.len(), 3);
        assert_eq!(Cfg::field_id("x.c"), Some(2));
        let mut cfg = Cfg::default();
        assert_eq!(
            cfg.set_field(Cfg::A, &Value::Int(300)),
            Err(ShadowError::TypeMismatch)
        );
        cfg.set_field(Cfg::B, &Value::float(0.5).unwrap()).unwrap();
        assert_eq!(cfg.b, Some(0.5));
        assert_eq!(
            cfg.set_field(Cfg::B, &Value::float(0.1).unwrap()),
            Err(ShadowError::TypeMismatch)
        );
        cfg.set_field(Cfg::B, &Value::Null).unwrap();
        assert_eq!(cfg.b, None);
        assert_eq!(
            cfg.set_field(9, &Value::Null),
            Err(ShadowError::UnknownField)
        );
        let p = TypedPolicies::<Cfg>::new();
        assert_eq!(p.policy(&Path::new("x.b").unwrap()), Policy::DeviceWins);
        assert_eq!(
            p.policy(&Path::new("other").unwrap()),
            Policy::LastWriterWins
        );
    }
}
