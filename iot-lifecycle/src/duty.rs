//! The periodic duties of the device agent, which the schedule runs and the configuration
//! times.

/// A periodic duty of the device agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Duty {
    /// Evaluate device health.
    HealthCheck,
    /// Send a liveness signal.
    Heartbeat,
    /// Report shadow state and ask for pending desired changes.
    ShadowSync,
    /// Read sensors and send readings.
    Telemetry,
}

impl Duty {
    /// Every duty, in the order that wins when several are due at once.
    pub const ALL: [Duty; 4] = [
        Self::HealthCheck,
        Self::Heartbeat,
        Self::ShadowSync,
        Self::Telemetry,
    ];

    /// Its index in per-duty tables.
    pub(crate) const fn slot(self) -> usize {
        match self {
            Self::HealthCheck => 0,
            Self::Heartbeat => 1,
            Self::ShadowSync => 2,
            Self::Telemetry => 3,
        }
    }
}
