//! Waiting for conditions without sleeping and hoping.
//!
//! Everything here polls with a short back-off until a generous deadline. The deadline is long
//! because CI is a loaded 2-core machine where a debug-built proxy may take seconds to start;
//! a passing condition returns as soon as it holds, so the deadline costs nothing when green.

use std::future::Future;
use std::time::{Duration, Instant};

/// Default deadline for anything that should "soon" be true.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// First and maximum poll interval.
const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_millis(200);

/// Polls `f` until it yields `Some`, or fails after `deadline` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    let mut delay = FIRST_DELAY;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= until {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Polls `f` until it returns true, or fails after `deadline` naming `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(what, deadline, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Asserts that a condition becomes true within [`wait::DEADLINE`](DEADLINE).
///
/// The condition is re-evaluated on every poll and may contain `.await`, so the macro must be
/// used inside an async context.
///
/// ```text
/// assert_eventually!(upstream.requests() == 3, "upstream saw {} requests", upstream.requests());
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "")
    };
    ($cond:expr, $($arg:tt)+) => {{
        let until = ::std::time::Instant::now() + $crate::wait::DEADLINE;
        let mut delay = ::std::time::Duration::from_millis(10);
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= until {
                panic!(
                    "condition not true within {:?}: `{}`: {}",
                    $crate::wait::DEADLINE,
                    stringify!($cond),
                    format_args!($($arg)+)
                );
            }
            ::tokio::time::sleep(delay).await;
            delay = ::std::cmp::min(delay * 2, ::std::time::Duration::from_millis(200));
        }
    }};
}
