//! [`CellularControl`] for AT-command modems (3GPP TS 27.007: SIMCom, Quectel, u-blox,
//! Nordic nRF91 ...) through any [`atat::asynch::AtatClient`] (feature `atat`).
//!
//! | operation | commands |
//! |---|---|
//! | `attach(apn)` | `AT+CGDCONT=<cid>,"IP","<apn>"`, `AT+CGATT=1`, `AT+CEREG?` |
//! | `detach()` | `AT+CGATT=0` |
//! | `signal_quality()` | `AT+CSQ` |
//! | `set_power_saving(Psm)` | `AT+CEDRXS=0`, `AT+CPSMS=1,,,"<T3412>","<T3324>"` |
//! | `set_power_saving(Edrx)` | `AT+CPSMS=0`, `AT+CEDRXS=2,4,"<cycle>"` |
//! | `set_power_saving(Off)` | `AT+CPSMS=0`, `AT+CEDRXS=0` |
//!
//! [`CellularControl::registration`] is synchronous, so it reports the state read by the
//! last `attach` or [`AtModem::refresh_registration`].

use atat::AtatCmd;
use atat::asynch::AtatClient;
use atat::atat_derive::{AtatCmd, AtatResp};

use crate::control::cellular::{
    CellularControl, PowerSaving, RegistrationStatus, SignalQuality, t3324_code, t3412_ext_code,
};

/// Why a modem operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AtModemError {
    /// The AT exchange failed (timeout, `ERROR`, parse failure).
    #[error("AT command failed: {0:?}")]
    At(atat::Error),
    /// Attached, but the network has not registered the modem.
    #[error("not registered: {0:?}")]
    NotRegistered(RegistrationStatus),
    /// A timer or cycle the 3GPP encodings cannot express.
    #[error("unsupported power-saving parameter")]
    Unsupported,
}

impl iot_core::Error for AtModemError {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::At(atat::Error::Timeout) => iot_core::ErrorKind::Timeout,
            Self::At(_) => iot_core::ErrorKind::Transport,
            Self::NotRegistered(RegistrationStatus::Denied) => iot_core::ErrorKind::Unauthorized,
            Self::NotRegistered(_) => iot_core::ErrorKind::InvalidState,
            Self::Unsupported => iot_core::ErrorKind::InvalidInput,
        }
    }
}

/// `OK` with no payload.
#[derive(Debug, Clone, AtatResp)]
pub struct NoResponse;

/// `AT+CGDCONT`: defines a PDP context.
#[derive(Debug, Clone, AtatCmd)]
#[at_cmd("+CGDCONT", NoResponse)]
pub struct SetPdpContext<'a> {
    /// Context id.
    #[at_arg(position = 0)]
    pub cid: u8,
    /// `"IP"`, `"IPV6"`, `"IPV4V6"` or `"Non-IP"`.
    #[at_arg(position = 1)]
    pub pdp_type: &'a str,
    /// Access point name.
    #[at_arg(position = 2)]
    pub apn: &'a str,
}

/// `AT+CGATT`: attaches to (1) or detaches from (0) the packet domain.
#[derive(Debug, Clone, AtatCmd)]
#[at_cmd("+CGATT", NoResponse, timeout_ms = 180_000)]
pub struct SetAttach {
    /// 1 attach, 0 detach.
    #[at_arg(position = 0)]
    pub state: u8,
}

/// `+CEREG: <n>,<stat>[,<tac>,<ci>,<AcT>]`.
#[derive(Debug, Clone, AtatResp)]
pub struct EpsRegistration {
    /// Unsolicited result mode.
    #[at_arg(position = 0)]
    pub n: u8,
    /// Registration state code.
    #[at_arg(position = 1)]
    pub stat: u8,
    /// Tracking area code (hex), when reported.
    #[at_arg(position = 2)]
    pub tac: Option<heapless::String<8>>,
    /// Cell id (hex), when reported.
    #[at_arg(position = 3)]
    pub ci: Option<heapless::String<16>>,
    /// Access technology, when reported.
    #[at_arg(position = 4)]
    pub act: Option<u8>,
}

/// `AT+CEREG?`: reads the EPS registration state.
#[derive(Debug, Clone, AtatCmd)]
#[at_cmd("+CEREG?", EpsRegistration)]
pub struct GetEpsRegistration;

/// `+CSQ: <rssi>,<ber>`.
#[derive(Debug, Clone, AtatResp)]
pub struct SignalQualityResponse {
    /// 0..=31, or 99 unknown.
    #[at_arg(position = 0)]
    pub rssi: u8,
    /// Bit error rate class, or 99.
    #[at_arg(position = 1)]
    pub ber: u8,
}

/// `AT+CSQ`: reads signal quality.
#[derive(Debug, Clone, AtatCmd)]
#[at_cmd("+CSQ", SignalQualityResponse)]
pub struct GetSignalQuality;

/// `AT+CPSMS`: power saving mode.
#[derive(Debug, Clone, AtatCmd)]
#[at_cmd("+CPSMS", NoResponse)]
pub struct SetPsm<'a> {
    /// 1 enable, 0 disable.
    #[at_arg(position = 0)]
    pub mode: u8,
    /// Requested periodic RAU (2G/3G): left empty.
    #[at_arg(position = 1)]
    pub rau: Option<&'a str>,
    /// Requested GPRS ready timer (2G/3G): left empty.
    #[at_arg(position = 2)]
    pub ready: Option<&'a str>,
    /// Requested periodic TAU (T3412 extended) as 8 binary digits.
    #[at_arg(position = 3)]
    pub tau: Option<&'a str>,
    /// Requested active time (T3324) as 8 binary digits.
    #[at_arg(position = 4)]
    pub active: Option<&'a str>,
}

/// `AT+CEDRXS`: extended DRX.
#[derive(Debug, Clone, AtatCmd)]
#[at_cmd("+CEDRXS", NoResponse)]
pub struct SetEdrx<'a> {
    /// 0 disable, 2 enable with unsolicited reports.
    #[at_arg(position = 0)]
    pub mode: u8,
    /// Access technology (4 = E-UTRAN, 5 = NB-IoT): omitted when disabling.
    #[at_arg(position = 1)]
    pub act: Option<u8>,
    /// Requested eDRX cycle as 4 binary digits.
    #[at_arg(position = 2)]
    pub value: Option<&'a str>,
}

/// The eDRX cycle code (TS 24.008 table 10.5.5.32, E-UTRAN) of the shortest cycle at least
/// `cycle_ms` long.
pub fn edrx_code(cycle_ms: u32) -> Option<u8> {
    // Cycles in units of 10.24 s / 8 = 1.28 s ... expressed in milliseconds.
    const CYCLES_MS: [(u8, u32); 14] = [
        (0b0000, 5_120),
        (0b0001, 10_240),
        (0b0010, 20_480),
        (0b0011, 40_960),
        (0b0100, 61_440),
        (0b0101, 81_920),
        (0b0110, 102_400),
        (0b0111, 122_880),
        (0b1000, 143_360),
        (0b1001, 163_840),
        (0b1010, 327_680),
        (0b1011, 655_360),
        (0b1100, 1_310_720),
        (0b1101, 2_621_440),
    ];
    CYCLES_MS
        .iter()
        .find(|(_, ms)| *ms >= cycle_ms)
        .map(|(code, _)| *code)
}

/// `bits` as `width` ASCII binary digits, most significant first.
fn binary_digits<const W: usize>(bits: u8) -> [u8; W] {
    let mut out = [b'0'; W];
    for (i, slot) in out.iter_mut().rev().enumerate() {
        if u32::try_from(i)
            .ok()
            .and_then(|i| bits.checked_shr(i))
            .unwrap_or(0)
            & 1
            == 1
        {
            *slot = b'1';
        }
    }
    out
}

/// A cellular modem driven through an `atat` client.
#[derive(Debug)]
pub struct AtModem<C> {
    client: C,
    cid: u8,
    status: RegistrationStatus,
}

impl<C: AtatClient> AtModem<C> {
    /// A modem using PDP context `cid` (usually 1).
    pub const fn new(client: C, cid: u8) -> Self {
        Self {
            client,
            cid,
            status: RegistrationStatus::Unknown,
        }
    }

    /// Reads the registration state from the modem (`AT+CEREG?`).
    pub async fn refresh_registration(&mut self) -> Result<RegistrationStatus, AtModemError> {
        let r = self
            .client
            .send(&GetEpsRegistration)
            .await
            .map_err(AtModemError::At)?;
        self.status = RegistrationStatus::from_3gpp(r.stat);
        Ok(self.status)
    }

    /// The client.
    pub fn into_inner(self) -> C {
        self.client
    }

    async fn send<Cmd: AtatCmd>(&mut self, cmd: &Cmd) -> Result<Cmd::Response, AtModemError> {
        self.client.send(cmd).await.map_err(AtModemError::At)
    }
}

impl<C: AtatClient> CellularControl for AtModem<C> {
    type Error = AtModemError;

    async fn attach(&mut self, apn: &str) -> Result<(), Self::Error> {
        self.send(&SetPdpContext {
            cid: self.cid,
            pdp_type: "IP",
            apn,
        })
        .await?;
        self.send(&SetAttach { state: 1 }).await?;
        match self.refresh_registration().await? {
            s if s.is_registered() => Ok(()),
            s => Err(AtModemError::NotRegistered(s)),
        }
    }

    async fn detach(&mut self) -> Result<(), Self::Error> {
        self.send(&SetAttach { state: 0 }).await?;
        self.status = RegistrationStatus::NotRegistered;
        Ok(())
    }

    fn registration(&self) -> RegistrationStatus {
        self.status
    }

    async fn signal_quality(&mut self) -> Result<SignalQuality, Self::Error> {
        let r = self.send(&GetSignalQuality).await?;
        Ok(SignalQuality::from_csq(r.rssi))
    }

    async fn set_power_saving(&mut self, mode: PowerSaving) -> Result<(), Self::Error> {
        let psm_off = SetPsm {
            mode: 0,
            rau: None,
            ready: None,
            tau: None,
            active: None,
        };
        let edrx_off = SetEdrx {
            mode: 0,
            act: None,
            value: None,
        };
        match mode {
            PowerSaving::Off => {
                self.send(&psm_off).await?;
                self.send(&edrx_off).await?;
            }
            PowerSaving::Psm {
                periodic_tau_s,
                active_time_s,
            } => {
                let tau = binary_digits::<8>(
                    t3412_ext_code(periodic_tau_s).ok_or(AtModemError::Unsupported)?,
                );
                let active =
                    binary_digits::<8>(t3324_code(active_time_s).ok_or(AtModemError::Unsupported)?);
                let tau = core::str::from_utf8(&tau).map_err(|_| AtModemError::Unsupported)?;
                let active =
                    core::str::from_utf8(&active).map_err(|_| AtModemError::Unsupported)?;
                self.send(&edrx_off).await?;
                self.send(&SetPsm {
                    mode: 1,
                    rau: None,
                    ready: None,
                    tau: Some(tau),
                    active: Some(active),
                })
                .await?;
            }
            PowerSaving::Edrx { cycle_ms } => {
                let code =
                    binary_digits::<4>(edrx_code(cycle_ms).ok_or(AtModemError::Unsupported)?);
                let code = core::str::from_utf8(&code).map_err(|_| AtModemError::Unsupported)?;
                self.send(&psm_off).await?;
                self.send(&SetEdrx {
                    mode: 2,
                    act: Some(4),
                    value: Some(code),
                })
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::string::String;
    use std::vec::Vec;

    use embassy_futures::block_on;

    use super::*;

    /// Records each command's bytes and answers from a script of responses.
    struct ScriptedModem {
        sent: Vec<String>,
        replies: Vec<Result<&'static [u8], atat::Error>>,
        writer: Sink,
    }

    struct Sink;

    impl embedded_io_async::ErrorType for Sink {
        type Error = core::convert::Infallible;
    }

    impl embedded_io_async::Write for Sink {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    impl AtatClient for ScriptedModem {
        type Writer = Sink;

        fn inner(&mut self) -> &mut Sink {
            &mut self.writer
        }

        async fn send_with<Cmd: AtatCmd>(
            &mut self,
            cmd: &Cmd,
            _write: impl AsyncFnOnce(&mut Sink) -> Result<(), core::convert::Infallible>,
        ) -> Result<Cmd::Response, atat::Error> {
            self.send(cmd).await
        }

        async fn send<Cmd: AtatCmd>(&mut self, cmd: &Cmd) -> Result<Cmd::Response, atat::Error> {
            let mut buf = [0u8; 128];
            let n = cmd.write(&mut buf);
            self.sent
                .push(String::from_utf8_lossy(&buf[..n]).trim_end().into());
            let reply = self.replies.remove(0)?;
            cmd.parse(Ok(reply))
        }
    }

    fn modem(replies: Vec<Result<&'static [u8], atat::Error>>) -> AtModem<ScriptedModem> {
        AtModem::new(
            ScriptedModem {
                sent: Vec::new(),
                replies,
                writer: Sink,
            },
            1,
        )
    }

    #[test]
    fn attach_sends_the_standard_sequence_and_reads_registration() {
        let mut m = modem(std::vec![
            Ok(b""),
            Ok(b""),
            Ok(b"+CEREG: 2,5,\"1A2B\",\"01A2B3C4\",7"),
            Ok(b"+CSQ: 20,99"),
            Ok(b""),
        ]);
        block_on(m.attach("iot.example")).unwrap();
        assert_eq!(m.registration(), RegistrationStatus::Roaming);
        assert_eq!(block_on(m.signal_quality()).unwrap().rssi_dbm, Some(-73));
        block_on(m.detach()).unwrap();
        assert_eq!(m.registration(), RegistrationStatus::NotRegistered);
        assert_eq!(
            m.into_inner().sent,
            [
                "AT+CGDCONT=1,\"IP\",\"iot.example\"",
                "AT+CGATT=1",
                "AT+CEREG?",
                "AT+CSQ",
                "AT+CGATT=0",
            ]
        );
    }

    #[test]
    fn denied_registration_and_at_errors_are_reported() {
        let mut m = modem(std::vec![Ok(b""), Ok(b""), Ok(b"+CEREG: 0,3")]);
        assert_eq!(
            block_on(m.attach("x")),
            Err(AtModemError::NotRegistered(RegistrationStatus::Denied))
        );
        assert_eq!(
            iot_core::Error::kind(&AtModemError::NotRegistered(RegistrationStatus::Denied)),
            iot_core::ErrorKind::Unauthorized
        );
        let mut m = modem(std::vec![Err(atat::Error::Timeout)]);
        let e = block_on(m.attach("x")).unwrap_err();
        assert_eq!(e, AtModemError::At(atat::Error::Timeout));
        assert_eq!(iot_core::Error::kind(&e), iot_core::ErrorKind::Timeout);
    }

    #[test]
    fn power_saving_commands() {
        let mut m = modem(std::vec![Ok(b""); 6]);
        block_on(m.set_power_saving(PowerSaving::Psm {
            periodic_tau_s: 86_400,
            active_time_s: 60,
        }))
        .unwrap();
        block_on(m.set_power_saving(PowerSaving::Edrx { cycle_ms: 81_920 })).unwrap();
        block_on(m.set_power_saving(PowerSaving::Off)).unwrap();
        assert_eq!(
            block_on(m.set_power_saving(PowerSaving::Edrx { cycle_ms: u32::MAX })),
            Err(AtModemError::Unsupported)
        );
        assert_eq!(
            m.into_inner().sent,
            [
                "AT+CEDRXS=0",
                "AT+CPSMS=1,,,\"00111000\",\"00011110\"",
                "AT+CPSMS=0",
                "AT+CEDRXS=2,4,\"0101\"",
                "AT+CPSMS=0",
                "AT+CEDRXS=0",
            ]
        );
    }

    #[test]
    fn edrx_codes_and_binary_digits() {
        assert_eq!(edrx_code(0), Some(0));
        assert_eq!(edrx_code(20_000), Some(0b0010));
        assert_eq!(edrx_code(2_621_440), Some(0b1101));
        assert_eq!(edrx_code(2_621_441), None);
        assert_eq!(&binary_digits::<8>(0b0011_1000), b"00111000");
        assert_eq!(&binary_digits::<4>(0b0101), b"0101");
    }
}
