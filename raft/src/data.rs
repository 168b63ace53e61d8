//! Object traffic between nodes: its own QUIC connection per pair of nodes (ALPN
//! `letl-data/1`), one bidirectional stream per request. Each way a stream carries one
//! length-prefixed header frame, then the body's raw bytes to the end of the stream: the
//! bytes are never framed nor held whole, and QUIC's flow control is the bound on what is in
//! flight. A body that fails part-way resets its stream, so the other side sees an error,
//! never a clean but short end.
//!
//! This crate knows nothing of what the headers mean: the node encodes its own requests and
//! answers (with the codec) and gives a [`DataHandler`] to serve them.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_storage::ByteStream;
use tracing::debug;

use crate::NodeId;
use crate::transport::{Channel, QuicTransport, TransportError, read_frame, write_frame};

/// Largest piece a body is read in.
pub const DATA_CHUNK_BYTES_MAX: usize = 1 << 20;
/// A body that moves no byte for this long (either way) fails.
pub const DATA_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Once a put's body is sent, its answer's header comes within this long (it waits for the
/// receiver to make the bytes durable).
pub const DATA_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// A request without a body is answered within this long, or its peer is taken for gone.
pub const DATA_QUICK_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The error code of a stream reset because its body failed.
const BODY_FAILED: u32 = 1;
/// How a request's own failed body is reported.
const BODY_FAILED_TEXT: &str = "the body failed";

/// An answer: its header (the node's encoding) and its body, which may be empty.
pub struct DataReply {
    pub header: Vec<u8>,
    pub body: ByteStream,
}

impl std::fmt::Debug for DataReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataReply")
            .field("header_bytes", &self.header.len())
            .finish_non_exhaustive()
    }
}

/// Serves data requests: a request's header and body in, an answer's header and body out.
#[async_trait::async_trait]
pub trait DataHandler: Send + Sync + 'static {
    async fn handle(&self, header: Vec<u8>, body: ByteStream) -> (Vec<u8>, Option<ByteStream>);
}

/// Body bytes this node sent to and received from other nodes.
#[derive(Debug, Default)]
pub struct DataCounters {
    sent: AtomicU64,
    received: AtomicU64,
}

impl DataCounters {
    /// (sent, received) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }
}

/// The rest of a receive stream as a body, in pieces of at most [`DATA_CHUNK_BYTES_MAX`].
fn body_of(recv: quinn::RecvStream, counters: Arc<DataCounters>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        Some((recv, counters)),
        |state| async move {
            let (mut recv, counters) = state?;
            match tokio::time::timeout(
                DATA_IDLE_TIMEOUT,
                recv.read_chunk(DATA_CHUNK_BYTES_MAX, true),
            )
            .await
            {
                Ok(Ok(Some(chunk))) => {
                    counters
                        .received
                        .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
                    Some((Ok(chunk.bytes), Some((recv, counters))))
                }
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((Err(io::Error::other(e.to_string())), None)),
                Err(_) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data from the peer for {}s", DATA_IDLE_TIMEOUT.as_secs()),
                    )),
                    None,
                )),
            }
        },
    ))
}

/// A send stream that is reset when dropped before it was finished: quinn would finish it,
/// and the peer would take a body cut short by a dropped task for a whole one.
struct Sending {
    stream: quinn::SendStream,
    ended: bool,
}

impl Sending {
    fn new(stream: quinn::SendStream) -> Self {
        Self {
            stream,
            ended: false,
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        self.ended = true;
        self.stream.finish().map_err(|e| e.to_string())
    }

    fn reset(&mut self) {
        self.ended = true;
        let _ = self.stream.reset(BODY_FAILED.into());
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.stream.reset(BODY_FAILED.into());
        }
    }
}

/// Sends `body` to the end, then finishes the stream; a failing body resets it.
async fn send_body(
    send: &mut Sending,
    body: Option<ByteStream>,
    counters: &DataCounters,
) -> Result<(), String> {
    if let Some(mut body) = body {
        loop {
            let next = tokio::time::timeout(DATA_IDLE_TIMEOUT, body.next()).await;
            let chunk: Bytes = match next {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    send.reset();
                    return Err(format!("{BODY_FAILED_TEXT}: {e}"));
                }
                Err(_) => {
                    send.reset();
                    return Err(format!(
                        "the body sent nothing for {}s",
                        DATA_IDLE_TIMEOUT.as_secs()
                    ));
                }
            };
            let len = chunk.len() as u64;
            match tokio::time::timeout(DATA_IDLE_TIMEOUT, send.stream.write_chunk(chunk)).await {
                Ok(Ok(())) => {
                    counters.sent.fetch_add(len, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    send.reset();
                    return Err(e.to_string());
                }
                Err(_) => {
                    send.reset();
                    return Err(format!(
                        "the peer took nothing for {}s",
                        DATA_IDLE_TIMEOUT.as_secs()
                    ));
                }
            }
        }
    }
    send.finish()
}

impl QuicTransport {
    /// Sends a data request (a header, then `body`) to node `to` at `addr` and returns its
    /// answer as soon as the answer's header is in; the answer's body streams after it. The
    /// answer must come within `answer_timeout` of the body's end.
    pub async fn data_call(
        &self,
        to: NodeId,
        addr: &str,
        header: &[u8],
        body: Option<ByteStream>,
        answer_timeout: Duration,
    ) -> Result<DataReply, TransportError> {
        let failed = |reason: String| TransportError::Exchange { to, reason };
        let connection = self.connection(to, addr, Channel::Data).await?;
        let (send, mut recv) = match connection.open_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                self.forget(to, Channel::Data);
                return Err(TransportError::Unreachable {
                    to,
                    addr: addr.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let mut send = Sending::new(send);
        if let Err(e) = write_frame(&mut send.stream, header).await {
            self.forget(to, Channel::Data);
            return Err(failed(e));
        }
        // The answer may come before the body is all sent (a refusal): both at once.
        let (header, sent) = {
            let sending = send_body(&mut send, body, &self.counters);
            let answer = read_frame(&mut recv);
            tokio::pin!(sending, answer);
            let mut sent: Option<Result<(), String>> = None;
            let header = tokio::select! {
                header = &mut answer => header,
                done = &mut sending => {
                    if let Err(e) = &done {
                        debug!(peer = to, error = %e, "a data request's body stopped");
                    }
                    sent = Some(done);
                    match tokio::time::timeout(answer_timeout, &mut answer).await {
                        Ok(header) => header,
                        Err(_) => {
                            // The peer may be gone behind a connection that still looks open.
                            self.forget(to, Channel::Data);
                            return Err(TransportError::Timeout { to, timeout: answer_timeout });
                        }
                    }
                }
            };
            (header, sent)
        };
        let header = match (header, sent) {
            // Our body failed: that is the reason, not the peer's account of the reset.
            (_, Some(Err(e))) if e.starts_with(BODY_FAILED_TEXT) => return Err(failed(e)),
            (Ok(header), _) => header,
            (Err(_), Some(Err(e))) => return Err(failed(e)),
            (Err(e), _) => return Err(failed(e)),
        };
        Ok(DataReply {
            header,
            body: body_of(recv, Arc::clone(&self.counters)),
        })
    }

    /// Body bytes this node has sent to and received from other nodes: (sent, received).
    pub fn data_bytes(&self) -> (u64, u64) {
        self.counters.bytes()
    }
}

/// Serves a peer's data connection: each stream is one request for `handler`.
pub(crate) async fn serve_data_connection(
    connection: quinn::Connection,
    handler: Arc<OnceLock<Arc<dyn DataHandler>>>,
    counters: Arc<DataCounters>,
) {
    loop {
        let (send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return,
        };
        let handler = Arc::clone(&handler);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut send = Sending::new(send);
            let header = match read_frame(&mut recv).await {
                Ok(header) => header,
                Err(e) => {
                    debug!(error = %e, "an unreadable data request");
                    return;
                }
            };
            let Some(handler) = handler.get().cloned() else {
                // Not serving data yet: the caller reads a reset stream and tries elsewhere.
                send.reset();
                return;
            };
            let (answer, body) = handler
                .handle(header, body_of(recv, Arc::clone(&counters)))
                .await;
            if let Err(e) = write_frame(&mut send.stream, &answer).await {
                debug!(error = %e, "a data answer could not be sent");
                return;
            }
            if let Err(e) = send_body(&mut send, body, &counters).await {
                debug!(error = %e, "a data answer's body stopped");
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::ClusterCa;

    /// Echoes the body back, after a header that says how many bytes came.
    struct Echo;

    #[async_trait::async_trait]
    impl DataHandler for Echo {
        async fn handle(
            &self,
            header: Vec<u8>,
            mut body: ByteStream,
        ) -> (Vec<u8>, Option<ByteStream>) {
            if header == b"refuse" {
                return (b"refused".to_vec(), None);
            }
            let mut chunks = Vec::new();
            let mut total = 0usize;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(chunk) => {
                        total += chunk.len();
                        chunks.push(Ok(chunk));
                    }
                    Err(e) => return (format!("failed: {e}").into_bytes(), None),
                }
            }
            (
                format!("got {total}").into_bytes(),
                Some(Box::pin(futures_util::stream::iter(chunks))),
            )
        }
    }

    async fn collect(mut body: ByteStream) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = body.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    fn pair() -> (QuicTransport, QuicTransport, String) {
        let ca = ClusterCa::generate("data-test").unwrap();
        let local = "127.0.0.1:0".parse().unwrap();
        let one = QuicTransport::bind(local, &ca.issue_node(1).unwrap()).unwrap();
        let two = QuicTransport::bind(local, &ca.issue_node(2).unwrap()).unwrap();
        let addr = two.local_addr().unwrap().to_string();
        (one, two, addr)
    }

    struct NoControl;

    #[async_trait::async_trait]
    impl crate::transport::Handler for NoControl {
        async fn handle(&self, _: crate::transport::Rpc) -> crate::transport::RpcReply {
            crate::transport::RpcReply::Failed("no control here".to_string())
        }
    }

    #[tokio::test]
    async fn a_body_goes_there_and_back_in_pieces_and_is_counted() {
        let (one, two, addr) = pair();
        two.serve(Arc::new(NoControl));
        two.serve_data(Arc::new(Echo));
        let data: Vec<u8> = (0..5 * DATA_CHUNK_BYTES_MAX + 17)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let body = letl_storage::stream_of(Bytes::from(data.clone()), 64 * 1024);
        let reply = one
            .data_call(2, &addr, b"echo", Some(body), DATA_ANSWER_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(reply.header, format!("got {}", data.len()).into_bytes());
        assert_eq!(collect(reply.body).await.unwrap(), data);
        let len = data.len() as u64;
        assert_eq!(one.data_bytes(), (len, len));
        assert_eq!(two.data_bytes(), (len, len));
    }

    #[tokio::test]
    async fn a_refusal_comes_back_before_the_body_is_taken() {
        let (one, two, addr) = pair();
        two.serve(Arc::new(NoControl));
        two.serve_data(Arc::new(Echo));
        // Far more than the flow-control windows: sending it all would block for ever.
        let endless = futures_util::stream::repeat_with(|| Ok(Bytes::from(vec![7u8; 1 << 16])));
        let reply = one
            .data_call(
                2,
                &addr,
                b"refuse",
                Some(Box::pin(endless)),
                DATA_ANSWER_TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(reply.header, b"refused");
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_is_an_error_there_not_a_short_object() {
        let (one, two, addr) = pair();
        two.serve(Arc::new(NoControl));
        two.serve_data(Arc::new(Echo));
        let body = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"some bytes")),
            Err(io::Error::other("the disk failed")),
        ]);
        let outcome = one
            .data_call(2, &addr, b"echo", Some(Box::pin(body)), DATA_ANSWER_TIMEOUT)
            .await;
        match outcome {
            Err(TransportError::Exchange { reason, .. }) => {
                assert!(reason.contains("the disk failed"), "{reason}");
            }
            Ok(reply) => {
                let header = String::from_utf8(reply.header).unwrap();
                assert!(header.starts_with("failed"), "{header}");
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }

    /// Records how the request body it got ended.
    struct Recorder(Arc<std::sync::Mutex<Option<String>>>);

    #[async_trait::async_trait]
    impl DataHandler for Recorder {
        async fn handle(&self, _: Vec<u8>, mut body: ByteStream) -> (Vec<u8>, Option<ByteStream>) {
            let mut ending = "a clean end".to_string();
            while let Some(chunk) = body.next().await {
                if let Err(e) = chunk {
                    ending = format!("an error: {e}");
                    break;
                }
            }
            *self.0.lock().unwrap() = Some(ending);
            (Vec::new(), None)
        }
    }

    #[tokio::test]
    async fn a_request_dropped_midway_ends_its_body_in_an_error_there() {
        let (one, two, addr) = pair();
        let seen = Arc::new(std::sync::Mutex::new(None));
        two.serve(Arc::new(NoControl));
        two.serve_data(Arc::new(Recorder(Arc::clone(&seen))));
        let one = Arc::new(one);
        let caller = Arc::clone(&one);
        let call = tokio::spawn(async move {
            let first = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"half"))]);
            let body = first.chain(futures_util::stream::pending());
            caller
                .data_call(2, &addr, b"put", Some(Box::pin(body)), DATA_ANSWER_TIMEOUT)
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        call.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ending = loop {
            if let Some(ending) = seen.lock().unwrap().clone() {
                break ending;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the body never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(ending.starts_with("an error"), "{ending}");
    }

    #[tokio::test]
    async fn a_node_not_serving_data_yet_refuses_the_stream() {
        let (one, two, addr) = pair();
        two.serve(Arc::new(NoControl));
        let outcome = one
            .data_call(2, &addr, b"echo", None, DATA_QUICK_ANSWER_TIMEOUT)
            .await;
        assert!(
            matches!(outcome, Err(TransportError::Exchange { .. })),
            "{outcome:?}"
        );
    }
}
