//! Raw HTTP/1.1 over a TCP stream: malformed requests, header case, and exact framing checks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::EXCHANGE_TIMEOUT;

/// A response read off the wire, framing intact.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code from the status line.
    pub status: u16,
    /// The status line and header block exactly as received (without the final CRLFCRLF).
    pub head: String,
    /// Headers in wire order and wire case.
    pub headers: Vec<(String, String)>,
    /// The body after de-chunking.
    pub body: Vec<u8>,
    /// Whether the body was sent with `transfer-encoding: chunked`.
    pub chunked: bool,
}

/// A raw HTTP/1.1 connection.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

// === impl RawResponse ===

impl RawResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

// === impl RawConn ===

impl RawConn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes bytes as they are.
    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads one response (to a non-HEAD request).
    pub async fn read_response(&mut self) -> anyhow::Result<RawResponse> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.read_response_inner(true))
            .await
            .context("no complete response in time")?
    }

    /// Reads one response to a HEAD request: headers only, whatever they say about a body.
    pub async fn read_head_response(&mut self) -> anyhow::Result<RawResponse> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.read_response_inner(false))
            .await
            .context("no response head in time")?
    }

    /// Reads exactly `n` bytes (after any response already read), e.g. after an upgrade.
    pub async fn read_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            while self.buf.len() < n {
                self.fill().await?;
            }
            Ok::<_, anyhow::Error>(self.buf.drain(..n).collect())
        })
        .await
        .context("bytes did not arrive in time")?
    }

    /// Waits until the peer closes the connection, returning anything it sent before; fails if it
    /// is still open after `deadline`.
    pub async fn read_to_close(&mut self, deadline: Duration) -> anyhow::Result<Vec<u8>> {
        let mut rest = std::mem::take(&mut self.buf);
        tokio::time::timeout(deadline, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Ok::<_, anyhow::Error>(()),
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                    // A reset also counts as closed.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .await
        .context("connection still open")??;
        Ok(rest)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        anyhow::ensure!(
            n > 0,
            "connection closed mid-response after {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response_inner(&mut self, with_body: bool) -> anyhow::Result<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        let mut resp = RawResponse {
            status,
            head,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let no_body = !with_body || status == 204 || status == 304 || (100..200).contains(&status);
        if no_body {
            return Ok(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            resp.chunked = true;
            resp.body = self.read_chunked().await?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().context("bad content-length")?;
            while self.buf.len() < len {
                self.fill().await?;
            }
            resp.body = self.buf.drain(..len).collect();
        } else {
            // Close-delimited.
            resp.body = self.read_to_close(EXCHANGE_TIMEOUT).await?;
        }
        Ok(resp)
    }

    async fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.fill().await?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size_hex = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .with_context(|| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                // Trailers (ignored) until an empty line.
                loop {
                    let end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            break i;
                        }
                        self.fill().await?;
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

/// Sends `request` on a fresh connection and reads one response.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<RawResponse> {
    let mut conn = RawConn::connect(addr).await?;
    conn.write(request).await?;
    conn.read_response().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
