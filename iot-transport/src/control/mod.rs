//! Medium control: one trait per medium for what a datagram [`crate::Link`] cannot express
//! (joining networks, radio parameters, power saving); `sim` (feature `testkit`)
//! holds a simulated implementation of each.
//!
//! * [`wifi::WifiControl`]: scan, join with credentials, leave, RSSI.
//! * [`lora::LoraControl`]: OTAA/ABP join, data rate / spreading factor, duty-cycle budget,
//!   confirmed uplinks, MTU per data rate.
//! * [`cellular::CellularControl`]: attach with an APN, detach, registration status, signal
//!   quality, PSM / eDRX power saving.

pub mod cellular;
pub mod lora;
pub mod wifi;

/// Errors of the medium control traits' simulated implementations, and a ready-made error
/// type for adapters.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ControlError {
    /// Not joined / attached: join first.
    #[error("not joined to a network")]
    NotJoined,
    /// The network was not found.
    #[error("network not found")]
    NotFound,
    /// Credentials or keys were refused.
    #[error("authentication failed")]
    AuthFailed,
    /// The network refused registration.
    #[error("registration denied")]
    Denied,
    /// The duty-cycle budget forbids sending for this long.
    #[error("duty cycle exhausted for {wait_ms} ms")]
    DutyCycle {
        /// Milliseconds until the next transmission is allowed.
        wait_ms: u64,
    },
    /// The payload exceeds what the current settings carry.
    #[error("payload of {len} bytes exceeds {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Current maximum.
        max: usize,
    },
    /// A parameter is outside what the medium supports.
    #[error("unsupported parameter")]
    Unsupported,
    /// The operation did not finish in time (no join accept, no ack).
    #[error("timed out")]
    Timeout,
    /// The radio or modem failed.
    #[error("device failure")]
    Device,
}

impl iot_core::Error for ControlError {
    fn kind(&self) -> iot_core::ErrorKind {
        use iot_core::ErrorKind;
        match self {
            Self::NotJoined => ErrorKind::InvalidState,
            Self::NotFound => ErrorKind::NotFound,
            Self::AuthFailed | Self::Denied => ErrorKind::Unauthorized,
            Self::DutyCycle { .. } => ErrorKind::Capacity,
            Self::TooLarge { .. } => ErrorKind::Capacity,
            Self::Unsupported => ErrorKind::InvalidInput,
            Self::Timeout => ErrorKind::Timeout,
            Self::Device => ErrorKind::Transport,
        }
    }
}
