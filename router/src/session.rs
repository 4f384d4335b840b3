//! The QUIC driver of one connection: moves bytes between the stream and the routing core and
//! performs the connection's own work (its registration, queue reads, store requests).
//! Every decision is the core's: this file reads, decodes, writes and waits.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hearth_protocol::{encode, Decoded, Decoder, ErrorCode, Frame, MessageId};
use hearth_storage::StorageError;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::core::{ConnId, Registration, Request, RequestOutcome, Wake};
use crate::driver::Driver;
use crate::{now_ms, Shared};

/// How long a closing connection waits for the answers of the sends it took.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;
/// An empty buffer larger than this is released, so an idle connection holds no buffer.
const IDLE_BUFFER: usize = 2 * 1024;
const WRITER_QUEUE: usize = 64;

/// Wakes a connection's task.
struct NotifyWake(Arc<Notify>);

impl Wake for NotifyWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// How a session ended.
enum End {
    /// Close the connection with this code (the core queued the ERROR frame, if any).
    Close(ErrorCode, Cow<'static, str>),
    /// The connection is already gone.
    Lost,
}

/// Connection-scoped store work in progress.
enum Done {
    Registered(Result<(), StorageError>),
    Request(MessageId, Request, RequestOutcome),
}

/// Serve one QUIC connection until it ends.
pub(crate) async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let driver = shared.driver.clone();
    // One deadline to open the stream and send HELLO.
    let deadline = Instant::now() + shared.hello_timeout;
    let Ok(Ok((send, recv))) = tokio::time::timeout_at(deadline, conn.accept_bi()).await else {
        conn.close(
            ErrorCode::ProtocolViolation.as_u16().into(),
            b"no stream opened",
        );
        return;
    };
    let notify = Arc::new(Notify::new());
    let id = driver.with(|c| c.connect(Arc::new(NotifyWake(notify.clone()))));
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(WRITER_QUEUE);
    let writer = tokio::spawn(write_loop(send, out_rx));
    let max_frame = shared.max_frame;
    let mut session = Session {
        id,
        driver: driver.clone(),
        recv,
        buf: BytesMut::new(),
        decoder: Decoder::new(max_frame),
        out: BytesMut::new(),
        out_tx,
        notify,
        work: FuturesUnordered::new(),
        welcomed: false,
        finished: false,
    };
    let end = session.run(deadline).await;
    driver.with(|c| c.handle_disconnected(id));
    if let End::Close(code, reason) = end {
        let _ = session.flush().await;
        drop(session);
        // Let the writer finish the stream so the last frames reach the client.
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        conn.close(code.as_u16().into(), reason.as_bytes());
    }
}

struct Session {
    id: ConnId,
    driver: Arc<Driver>,
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
    out: BytesMut,
    out_tx: mpsc::Sender<Bytes>,
    notify: Arc<Notify>,
    work: FuturesUnordered<BoxFuture<'static, Done>>,
    /// WELCOME was written (the HELLO deadline no longer applies).
    welcomed: bool,
    /// The client finished its stream.
    finished: bool,
}

impl Session {
    async fn run(&mut self, hello_deadline: Instant) -> End {
        let id = self.id;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let out = self.driver.with(|c| c.poll_conn(id));
            for f in &out.frames {
                self.welcomed |= matches!(f, Frame::Welcome(_));
                encode(f, &mut self.out);
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            if let Some(r) = out.register {
                self.work.push(Box::pin(register(self.driver.clone(), r)));
            }
            for (req_id, request) in out.requests {
                let driver = self.driver.clone();
                self.work.push(Box::pin(async move {
                    let outcome = driver.request(&request).await;
                    Done::Request(req_id, request, outcome)
                }));
            }
            if let Some((code, reason)) = out.close {
                return End::Close(code, reason);
            }
            if out.closing && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
            if let Some(read) = out.read {
                let result = self
                    .driver
                    .store()
                    .read_queue(read.device, read.from_seq, read.max);
                self.driver
                    .with(|c| c.handle_queue_read(id, read, result, now_ms()));
                continue;
            }
            let reading = out.accepting && !self.finished;
            let hello_wait = !self.welcomed && drain_deadline.is_none();
            tokio::select! {
                biased;
                _ = self.notify.notified() => {}
                Some(done) = self.work.next(), if !self.work.is_empty() => {
                    self.done(done);
                }
                chunk = self.recv.read_chunk(READ_CHUNK, true), if reading => {
                    match chunk {
                        Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                        Ok(None) => self.finished = true,
                        Err(_) => return End::Lost,
                    }
                    self.on_input();
                }
                _ = tokio::time::sleep_until(hello_deadline), if hello_wait => {
                    self.driver.with(|c| c.handle_input_error(
                        id,
                        ErrorCode::ProtocolViolation,
                        "no HELLO in time",
                    ));
                }
                _ = sleep_until_some(drain_deadline) => {
                    self.driver.with(|c| c.handle_close_timeout(id));
                }
            }
        }
    }

    /// Decode every complete frame in the buffer and hand them to the core in order.
    fn on_input(&mut self) {
        let mut frames = Vec::new();
        let mut oversized = Vec::new();
        let mut error = None;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(f))) => frames.push(f),
                Ok(Some(Decoded::OversizedSend { msg_id, len })) => {
                    oversized.push((frames.len(), msg_id, len));
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some((e.code(), e.to_string()));
                    break;
                }
            }
        }
        if self.finished
            && error.is_none()
            && (!self.buf.is_empty() || self.decoder.is_mid_frame(&self.buf))
        {
            error = Some((
                ErrorCode::MalformedFrame,
                "stream finished inside a frame".to_string(),
            ));
        }
        if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER {
            self.buf = BytesMut::new();
        }
        let (id, finished) = (self.id, self.finished);
        let now = now_ms();
        self.driver.with(|c| {
            let mut oversized = oversized.into_iter().peekable();
            for (i, f) in frames.into_iter().enumerate() {
                while let Some((_, msg_id, len)) = oversized.next_if(|o| o.0 == i) {
                    c.handle_oversized(id, msg_id, len);
                }
                c.handle_frame(id, f, now);
            }
            for (_, msg_id, len) in oversized {
                c.handle_oversized(id, msg_id, len);
            }
            match error {
                Some((code, message)) => c.handle_input_error(id, code, message),
                None if finished => c.handle_finished(id),
                None => {}
            }
        });
    }

    fn done(&mut self, done: Done) {
        let id = self.id;
        match done {
            Done::Registered(result) => self
                .driver
                .with(|c| c.handle_registered(id, result, now_ms())),
            Done::Request(req_id, request, outcome) => self
                .driver
                .with(|c| c.handle_request_done(id, req_id, request, outcome, now_ms())),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = self.out.split().freeze();
        if self.out.capacity() > IDLE_BUFFER {
            self.out = BytesMut::new();
        }
        self.out_tx.send(chunk).await.map_err(|_| End::Lost)
    }
}

/// Record the device (and, on its first device, its account) in the store.
async fn register(driver: Arc<Driver>, r: Registration) -> Done {
    let store = driver.store();
    let now = now_ms();
    let result = async {
        store
            .ensure_account(r.key.account, &r.network, &r.zone, now)
            .await?;
        store.register_device(r.key, now).await.map(|_| ())
    }
    .await;
    Done::Registered(result)
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Write queued chunks to the stream, many per write; finish the stream when the session ends.
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<Bytes>) {
    let mut chunks = Vec::new();
    while let Some(first) = rx.recv().await {
        chunks.push(first);
        while chunks.len() < WRITER_QUEUE {
            match rx.try_recv() {
                Ok(c) => chunks.push(c),
                Err(_) => break,
            }
        }
        if send.write_all_chunks(&mut chunks).await.is_err() {
            return;
        }
        chunks.clear();
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}
