//! An `embedded-nal-async` TCP stack over tokio, so the device session runs on a host
//! (tests, gateways, simulations) exactly as it runs on a microcontroller.

use core::net::SocketAddr;

use embedded_io_adapters::tokio_1::FromTokio;
use embedded_nal_async::TcpConnect;

/// Connects with [`tokio::net::TcpStream`]; each connection is an `embedded-io-async` stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioTcp;

impl TcpConnect for TokioTcp {
    type Error = std::io::Error;
    type Connection<'a> = FromTokio<tokio::net::TcpStream>;

    async fn connect<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Result<Self::Connection<'a>, Self::Error> {
        let stream = tokio::net::TcpStream::connect(remote).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}
