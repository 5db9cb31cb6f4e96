//! Per-leaf metadata: who wrote a leaf, when (hybrid logical clock), under which policy.
//!
//! A [`Stamp`] is 16 bytes: the HLC time (48-bit ms + 16-bit counter), the writer's
//! [`NodeId`], the field's [`Policy`] and the writer's [`Origin`]. Writes to one leaf are
//! totally ordered by [`Stamp::precedence`] = (policy rank, HLC time, node id), and merges
//! keep the greatest: the owner of a field outranks the other side whatever the clocks say,
//! and among equals the later write wins, with the node id breaking exact ties.

use core::cmp::Ordering;

use iot_core::id::NodeId;
use iot_core::time::HlcTimestamp;

/// Who owns a field when the device's reported value and the cloud's desired value disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum Policy {
    /// The cloud owns the field: a pending desired value always prevails and the device's
    /// local change is reverted to it.
    CloudWins = 0,
    /// The device owns the field: its reported value prevails and a differing desired value
    /// is cleared (a removal the cloud sees in the ack), so the delta cannot recur.
    DeviceWins = 1,
    /// The later write by HLC prevails; a newer device change clears an older desired value.
    #[default]
    LastWriterWins = 2,
    /// A user-supplied [`Resolver`](crate::policy::Resolver) decides; merges order such
    /// writes like [`Policy::LastWriterWins`].
    Custom = 3,
}

impl Policy {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The policy for a wire code.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::CloudWins,
            1 => Self::DeviceWins,
            2 => Self::LastWriterWins,
            3 => Self::Custom,
            _ => return None,
        })
    }

    /// Merge rank of a write by `origin` under this policy: the owner's writes rank 1.
    pub const fn rank(self, origin: Origin) -> u8 {
        match (self, origin) {
            (Self::CloudWins, Origin::Cloud) | (Self::DeviceWins, Origin::Device) => 1,
            _ => 0,
        }
    }
}

/// Which side issued a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum Origin {
    /// The backend (an operator, an application, a fleet job).
    #[default]
    Cloud = 0,
    /// The device itself.
    Device = 1,
}

impl Origin {
    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The origin for a wire code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Cloud),
            1 => Some(Self::Device),
            _ => None,
        }
    }
}

/// The metadata of one leaf: at most 16 bytes (`size_of::<Stamp>() == 16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stamp {
    /// HLC time of the write (48-bit ms << 16 | counter); see [`Stamp::hlc`].
    pub time: u64,
    /// The writing node: the HLC tie-break.
    pub node: NodeId,
    /// The field's policy at the time of the write.
    pub policy: Policy,
    /// Which side wrote it.
    pub origin: Origin,
}

const _: () = assert!(core::mem::size_of::<Stamp>() <= 16);

impl Stamp {
    /// A stamp from its parts.
    pub const fn new(hlc: HlcTimestamp, policy: Policy, origin: Origin) -> Self {
        Self {
            time: hlc.time,
            node: hlc.node,
            policy,
            origin,
        }
    }

    /// The HLC timestamp (time and node) of the write.
    pub const fn hlc(&self) -> HlcTimestamp {
        HlcTimestamp {
            time: self.time,
            node: self.node,
        }
    }

    /// The merge order key: (policy rank, HLC time, node id). Greater wins.
    pub const fn precedence(&self) -> (u8, u64, u32) {
        (self.policy.rank(self.origin), self.time, self.node.0)
    }

    /// [`Stamp::precedence`] as one integer, ordered the same: rank above time above node.
    #[inline]
    const fn precedence_key(&self) -> u128 {
        ((self.policy.rank(self.origin) as u128) << 96)
            | ((self.time as u128) << 32)
            | self.node.0 as u128
    }

    /// Compares two writes to the same leaf by [`Stamp::precedence`].
    #[inline]
    pub fn cmp_precedence(&self, other: &Self) -> Ordering {
        self.precedence_key().cmp(&other.precedence_key())
    }

    /// `true` if both stamps name the same instant on the same node.
    pub fn same_instant(&self, other: &Self) -> bool {
        self.time == other.time && self.node == other.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: u64, node: u32, policy: Policy, origin: Origin) -> Stamp {
        Stamp::new(
            HlcTimestamp {
                time,
                node: NodeId(node),
            },
            policy,
            origin,
        )
    }

    #[test]
    fn stamp_is_at_most_sixteen_bytes() {
        assert!(core::mem::size_of::<Stamp>() <= 16);
    }

    #[test]
    fn owner_outranks_later_writes() {
        let cloud = at(5, 1, Policy::CloudWins, Origin::Cloud);
        let device = at(9, 2, Policy::CloudWins, Origin::Device);
        assert_eq!(cloud.cmp_precedence(&device), Ordering::Greater);
        let lww_old = at(5, 1, Policy::LastWriterWins, Origin::Cloud);
        let lww_new = at(9, 2, Policy::LastWriterWins, Origin::Device);
        assert_eq!(lww_old.cmp_precedence(&lww_new), Ordering::Less);
        // Equal HLC time: the node id decides.
        let a = at(9, 1, Policy::LastWriterWins, Origin::Device);
        assert_eq!(a.cmp_precedence(&lww_new), Ordering::Less);
    }

    #[test]
    fn codes_round_trip() {
        for p in [
            Policy::CloudWins,
            Policy::DeviceWins,
            Policy::LastWriterWins,
            Policy::Custom,
        ] {
            assert_eq!(Policy::from_code(p.code()), Some(p));
        }
        assert_eq!(Policy::from_code(4), None);
        assert_eq!(
            Origin::from_code(Origin::Device.code()),
            Some(Origin::Device)
        );
        assert_eq!(Origin::from_code(2), None);
    }
}
