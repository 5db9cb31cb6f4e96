//! The async driver that connects any [`Agent`] (whatever its [`App`]) to a [`ReliableEndpoint`] on a device.
//!
//! One [`Runner::step`] receives what the link holds (acking and deduplicating), hands each
//! message to [`Agent::handle`], runs the due duties with [`Agent::poll`], transmits what
//! they queued, and returns when it next has work. [`Runner::run_until`] repeats that,
//! sleeping in between with a [`Waiter`] the firmware implements, for example with
//! `embassy_futures::select::select(Timer::at(deadline), link_ready.wait())` on embassy:
//! it wakes for the deadline *or* an inbound datagram, never spins.
//!
//! The runner owns an inbox of `K` envelopes of up to `P` payload bytes, so the agent can
//! answer messages through the same endpoint that received them. A message that does not
//! fit is refused before it is acknowledged and counted ([`Runner::dropped`]): its QoS 1/2
//! sender retransmits it, so no message the sender believes delivered is lost.
//!
//! Across a reboot: [`Runner::save`] writes the transport outbox's image (the QoS 1/2
//! messages not yet acknowledged by the peer, for example command acks) and then the agent's
//! record to a [`Storage`]; [`Runner::restore`] reads both back at boot. A step leaves its
//! inbox empty (every message it acknowledged has been handed to the agent), so a save after
//! a step holds everything the peer was told arrived.

use heapless::Deque;
use iot_core::{EnvelopeBuf, MessageKind, QoS};
use iot_transport::Link;
use iot_transport::outbox::{OutboxError, Priority, SliceStorage};
use iot_transport::qos::{EndpointError, ReliableEndpoint};
use iot_transport::rng::Rng;

use iot_shadow::typed::ShadowState;

use crate::storage::{OUTBOX_RECORD, Storage};
use crate::{Agent, App, Outbound};

/// Why [`Runner::save`] or [`Runner::restore`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PersistError<E> {
    /// The storage failed.
    Storage(E),
    /// The outbox image did not fit the image buffer, or the stored one did not restore.
    Outbox(OutboxError),
}

/// How the driver sleeps: the firmware's timer plus its "a datagram arrived" signal.
#[allow(async_fn_in_trait)] // Single-threaded device executors, as `iot_transport::Link`.
pub trait Waiter {
    /// The current time in milliseconds (monotonic, same timeline as the agent's).
    fn now_ms(&mut self) -> u64;
    /// Returns at `deadline_ms` (`None`: no deadline) or earlier when a datagram may have
    /// arrived. Early or spurious returns are harmless.
    async fn wait(&mut self, deadline_ms: Option<u64>);
}

/// [`Outbound`] into a [`ReliableEndpoint`]'s outbox: command acks, decommissioning,
/// registration, lifecycle reports and OTA progress at [`Priority::High`], everything else at
/// [`Priority::Normal`].
#[derive(Debug)]
pub struct EndpointOutbound<'a, L, R, const N: usize, const M: usize, const D: usize> {
    endpoint: &'a mut ReliableEndpoint<L, R, N, M, D>,
}

impl<'a, L, R, const N: usize, const M: usize, const D: usize> EndpointOutbound<'a, L, R, N, M, D> {
    /// Sends through `endpoint`.
    pub const fn new(endpoint: &'a mut ReliableEndpoint<L, R, N, M, D>) -> Self {
        Self { endpoint }
    }
}

/// The outbox priority of each kind the agent sends.
pub const fn priority_for(kind: MessageKind) -> Priority {
    match kind {
        MessageKind::CommandAck
        | MessageKind::Decommission
        | MessageKind::RegistrationRequest
        | MessageKind::LifecycleReport
        | MessageKind::OtaProgress => Priority::High,
        _ => Priority::Normal,
    }
}

impl<L: Link, R: Rng, const N: usize, const M: usize, const D: usize> Outbound
    for EndpointOutbound<'_, L, R, N, M, D>
{
    type Error = EndpointError<L::Error>;

    fn send(
        &mut self,
        kind: MessageKind,
        qos: QoS,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), Self::Error> {
        self.endpoint
            .enqueue(kind, qos, priority_for(kind), payload, now_ms)
            .map(|_| ())
    }
}

/// Drives an [`Agent`] over a [`ReliableEndpoint`]. See the [module documentation](self).
#[derive(Debug)]
pub struct Runner<const K: usize, const P: usize> {
    inbox: Deque<EnvelopeBuf<P>, K>,
    dropped: u32,
    refused: u32,
    /// The CRC-32 of the outbox image last saved.
    saved_outbox: Option<u32>,
}

impl<const K: usize, const P: usize> Default for Runner<K, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const K: usize, const P: usize> Runner<K, P> {
    /// A runner with an empty inbox.
    pub const fn new() -> Self {
        Self {
            inbox: Deque::new(),
            dropped: 0,
            refused: 0,
            saved_outbox: None,
        }
    }

    /// Writes the endpoint's outbox image (if it changed since the last save; built in
    /// `scratch`, which must hold `endpoint.outbox().image_len()` bytes) and then the agent's record ([`Agent::save`]) to
    /// `storage`. Outbox first: a power cut between the two leaves pending replies that
    /// are resent (the peer's dedup window drops them), never an agent that believes a
    /// reply queued which the outbox lost. `Ok(true)`: something was written.
    pub fn save<
        St: Storage + ?Sized,
        L: Link,
        R: Rng,
        const N: usize,
        const M: usize,
        const D: usize,
        T: ShadowState + Clone + PartialEq,
        const H: usize,
        const C: usize,
        const S: usize,
        const BUF: usize,
        const RD: usize,
    >(
        &mut self,
        agent: &mut Agent<T, H, C, S, BUF, RD>,
        endpoint: &ReliableEndpoint<L, R, N, M, D>,
        storage: &mut St,
        scratch: &mut [u8],
    ) -> Result<bool, PersistError<St::Error>> {
        endpoint
            .outbox()
            .save(&mut SliceStorage(scratch), 0)
            .map_err(PersistError::Outbox)?;
        let len = endpoint.outbox().image_len();
        let bytes = scratch
            .get(..len)
            .ok_or(PersistError::Outbox(OutboxError::StorageTooSmall))?;
        let digest = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(bytes);
        let mut wrote = false;
        if self.saved_outbox != Some(digest) {
            storage
                .save_item(OUTBOX_RECORD, bytes)
                .map_err(PersistError::Storage)?;
            self.saved_outbox = Some(digest);
            wrote = true;
        }
        let saved = agent.save(storage).map_err(PersistError::Storage)?;
        Ok(wrote || saved)
    }

    /// At boot: [`Agent::restore`], then the outbox image [`Runner::save`] wrote into the
    /// endpoint's outbox (its messages due at once, keeping their ids; read through
    /// `scratch`, as large as the one given to [`Runner::save`]). Returns what
    /// [`Agent::restore`] returns. Start the endpoint's new ids at
    /// [`Agent::first_message_id`] (`ReliableEndpoint::with_next_id`).
    pub fn restore<
        St: Storage + ?Sized,
        L: Link,
        R: Rng,
        const N: usize,
        const M: usize,
        const D: usize,
        T: ShadowState + Clone + PartialEq,
        A: App<State = T> + ?Sized,
        const H: usize,
        const C: usize,
        const S: usize,
        const BUF: usize,
        const RD: usize,
    >(
        &mut self,
        now_ms: u64,
        agent: &mut Agent<T, H, C, S, BUF, RD>,
        endpoint: &mut ReliableEndpoint<L, R, N, M, D>,
        board: &mut A,
        storage: &mut St,
        scratch: &mut [u8],
    ) -> Result<bool, PersistError<St::Error>> {
        let restored = agent
            .restore(storage, now_ms, board, &mut EndpointOutbound::new(endpoint))
            .map_err(PersistError::Storage)?;
        let found = storage
            .load_item(OUTBOX_RECORD, scratch)
            .map_err(PersistError::Storage)?
            .is_some();
        if found {
            endpoint
                .outbox_mut()
                .restore(&mut SliceStorage(scratch), 0, now_ms)
                .map_err(PersistError::Outbox)?;
        }
        self.saved_outbox = None;
        Ok(restored)
    }

    fn handle_inbox<
        L: Link,
        R: Rng,
        const N: usize,
        const M: usize,
        const D: usize,
        T: ShadowState + Clone + PartialEq,
        A: App<State = T> + ?Sized,
        const H: usize,
        const C: usize,
        const S: usize,
        const BUF: usize,
        const RD: usize,
    >(
        &mut self,
        now_ms: u64,
        agent: &mut Agent<T, H, C, S, BUF, RD>,
        endpoint: &mut ReliableEndpoint<L, R, N, M, D>,
        board: &mut A,
    ) {
        while let Some(env) = self.inbox.pop_front() {
            let mut out = EndpointOutbound::new(endpoint);
            if agent
                .handle(now_ms, &env.as_ref(), board, &mut out)
                .is_err()
            {
                self.refused = self.refused.saturating_add(1);
            }
        }
    }

    /// Inbound messages not taken (and not acknowledged) because the inbox was full or the
    /// payload too large.
    pub const fn dropped(&self) -> u32 {
        self.dropped
    }

    /// Inbound messages the agent refused (see [`crate::AgentError`]).
    pub const fn refused(&self) -> u32 {
        self.refused
    }

    async fn receive<L: Link, R: Rng, const N: usize, const M: usize, const D: usize>(
        &mut self,
        now_ms: u64,
        endpoint: &mut ReliableEndpoint<L, R, N, M, D>,
    ) -> Result<Option<u64>, EndpointError<L::Error>> {
        let inbox = &mut self.inbox;
        let dropped = &mut self.dropped;
        let report = endpoint
            .poll_taking(now_ms, |env| {
                let copy = heapless::Vec::from_slice(env.payload)
                    .ok()
                    .map(|payload| EnvelopeBuf {
                        device: env.device,
                        seq: env.seq,
                        id: env.id,
                        qos: env.qos,
                        kind: env.kind,
                        payload,
                    });
                // Not taken: not acked either, so a QoS 1/2 sender sends it again.
                let taken = copy.is_some_and(|c| inbox.push_back(c).is_ok());
                if !taken {
                    *dropped = dropped.saturating_add(1);
                }
                taken
            })
            .await?;
        Ok(report.next_wakeup_ms)
    }

    /// One round at `now_ms`: receive, handle, run due duties, transmit. Returns when the
    /// next round is needed (`None`: only when a message arrives).
    pub async fn step<
        L: Link,
        R: Rng,
        const N: usize,
        const M: usize,
        const D: usize,
        T: ShadowState + Clone + PartialEq,
        A: App<State = T> + ?Sized,
        const H: usize,
        const C: usize,
        const S: usize,
        const BUF: usize,
        const RD: usize,
    >(
        &mut self,
        now_ms: u64,
        agent: &mut Agent<T, H, C, S, BUF, RD>,
        endpoint: &mut ReliableEndpoint<L, R, N, M, D>,
        board: &mut A,
    ) -> Result<Option<u64>, EndpointError<L::Error>> {
        self.receive(now_ms, endpoint).await?;
        self.handle_inbox(now_ms, agent, endpoint, board);
        let next_agent = agent.poll(now_ms, board, &mut EndpointOutbound::new(endpoint));
        let next_link = self.receive(now_ms, endpoint).await?;
        if !self.inbox.is_empty() {
            // Acknowledged messages are the agent's before the step returns (and before a
            // save); what they queued goes out at the next step, due at once.
            self.handle_inbox(now_ms, agent, endpoint, board);
            return Ok(Some(now_ms));
        }
        Ok(match (next_agent, next_link) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Steps and sleeps until the waiter's clock passes `until_ms`.
    pub async fn run_until<
        L: Link,
        R: Rng,
        const N: usize,
        const M: usize,
        const D: usize,
        T: ShadowState + Clone + PartialEq,
        A: App<State = T> + ?Sized,
        W: Waiter + ?Sized,
        const H: usize,
        const C: usize,
        const S: usize,
        const BUF: usize,
        const RD: usize,
    >(
        &mut self,
        agent: &mut Agent<T, H, C, S, BUF, RD>,
        endpoint: &mut ReliableEndpoint<L, R, N, M, D>,
        board: &mut A,
        waiter: &mut W,
        until_ms: u64,
    ) -> Result<(), EndpointError<L::Error>> {
        loop {
            let now = waiter.now_ms();
            if now > until_ms {
                return Ok(());
            }
            let next = self.step(now, agent, endpoint, board).await?;
            let stop = until_ms.saturating_add(1);
            waiter.wait(Some(next.map_or(stop, |t| t.min(stop)))).await;
        }
    }
}
