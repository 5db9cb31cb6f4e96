//! A [`Link`] over any `embedded-nal-async` connected UDP socket (feature `nal`): the IP
//! stacks of Wi-Fi chips, Ethernet MACs and cellular modems (`embassy-net`, `esp-wifi`,
//! AT-command stacks) become links the selector and the reliable endpoint can use.
//!
//! Up/down is the application's knowledge (it follows `WifiControl::is_joined`, the cellular
//! registration, the Ethernet PHY): set it with [`UdpLink::set_state`].

use embedded_nal_async::ConnectedUdp;

use crate::link::{Link, LinkInfo, LinkState};

/// Why a UDP link failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UdpLinkError<E> {
    /// The socket failed.
    #[error("socket error: {0:?}")]
    Io(E),
    /// The datagram exceeds the link's MTU.
    #[error("datagram of {len} bytes exceeds the MTU of {mtu}")]
    TooLarge {
        /// Datagram length.
        len: usize,
        /// MTU.
        mtu: u16,
    },
    /// The link is marked down.
    #[error("link is down")]
    Down,
}

impl<E: embedded_io_async::Error> iot_core::Error for UdpLinkError<E> {
    fn kind(&self) -> iot_core::ErrorKind {
        match self {
            Self::Io(e) => crate::link::io_error_kind(e.kind()),
            Self::Down => iot_core::ErrorKind::Transport,
            Self::TooLarge { .. } => iot_core::ErrorKind::Capacity,
        }
    }
}

/// A connected UDP socket as a [`Link`].
#[derive(Debug)]
pub struct UdpLink<S> {
    socket: S,
    info: LinkInfo,
}

impl<S: ConnectedUdp> UdpLink<S> {
    /// Wraps `socket`, reporting `info` (for example
    /// `iot-planning`'s `Protocol::Wifi.profile().typical_link_info()`, live RSSI filled in).
    pub const fn new(socket: S, info: LinkInfo) -> Self {
        Self { socket, info }
    }

    /// Marks the link up or down.
    pub fn set_state(&mut self, state: LinkState) {
        self.info.state = state;
    }

    /// Updates the signal figures.
    pub fn set_signal(&mut self, rssi_dbm: Option<i16>, snr_db: Option<i16>) {
        self.info.rssi_dbm = rssi_dbm;
        self.info.snr_db = snr_db;
    }

    /// The socket.
    pub fn into_inner(self) -> S {
        self.socket
    }
}

impl<S: ConnectedUdp> Link for UdpLink<S> {
    type Error = UdpLinkError<S::Error>;

    fn info(&self) -> LinkInfo {
        self.info
    }

    async fn send(&mut self, datagram: &[u8]) -> Result<(), Self::Error> {
        if !self.info.is_up() {
            return Err(UdpLinkError::Down);
        }
        if datagram.len() > usize::from(self.info.mtu) {
            return Err(UdpLinkError::TooLarge {
                len: datagram.len(),
                mtu: self.info.mtu,
            });
        }
        self.socket.send(datagram).await.map_err(UdpLinkError::Io)
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.socket
            .receive_into(buf)
            .await
            .map_err(UdpLinkError::Io)
    }

    /// Polls the socket's receive future once. Stacks whose `receive_into` is cancel-safe
    /// (embassy-net's is) lose nothing when no datagram is ready.
    fn try_receive(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error> {
        use core::future::Future;
        use core::pin::pin;
        use core::task::{Context, Poll, Waker};
        let mut fut = pin!(self.socket.receive_into(buf));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.map(Some).map_err(UdpLinkError::Io),
            Poll::Pending => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use core::future::poll_fn;
    use core::task::Poll;
    use std::collections::VecDeque;
    use std::vec::Vec;

    use embassy_futures::block_on;

    use super::*;
    use crate::link::Medium;

    /// A socket whose peer is a queue; receive is pending when empty.
    struct FakeSocket {
        inbox: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
    }

    impl ConnectedUdp for FakeSocket {
        type Error = embedded_io_async::ErrorKind;

        async fn send(&mut self, data: &[u8]) -> Result<(), Self::Error> {
            self.sent.push(data.to_vec());
            Ok(())
        }

        async fn receive_into(&mut self, buffer: &mut [u8]) -> Result<usize, Self::Error> {
            let d = poll_fn(|_| match self.inbox.pop_front() {
                Some(d) => Poll::Ready(d),
                None => Poll::Pending,
            })
            .await;
            let dst = buffer
                .get_mut(..d.len())
                .ok_or(embedded_io_async::ErrorKind::OutOfMemory)?;
            dst.copy_from_slice(&d);
            Ok(d.len())
        }
    }

    #[test]
    fn udp_link_sends_receives_and_respects_state_and_mtu() {
        let mut link = UdpLink::new(
            FakeSocket {
                inbox: VecDeque::new(),
                sent: Vec::new(),
            },
            LinkInfo::new(Medium::Wifi, 1472),
        );
        let mut buf = [0u8; 16];
        assert_eq!(link.try_receive(&mut buf), Ok(None));
        block_on(link.send(b"up")).unwrap();
        assert!(matches!(
            block_on(link.send(&[0; 1473])),
            Err(UdpLinkError::TooLarge { len: 1473, .. })
        ));
        link.set_state(LinkState::Down);
        assert_eq!(block_on(link.send(b"x")), Err(UdpLinkError::Down));
        link.set_state(LinkState::Up);
        link.set_signal(Some(-60), None);
        assert_eq!(link.info().rssi_dbm, Some(-60));
        let mut sock = link.into_inner();
        assert_eq!(sock.sent, [b"up".to_vec()]);
        sock.inbox.push_back(b"down".to_vec());
        let mut link = UdpLink::new(sock, LinkInfo::new(Medium::Ethernet, 1472));
        assert_eq!(link.try_receive(&mut buf), Ok(Some(4)));
        link.into_inner().inbox.push_back(b"x".to_vec());
    }
}
