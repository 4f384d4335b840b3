//! `Client`: a device connection that comes back by itself.

use std::sync::Arc;
use std::time::Duration;

use hearth_protocol::ErrorCode;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::config::{client_endpoint, quic_client_config};
use crate::{Accepted, ClientConfig, ClientError, Connection, Deliveries, Delivery, Outgoing};

/// How long [`Client::send`] and [`Client::connection`] wait for a live connection.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Link {
    /// Between connections; the last failure, if any.
    Connecting(Option<ClientError>),
    Up(Connection),
    /// Gave up (permanent error) or closed.
    Stopped(ClientError),
}

/// A reconnecting device connection. A background task connects, and after the connection is
/// lost reconnects with exponential backoff and jitter (100 ms .. 10 s); deliveries of every
/// connection go to the one [`Deliveries`] returned by [`Client::new`] (the node redelivers
/// what was not acknowledged, so a `seq` may be seen twice). It stops for good on
/// BAD_TOKEN, TOKEN_EXPIRED, DEVICE_REMOVED and UNSUPPORTED_VERSION (see
/// [`Client::stopped`]), on [`Client::close`], or when every clone is dropped.
///
/// A connection closed with REPLACED (another connection of the same device took over) is
/// retried too, but without resetting the backoff, so two clients of one device do not
/// replace each other in a tight loop.
#[derive(Clone)]
pub struct Client {
    state: watch::Receiver<Link>,
    stop: Arc<watch::Sender<bool>>,
}

impl Client {
    /// Starts connecting in the background. Must be called inside a tokio runtime.
    pub fn new(cfg: ClientConfig) -> (Client, Deliveries) {
        let (state_tx, state) = watch::channel(Link::Connecting(None));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (deliveries_tx, deliveries) = Deliveries::channel();
        tokio::spawn(run(cfg, state_tx, stop_rx, deliveries_tx));
        (
            Client {
                state,
                stop: Arc::new(stop_tx),
            },
            deliveries,
        )
    }

    /// The live connection, waiting up to [`CONNECT_WAIT`] for one.
    pub async fn connection(&self) -> Result<Connection, ClientError> {
        let mut state = self.state.clone();
        let ready = |l: &Link| match l {
            Link::Up(c) => !c.is_closed(),
            Link::Connecting(_) => false,
            Link::Stopped(_) => true,
        };
        let waited = tokio::time::timeout(CONNECT_WAIT, state.wait_for(ready))
            .await
            .map(|res| res.map(|link| link.clone()));
        match waited {
            Ok(Ok(Link::Up(c))) => Ok(c),
            Ok(Ok(Link::Stopped(e))) => Err(e),
            Ok(Ok(Link::Connecting(_))) | Ok(Err(_)) => Err(stopped_error()),
            Err(_) => Err(ClientError::NotConnected(match &*state.borrow() {
                Link::Connecting(Some(e)) => format!("no connection after {CONNECT_WAIT:?}: {e}"),
                _ => format!("no connection after {CONNECT_WAIT:?}"),
            })),
        }
    }

    /// The live connection, if there is one now.
    pub fn current(&self) -> Option<Connection> {
        match &*self.state.borrow() {
            Link::Up(c) if !c.is_closed() => Some(c.clone()),
            _ => None,
        }
    }

    /// Sends over the live connection (waiting for one, see [`Client::connection`]). Not
    /// retried if the connection is lost meanwhile: retry with the same `msg_id` (the node
    /// stores it once).
    pub async fn send(&self, out: Outgoing) -> Result<Accepted, ClientError> {
        self.connection().await?.send(out).await
    }

    /// Acknowledges on the live connection. Without one, the error says so; nothing is lost:
    /// the node redelivers what was not acknowledged.
    pub fn ack(&self, seqs: &[u64]) -> Result<(), ClientError> {
        match self.current() {
            Some(c) => c.ack(seqs),
            None => Err(ClientError::NotConnected("no live connection".into())),
        }
    }

    /// Waits until the client has stopped and returns why (a permanent error from the node,
    /// or code NORMAL after [`Client::close`]).
    pub async fn stopped(&self) -> ClientError {
        let mut state = self.state.clone();
        let res = state.wait_for(|l| matches!(l, Link::Stopped(_))).await;
        match res.as_deref() {
            Ok(Link::Stopped(e)) => e.clone(),
            _ => stopped_error(),
        }
    }

    /// Stops reconnecting and closes the live connection (code NORMAL) in the background,
    /// after flushing it like [`Connection::shutdown`] so acknowledgements already given are
    /// not lost. [`Client::stopped`] returns once that is done. [`Deliveries`] ends after what
    /// was already received.
    pub fn close(&self) {
        self.stop.send_replace(true);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &*self.state.borrow() {
            Link::Connecting(_) => "connecting",
            Link::Up(_) => "up",
            Link::Stopped(_) => "stopped",
        };
        f.debug_struct("Client").field("state", &state).finish()
    }
}

fn stopped_error() -> ClientError {
    ClientError::closed(ErrorCode::Normal, "client closed")
}

/// Resolves when `close` was called or every `Client` is gone.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(
    cfg: ClientConfig,
    state: watch::Sender<Link>,
    mut stop: watch::Receiver<bool>,
    deliveries: mpsc::UnboundedSender<Delivery>,
) {
    let setup =
        quic_client_config(&cfg).and_then(|quic| Ok((quic, client_endpoint(cfg.bind_addr())?)));
    let (quic_cfg, endpoint) = match setup {
        Ok(setup) => setup,
        Err(e) => {
            state.send_replace(Link::Stopped(e));
            return;
        }
    };
    let mut backoff = Backoff::new();
    let reason = loop {
        let attempt = tokio::select! {
            r = Connection::establish(&endpoint, &quic_cfg, &cfg, deliveries.clone(), None) => r,
            _ = stop_requested(&mut stop) => break stopped_error(),
        };
        let err = match attempt {
            Ok(conn) => {
                state.send_replace(Link::Up(conn.clone()));
                let err = tokio::select! {
                    e = conn.closed() => e,
                    _ = stop_requested(&mut stop) => {
                        // Flush queued acknowledgements before closing (PING round trip).
                        conn.shutdown().await;
                        break stopped_error();
                    }
                };
                if err.code() != Some(ErrorCode::Replaced) {
                    backoff.reset();
                }
                err
            }
            Err(e) => e,
        };
        if err.is_permanent() {
            break err;
        }
        let retry_after = Duration::from_millis(err.retry_after_ms().into());
        let delay = backoff.next_delay(&mut rand::thread_rng()).max(retry_after);
        tracing::debug!(error = %err, ?delay, "connection lost, reconnecting");
        state.send_replace(Link::Connecting(Some(err)));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stop) => break stopped_error(),
        }
    };
    state.send_replace(Link::Stopped(reason));
}
