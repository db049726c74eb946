//! The admin endpoint, as a test sees it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http::{Method, StatusCode};

use crate::client::{empty, HttpClient, Proto, Reply};
use crate::wait;

/// A client for one proxy's admin listener.
#[derive(Clone, Debug)]
pub struct Admin {
    addr: SocketAddr,
}

/// A `/stats` text dump: `name: value` per line. Counters and gauges are integers; histograms
/// keep their summary text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<String, String>);

// === impl Admin ===

impl Admin {
    /// An admin client for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// The admin address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One admin request on a fresh connection.
    pub async fn request(&self, method: Method, path: &str) -> anyhow::Result<Reply> {
        let mut c = HttpClient::connect(self.addr, Proto::Http1).await?;
        let req = c
            .request(method.clone(), &self.addr.to_string(), path)
            .body(empty())?;
        c.send(req)
            .await
            .with_context(|| format!("admin {method} {path}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path).await
    }

    /// `POST path`.
    pub async fn post(&self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::POST, path).await
    }

    /// Status of `GET /ready`, or an error if the admin listener does not answer.
    pub async fn ready(&self) -> anyhow::Result<StatusCode> {
        Ok(self.get("/ready").await?.status)
    }

    /// Parses `GET /stats`.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let reply = self.get("/stats").await?;
        anyhow::ensure!(
            reply.status == StatusCode::OK,
            "/stats answered {}",
            reply.status
        );
        Ok(Stats::parse(&reply.text()))
    }

    /// One counter or gauge, `None` if the proxy does not export it.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.stats().await?.value(name))
    }

    /// Polls `/stats` until `name` exists and satisfies `pred`; returns its value. The error
    /// names the last value seen.
    pub async fn wait_for_stat(
        &self,
        name: &str,
        pred: impl Fn(u64) -> bool + Sync,
    ) -> anyhow::Result<u64> {
        self.wait_for_stat_within(name, wait::DEADLINE, pred).await
    }

    /// [`wait_for_stat`](Self::wait_for_stat) with an explicit deadline.
    pub async fn wait_for_stat_within(
        &self,
        name: &str,
        deadline: Duration,
        pred: impl Fn(u64) -> bool + Sync,
    ) -> anyhow::Result<u64> {
        let last = std::sync::Mutex::new(None);
        let (pred, last_ref) = (&pred, &last);
        let res = wait::poll(&format!("stat {name}"), deadline, || async move {
            let v = self.stat(name).await.ok().flatten();
            *last_ref.lock().expect("not poisoned") = v;
            v.filter(|v| pred(*v))
        })
        .await;
        let last = *last.lock().expect("not poisoned");
        res.with_context(|| format!("last value of {name}: {last:?}"))
    }

    /// Waits until `name` equals `expected`.
    pub async fn wait_for_stat_eq(&self, name: &str, expected: u64) -> anyhow::Result<u64> {
        self.wait_for_stat(name, |v| v == expected)
            .await
            .with_context(|| format!("expected {name} == {expected}"))
    }
}

// === impl Stats ===

impl Stats {
    /// Parses the text format of `/stats`.
    pub fn parse(text: &str) -> Self {
        Stats(
            text.lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    /// The integer value of a counter or gauge.
    pub fn value(&self, name: &str) -> Option<u64> {
        self.0.get(name).and_then(|v| v.parse().ok())
    }

    /// Whether a stat with this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Names starting with `prefix`.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.as_str())
    }
}
