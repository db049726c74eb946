//! Access logs with Envoy's format strings (`envoy.access_loggers.file`, `.stdout`, `.stderr`).
//!
//! The format is parsed once into tokens; a log line is rendered only when a request with
//! an access log completes, and written by a background task so that a slow disk never
//! blocks a worker.
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Response};
use tokio::sync::mpsc;

use super::flags::Flags;
use super::HttpConnMgr;
use crate::listener::Accepted;
use crate::upstream::body::OnComplete;

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One access log.
#[derive(Debug)]
pub struct AccessLog {
    tokens: Vec<Token>,
    tx: mpsc::UnboundedSender<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Text(String),
    StartTime,
    Req(String, Option<String>, Option<usize>),
    Resp(String, Option<usize>),
    Method,
    Protocol,
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemote,
    DownstreamRemoteNoPort,
    DownstreamLocal,
    DownstreamLocalNoPort,
    RouteName,
    RequestedServerName,
}

/// Where log lines go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// A file, appended to (`/dev/stdout` works too).
    File(String),
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// An invalid format string.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

// === impl AccessLog ===

impl AccessLog {
    /// Parses `format` and starts the writer for `sink`.
    pub fn new(format: &str, sink: Sink) -> Result<Self, FormatError> {
        let tokens = parse(format)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        // The writer runs on its own thread: it owns the file and blocks only itself.
        let mut out: Box<dyn Write + Send> = match &sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| FormatError(format!("opening access log {p}: {e}")))?,
            ),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.flush();
                }
            })
            .map_err(|e| FormatError(format!("starting access log writer: {e}")))?;
        Ok(AccessLog { tokens, tx })
    }

    fn write(&self, e: &LogEntry) {
        let mut line = String::with_capacity(256);
        for t in &self.tokens {
            render(t, e, &mut line);
        }
        let _ = self.tx.send(line);
    }
}

fn parse(format: &str) -> Result<Vec<Token>, FormatError> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        if i > 0 {
            out.push(Token::Text(rest[..i].to_string()));
        }
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            out.push(Token::Text("%".into()));
            rest = r;
            continue;
        }
        let end = rest.find('%').ok_or_else(|| {
            FormatError(format!(
                "unterminated command in access log format: %{rest}"
            ))
        })?;
        let cmd = &rest[..end];
        rest = &rest[end + 1..];
        out.push(command(cmd)?);
    }
    if !rest.is_empty() {
        out.push(Token::Text(rest.to_string()));
    }
    Ok(out)
}

fn command(cmd: &str) -> Result<Token, FormatError> {
    // `NAME(arg):maxlen`
    let (body, max) = match cmd.rsplit_once(':') {
        Some((b, m))
            if b.ends_with(')') && m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty() =>
        {
            (b, m.parse().ok())
        }
        _ => (cmd, None),
    };
    let arg = |name: &str| {
        body.strip_prefix(name)
            .and_then(|r| r.strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
    };
    if let Some(a) = arg("REQ") {
        let (main, alt) = match a.split_once('?') {
            Some((m, alt)) => (m.to_ascii_lowercase(), Some(alt.to_ascii_lowercase())),
            None => (a.to_ascii_lowercase(), None),
        };
        return Ok(Token::Req(main, alt, max));
    }
    if let Some(a) = arg("RESP") {
        return Ok(Token::Resp(a.to_ascii_lowercase(), max));
    }
    if body.starts_with("START_TIME") {
        return Ok(Token::StartTime);
    }
    Ok(match body {
        "PROTOCOL" => Token::Protocol,
        "METHOD" => Token::Method,
        "RESPONSE_CODE" => Token::ResponseCode,
        "RESPONSE_FLAGS" => Token::ResponseFlags,
        "BYTES_RECEIVED" => Token::BytesReceived,
        "BYTES_SENT" => Token::BytesSent,
        "DURATION" => Token::Duration,
        "UPSTREAM_HOST" => Token::UpstreamHost,
        "UPSTREAM_CLUSTER" => Token::UpstreamCluster,
        "DOWNSTREAM_REMOTE_ADDRESS" => Token::DownstreamRemote,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Token::DownstreamRemoteNoPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Token::DownstreamLocal,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Token::DownstreamLocalNoPort,
        "ROUTE_NAME" => Token::RouteName,
        "REQUESTED_SERVER_NAME" => Token::RequestedServerName,
        other => {
            return Err(FormatError(format!(
                "access log format command %{other}% is not supported"
            )))
        }
    })
}

/// What is known about a request for its log line.
#[derive(Debug, Default)]
pub struct LogEntry {
    start: Option<SystemTime>,
    began: Option<Instant>,
    method: String,
    protocol: &'static str,
    req_headers: http::HeaderMap,
    path: String,
    authority: String,
    resp_headers: http::HeaderMap,
    code: u16,
    flags: Flags,
    bytes_received: u64,
    bytes_sent: u64,
    upstream: Option<(Arc<str>, String)>,
    remote: Option<SocketAddr>,
    local: Option<SocketAddr>,
    sni: Option<String>,
    /// Route name.
    pub route_name: Arc<str>,
}

impl LogEntry {
    /// Captures the request side.
    pub fn from_request<B>(req: &Request<B>, conn: &Accepted) -> Self {
        let protocol = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let bytes_received = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        LogEntry {
            start: Some(SystemTime::now()),
            began: Some(Instant::now()),
            method: req.method().to_string(),
            protocol,
            req_headers: req.headers().clone(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            authority,
            bytes_received,
            remote: Some(conn.remote),
            local: Some(conn.local),
            sni: conn.sni.clone(),
            ..Default::default()
        }
    }

    /// Captures the response headers and outcome.
    pub fn finish_headers<B>(
        &mut self,
        resp: &Response<B>,
        flags: Flags,
        upstream: Option<(Arc<str>, String)>,
    ) {
        self.code = resp.status().as_u16();
        self.resp_headers = resp.headers().clone();
        self.flags = flags;
        if upstream.is_some() {
            self.upstream = upstream;
        }
    }

    /// Records the upstream cluster and host chosen for the request.
    pub fn set_upstream(&mut self, cluster: Arc<str>, host: String) {
        self.upstream = Some((cluster, host));
    }
}

fn render(t: &Token, e: &LogEntry, out: &mut String) {
    use std::fmt::Write as _;
    let dash = |out: &mut String, v: Option<&str>, max: Option<usize>| match v {
        Some(v) if !v.is_empty() => {
            let v = match max {
                Some(m) => &v[..v.char_indices().nth(m).map_or(v.len(), |(i, _)| i)],
                None => v,
            };
            out.push_str(v)
        }
        _ => out.push('-'),
    };
    match t {
        Token::Text(s) => out.push_str(s),
        Token::StartTime => out.push_str(&e.start.map(rfc3339_millis).unwrap_or_default()),
        Token::Req(name, alt, max) => {
            let get = |n: &str| -> Option<String> {
                match n {
                    ":method" => Some(e.method.clone()),
                    ":path" => Some(e.path.clone()),
                    ":authority" => Some(e.authority.clone()),
                    _ => e
                        .req_headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                }
            };
            let v = get(name).or_else(|| alt.as_deref().and_then(get));
            dash(out, v.as_deref(), *max)
        }
        Token::Resp(name, max) => dash(
            out,
            e.resp_headers.get(name).and_then(|v| v.to_str().ok()),
            *max,
        ),
        Token::Method => out.push_str(&e.method),
        Token::Protocol => out.push_str(e.protocol),
        Token::ResponseCode => {
            let _ = write!(out, "{}", e.code);
        }
        Token::ResponseFlags => {
            let _ = write!(out, "{}", e.flags);
        }
        Token::BytesReceived => {
            let _ = write!(out, "{}", e.bytes_received);
        }
        Token::BytesSent => {
            let _ = write!(out, "{}", e.bytes_sent);
        }
        Token::Duration => {
            let _ = write!(out, "{}", e.began.map_or(0, |b| b.elapsed().as_millis()));
        }
        Token::UpstreamHost => dash(out, e.upstream.as_ref().map(|(_, h)| h.as_str()), None),
        Token::UpstreamCluster => dash(out, e.upstream.as_ref().map(|(c, _)| &**c), None),
        Token::DownstreamRemote => dash(out, e.remote.map(|a| a.to_string()).as_deref(), None),
        Token::DownstreamRemoteNoPort => {
            dash(out, e.remote.map(|a| a.ip().to_string()).as_deref(), None)
        }
        Token::DownstreamLocal => dash(out, e.local.map(|a| a.to_string()).as_deref(), None),
        Token::DownstreamLocalNoPort => {
            dash(out, e.local.map(|a| a.ip().to_string()).as_deref(), None)
        }
        Token::RouteName => dash(out, Some(&e.route_name), None),
        Token::RequestedServerName => dash(out, e.sni.as_deref(), None),
    }
}

/// `2024-05-01T12:34:56.789Z`, Envoy's default START_TIME rendering.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Runs when a request's response completes: access log lines and the active gauge.
pub struct LogHook {
    pub hcm: Arc<HttpConnMgr>,
    pub entry: Option<Box<LogEntry>>,
    pub start: Instant,
    pub _active: super::ActiveRequest,
}

impl OnComplete for LogHook {
    fn complete(self: Box<Self>, _complete: bool, bytes: u64) {
        if let Some(mut e) = self.entry {
            e.bytes_sent = bytes;
            for log in &self.hcm.access_logs {
                log.write(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_default_format() {
        let t = parse(DEFAULT_FORMAT).unwrap();
        assert!(t.contains(&Token::ResponseFlags));
        assert!(t.contains(&Token::Req(":path".into(), None, None)) || t.iter().any(|x| matches!(x, Token::Req(n, Some(a), _) if n == "x-envoy-original-path" && a == ":path")));
    }

    #[test]
    fn unknown_command_is_an_error() {
        assert!(parse("%NOPE%").is_err());
        assert!(parse("%REQ(:PATH)").is_err());
    }

    #[test]
    fn renders_fields() {
        let t = parse(
            "%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(X-MISSING)% %REQ(USER-AGENT):3%",
        )
        .unwrap();
        let mut e = LogEntry {
            method: "GET".into(),
            code: 503,
            ..Default::default()
        };
        e.flags.insert(Flags::UPSTREAM_CONNECTION_FAILURE);
        e.req_headers
            .insert("user-agent", http::HeaderValue::from_static("curl/8"));
        let mut out = String::new();
        for tok in &t {
            render(tok, &e, &mut out);
        }
        assert_eq!(out, "GET 503 UF - cur");
    }

    #[test]
    fn start_time_format() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339_millis(t), "2023-11-14T22:13:20.123Z");
    }
}
