//! Automatic link selection: given a message's needs and the links available, pick the one
//! that meets the need at the least energy or cost; fail over when a link goes down or is
//! demoted for missing its QoS target, and return when it recovers.
//!
//! ```
//! use iot_transport::outbox::Priority;
//! use iot_transport::select::{LinkSelector, Need, Objective};
//! use iot_transport::{LinkInfo, LinkState, Medium};
//!
//! // Typical figures: Wi-Fi, LoRaWAN at SF12, NB-IoT (`iot-planning`'s catalogue has them).
//! let wifi = LinkInfo { bitrate_bps: 20_000_000, latency_ms: 5, energy_nj_per_byte: 280, ..LinkInfo::new(Medium::Wifi, 1472) };
//! let lora = LinkInfo { bitrate_bps: 250, latency_ms: 1_500, energy_nj_per_byte: 3_840_000, ..LinkInfo::new(Medium::Lora, 51) };
//! let nb_iot = LinkInfo {
//!     bitrate_bps: 60_000,
//!     latency_ms: 1_600,
//!     energy_nj_per_byte: 93_000,
//!     cost_micro_per_kib: 200,
//!     ..LinkInfo::new(Medium::Cellular, 1358)
//! };
//! let mut links = [wifi, lora, nb_iot];
//! let mut selector: LinkSelector<3, 16> = LinkSelector::new(Objective::Energy, 0);
//! let need = Need::new(40, Priority::Normal).with_max_latency_ms(10_000);
//! assert_eq!(selector.select(&need, &links, 0)?.index, 0); // Wi-Fi: least energy
//!
//! links[0].state = LinkState::Down; // out of Wi-Fi range
//! let s = selector.select(&need, &links, 1_000)?;
//! assert_eq!(s.index, 2); // NB-IoT: LoRa's long airtime costs far more energy per byte
//! assert!(s.failover);
//!
//! links[0].state = LinkState::Up;
//! assert_eq!(selector.select(&need, &links, 2_000)?.index, 0); // back on Wi-Fi
//! # Ok::<(), iot_transport::select::SelectError>(())
//! ```

use crate::fragment::{HEADER_LEN, MAX_FRAGMENTS};
use crate::link::LinkInfo;
use crate::monitor::{Health, LinkMonitor, QosTarget};
use crate::outbox::Priority;

/// What a message needs from a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Need {
    /// Encoded size in bytes.
    pub size: usize,
    /// Priority: `Critical` messages take the fastest eligible link regardless of cost.
    pub priority: Priority,
    /// Deliver within this many milliseconds (latency plus serialisation of all fragments).
    pub max_latency_ms: Option<u64>,
    /// Whether the message may be split over several datagrams.
    pub allow_fragmentation: bool,
}

impl Need {
    /// A message of `size` bytes; no latency bound; fragmentation allowed.
    pub const fn new(size: usize, priority: Priority) -> Self {
        Self {
            size,
            priority,
            max_latency_ms: None,
            allow_fragmentation: true,
        }
    }

    /// Sets the latency bound.
    #[must_use]
    pub const fn with_max_latency_ms(mut self, ms: u64) -> Self {
        self.max_latency_ms = Some(ms);
        self
    }

    /// Forbids fragmentation.
    #[must_use]
    pub const fn without_fragmentation(mut self) -> Self {
        self.allow_fragmentation = false;
        self
    }
}

/// What to minimise among links that meet the need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Objective {
    /// Energy per message (battery devices), then cost.
    Energy,
    /// Money per message (metered links), then energy.
    Cost,
    /// Delivery time.
    Latency,
}

/// How a message would travel over one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Plan {
    /// Datagrams needed (1 = no fragmentation).
    pub fragments: usize,
    /// Bytes on the link, fragment headers included.
    pub wire_bytes: usize,
    /// Estimated delivery time in milliseconds.
    pub delivery_ms: u64,
    /// Estimated energy in nanojoules.
    pub energy_nj: u64,
    /// Estimated cost in micro-units.
    pub cost_micro: u64,
}

/// How `need` would travel over `link`, if it can at all (ignores up/down and health).
pub fn plan(need: &Need, link: &LinkInfo) -> Option<Plan> {
    let mtu = usize::from(link.mtu);
    let (fragments, wire_bytes) = if need.size <= mtu {
        (1, need.size)
    } else {
        if !need.allow_fragmentation {
            return None;
        }
        let room = mtu.checked_sub(HEADER_LEN).filter(|r| *r > 0)?;
        let n = need.size.div_ceil(room);
        if n > MAX_FRAGMENTS {
            return None;
        }
        (n, need.size.saturating_add(n.saturating_mul(HEADER_LEN)))
    };
    let delivery_ms = link.delivery_time_ms(wire_bytes);
    if need.max_latency_ms.is_some_and(|max| delivery_ms > max) {
        return None;
    }
    Some(Plan {
        fragments,
        wire_bytes,
        delivery_ms,
        energy_nj: link.energy_nj(wire_bytes),
        cost_micro: link.cost_micro(wire_bytes),
    })
}

/// The selector's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Selection {
    /// Index of the chosen link in the slice given to `select`.
    pub index: usize,
    /// How the message travels.
    pub plan: Plan,
    /// `true` when this is not the link that would be chosen if every link were up and
    /// healthy.
    pub failover: bool,
    /// `true` when only demoted links could carry the message.
    pub degraded: bool,
}

/// No link can carry the message.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SelectError {
    /// Every link that could carry it is down.
    #[error("every suitable link is down")]
    AllDown,
    /// No link meets the size or latency need even when up.
    #[error("no link meets the need")]
    Unsuitable,
    /// More links than the selector tracks.
    #[error("more links than the selector tracks")]
    TooManyLinks,
}

impl iot_core::Error for SelectError {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::AllDown => iot_core::ErrorKind::Transport,
            Self::Unsuitable => iot_core::ErrorKind::InvalidInput,
            Self::TooManyLinks => iot_core::ErrorKind::Capacity,
        }
    }
}

/// Chooses among up to `L` links, with a QoS monitor of `W` outcomes per link.
///
/// A link that comes back up is used again only after it has stayed up for the hold time
/// (no flapping); a demoted link is used only when no healthy link meets the need.
#[derive(Debug, Clone)]
pub struct LinkSelector<const L: usize, const W: usize> {
    objective: Objective,
    hold_ms: u64,
    up_since: [Option<u64>; L],
    monitors: [LinkMonitor<W>; L],
    targets: [QosTarget; L],
    current: Option<usize>,
    switches: u32,
}

impl<const L: usize, const W: usize> LinkSelector<L, W> {
    /// A selector minimising `objective`; recovered links must stay up `hold_ms` first.
    pub const fn new(objective: Objective, hold_ms: u64) -> Self {
        Self {
            objective,
            hold_ms,
            up_since: [Some(0); L],
            monitors: [const { LinkMonitor::new() }; L],
            targets: [QosTarget::NONE; L],
            current: None,
            switches: 0,
        }
    }

    /// Sets link `index`'s QoS target.
    pub fn set_target(&mut self, index: usize, target: QosTarget) -> Result<(), SelectError> {
        *self
            .targets
            .get_mut(index)
            .ok_or(SelectError::TooManyLinks)? = target;
        Ok(())
    }

    /// Link `index`'s monitor, to record outcomes.
    pub fn monitor_mut(&mut self, index: usize) -> Option<&mut LinkMonitor<W>> {
        self.monitors.get_mut(index)
    }

    /// Link `index`'s monitor.
    pub fn monitor(&self, index: usize) -> Option<&LinkMonitor<W>> {
        self.monitors.get(index)
    }

    /// Link `index`'s health against its target.
    pub fn health(&self, index: usize) -> Option<Health> {
        let m = self.monitors.get(index)?;
        let t = self.targets.get(index)?;
        Some(m.health(t))
    }

    /// Times the chosen link changed.
    pub const fn switches(&self) -> u32 {
        self.switches
    }

    /// The link chosen last.
    pub const fn current(&self) -> Option<usize> {
        self.current
    }

    fn better(&self, need: &Need, a: &Plan, b: &Plan) -> bool {
        let key = |p: &Plan| match (need.priority, self.objective) {
            (Priority::Critical, _) | (_, Objective::Latency) => {
                (p.delivery_ms, p.energy_nj, p.cost_micro)
            }
            (_, Objective::Energy) => (p.energy_nj, p.cost_micro, p.delivery_ms),
            (_, Objective::Cost) => (p.cost_micro, p.energy_nj, p.delivery_ms),
        };
        key(a) < key(b)
    }

    fn best(
        &self,
        need: &Need,
        links: &[LinkInfo],
        eligible: impl Fn(usize, &LinkInfo) -> bool,
    ) -> Option<(usize, Plan)> {
        let mut best: Option<(usize, Plan)> = None;
        for (i, info) in links.iter().enumerate() {
            if !eligible(i, info) {
                continue;
            }
            if let Some(p) = plan(need, info) {
                // Ties keep the earlier link (the caller's order is a preference).
                if best.as_ref().is_none_or(|(_, b)| self.better(need, &p, b)) {
                    best = Some((i, p));
                }
            }
        }
        best
    }

    /// Picks a link for `need` among `links` (their live info) at `now_ms`.
    pub fn select(
        &mut self,
        need: &Need,
        links: &[LinkInfo],
        now_ms: u64,
    ) -> Result<Selection, SelectError> {
        if links.len() > L {
            return Err(SelectError::TooManyLinks);
        }
        for (i, info) in links.iter().enumerate() {
            if let Some(since) = self.up_since.get_mut(i) {
                *since = match (info.is_up(), *since) {
                    (true, None) => Some(now_ms),
                    (true, s) => s,
                    (false, _) => None,
                };
            }
        }
        let current = self.current;
        let settled = |i: usize, info: &LinkInfo| {
            info.is_up()
                && (current == Some(i)
                    || self
                        .up_since
                        .get(i)
                        .copied()
                        .flatten()
                        .is_some_and(|s| now_ms.saturating_sub(s) >= self.hold_ms))
        };
        let healthy = |i: usize| self.health(i) != Some(Health::Demoted);

        let ideal = self.best(need, links, |i, _| healthy(i));
        let chosen = self
            .best(need, links, |i, info| settled(i, info) && healthy(i))
            .map(|c| (c, false))
            .or_else(|| {
                self.best(need, links, |i, info| settled(i, info))
                    .map(|c| (c, true))
            })
            .or_else(|| {
                // Nothing settled: take any link that is up rather than nothing.
                self.best(need, links, |_, info| info.is_up())
                    .map(|c| (c, true))
            });
        let Some(((index, plan), degraded)) = chosen else {
            return Err(if self.best(need, links, |_, _| true).is_some() {
                SelectError::AllDown
            } else {
                SelectError::Unsuitable
            });
        };
        if self.current.is_some_and(|c| c != index) {
            self.switches = self.switches.saturating_add(1);
        }
        self.current = Some(index);
        Ok(Selection {
            index,
            plan,
            failover: ideal.is_some_and(|(i, _)| i != index),
            degraded: degraded && self.health(index) == Some(Health::Demoted),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{LinkState, Medium};

    /// Wi-Fi, LoRaWAN at SF12 and LTE-M with their typical figures.
    fn links() -> [LinkInfo; 3] {
        [
            LinkInfo {
                bitrate_bps: 20_000_000,
                latency_ms: 5,
                energy_nj_per_byte: 280,
                ..LinkInfo::new(Medium::Wifi, 1472)
            },
            LinkInfo {
                bitrate_bps: 250,
                latency_ms: 1_500,
                energy_nj_per_byte: 3_840_000,
                ..LinkInfo::new(Medium::Lora, 51)
            },
            LinkInfo {
                bitrate_bps: 375_000,
                latency_ms: 100,
                energy_nj_per_byte: 15_000,
                cost_micro_per_kib: 150,
                ..LinkInfo::new(Medium::Cellular, 1358)
            },
        ]
    }

    #[test]
    fn objective_and_need_drive_the_choice() {
        let l = links();
        let mut s: LinkSelector<3, 8> = LinkSelector::new(Objective::Cost, 0);
        let small = Need::new(20, Priority::Normal);
        // Wi-Fi and LoRa are free; Wi-Fi uses less energy.
        assert_eq!(s.select(&small, &l, 0).unwrap().index, 0);
        let mut no_wifi = l;
        no_wifi[0].state = LinkState::Down;
        // Free LoRa beats metered LTE-M on cost...
        assert_eq!(s.select(&small, &no_wifi, 0).unwrap().index, 1);
        // ...unless it is too slow.
        let urgent = small.with_max_latency_ms(500);
        assert_eq!(s.select(&urgent, &no_wifi, 0).unwrap().index, 2);
        // Critical takes the fastest.
        let critical = Need::new(20, Priority::Critical);
        assert_eq!(s.select(&critical, &no_wifi, 0).unwrap().index, 2);
        // Too big for LoRa without fragmentation.
        let big = Need::new(200, Priority::Normal).without_fragmentation();
        assert_eq!(s.select(&big, &no_wifi, 0).unwrap().index, 2);
        let p = plan(&Need::new(200, Priority::Normal), &l[1]).unwrap();
        assert_eq!(p.fragments, 5);
        assert_eq!(p.wire_bytes, 225);
        assert!(plan(&Need::new(64 * 46 + 1, Priority::Low), &l[1]).is_none());
    }

    #[test]
    fn errors_distinguish_down_from_unsuitable() {
        let mut l = links();
        let mut s: LinkSelector<3, 8> = LinkSelector::new(Objective::Energy, 0);
        for x in &mut l {
            x.state = LinkState::Down;
        }
        assert_eq!(
            s.select(&Need::new(10, Priority::Low), &l, 0),
            Err(SelectError::AllDown)
        );
        let impossible = Need::new(10, Priority::Low).with_max_latency_ms(0);
        assert_eq!(s.select(&impossible, &l, 0), Err(SelectError::Unsuitable));
        let mut two: LinkSelector<2, 8> = LinkSelector::new(Objective::Energy, 0);
        assert_eq!(
            two.select(&Need::new(1, Priority::Low), &l, 0),
            Err(SelectError::TooManyLinks)
        );
    }

    #[test]
    fn failover_hold_time_and_return() {
        let mut l = links();
        let need = Need::new(30, Priority::Normal).with_max_latency_ms(60_000);
        let mut s: LinkSelector<3, 8> = LinkSelector::new(Objective::Energy, 5_000);
        assert_eq!(s.select(&need, &l, 0).unwrap().index, 0);
        l[0].state = LinkState::Down;
        let f = s.select(&need, &l, 1_000).unwrap();
        assert!(f.failover);
        assert_ne!(f.index, 0);
        l[0].state = LinkState::Up;
        // Back up at 2 s, but must stay up 5 s before it is trusted again.
        assert_ne!(s.select(&need, &l, 2_000).unwrap().index, 0);
        assert_ne!(s.select(&need, &l, 6_000).unwrap().index, 0);
        let back = s.select(&need, &l, 7_000).unwrap();
        assert_eq!(back.index, 0);
        assert!(!back.failover);
        assert_eq!(s.switches(), 2);
        assert_eq!(s.current(), Some(0));
    }

    #[test]
    fn demoted_link_is_avoided_then_restored() {
        let l = links();
        let need = Need::new(30, Priority::Normal);
        let mut s: LinkSelector<3, 4> = LinkSelector::new(Objective::Energy, 0);
        s.set_target(
            0,
            QosTarget {
                max_p95_latency_ms: Some(100),
                min_delivery_permille: 900,
                min_samples: 4,
            },
        )
        .unwrap();
        for _ in 0..4 {
            s.monitor_mut(0).unwrap().record_loss();
        }
        assert_eq!(s.health(0), Some(Health::Demoted));
        let sel = s.select(&need, &l, 0).unwrap();
        assert_ne!(sel.index, 0);
        assert!(!sel.degraded);
        // Only the demoted link left: used, flagged as degraded.
        let mut only = l;
        only[1].state = LinkState::Down;
        only[2].state = LinkState::Down;
        let sel = s.select(&need, &only, 0).unwrap();
        assert_eq!(sel.index, 0);
        assert!(sel.degraded);
        for _ in 0..4 {
            s.monitor_mut(0).unwrap().record_delivery(20, 0);
        }
        assert_eq!(s.select(&need, &l, 0).unwrap().index, 0);
        assert!(s.monitor(0).is_some());
        assert!(s.set_target(3, QosTarget::NONE).is_err());
    }
}
