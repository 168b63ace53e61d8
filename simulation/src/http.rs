//! HTTP between the workload and the nodes over turmoil's simulated TCP: each node serves its
//! real routes (axum) on a [`SimListener`], and the workload calls them with a small hyper
//! client, as the CLI would.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;

/// The port every node serves HTTP on.
pub const HTTP_PORT: u16 = 80;
/// Every simulated node's admin token.
pub const ADMIN_TOKEN: &str = "sim-admin-token";
/// Pause after a failed accept before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// A node's HTTP listener on the simulated network.
pub struct SimListener(turmoil::net::TcpListener);

impl fmt::Debug for SimListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimListener")
            .field(&self.0.local_addr().ok())
            .finish()
    }
}

impl SimListener {
    pub async fn bind() -> io::Result<Self> {
        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), HTTP_PORT);
        Ok(Self(turmoil::net::TcpListener::bind(any).await?))
    }
}

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed; accepting again");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A node's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "answer {} is not the JSON expected: {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text (for errors), shortened.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(160) {
            Some((at, _)) => format!("{}...", &text[..at]),
            None => text.to_string(),
        }
    }
}

/// One request to the node at `ip`, on its own connection, bounded by `timeout`.
pub async fn call(
    ip: IpAddr,
    method: Method,
    path: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, String> {
    let exchange = async {
        let stream = turmoil::net::TcpStream::connect((ip, HTTP_PORT))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // Every POST body is JSON; PUT bodies are object bytes.
        let content_type = if method == Method::POST {
            "application/json"
        } else {
            "application/octet-stream"
        };
        let request = hyper::Request::builder()
            .method(method)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .uri(path)
            .header(hyper::header::HOST, ip.to_string())
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {ADMIN_TOKEN}"),
            )
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
