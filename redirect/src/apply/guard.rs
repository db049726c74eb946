//! Capture for the lifetime of a proxy process (`petrel run --capture`, like TSF's
//! pilot-agent): install before accepting, remove on exit, and recover from a crash at the
//! next start through the state file.
use tracing::{info, warn};

use super::{apply, cleanup_from_state, remove_state, ApplyOptions, CaptureState};
use crate::config::CaptureConfig;
use crate::error::RedirectError;

/// Installed capture rules; dropping the guard removes them (best effort, logged).
///
/// Drop does not run on `SIGKILL` or a crash: that is what the state file is for, since
/// [`CaptureGuard::install`] first removes whatever a previous process recorded there. The
/// caller should turn `SIGTERM`/`SIGINT` into a normal return so that the guard is dropped.
#[derive(Debug)]
pub struct CaptureGuard {
    opts: ApplyOptions,
    state: Option<CaptureState>,
}

// === impl CaptureGuard ===

impl CaptureGuard {
    /// Cleans up after a previous crashed run (if `opts.state_file` records one), then applies
    /// `cfg`. Call before the listeners start accepting.
    pub fn install(cfg: &CaptureConfig, opts: ApplyOptions) -> Result<Self, RedirectError> {
        if let Some(path) = &opts.state_file {
            if cleanup_from_state(path)? {
                info!(state = %path.display(), "removed capture rules left by a previous run");
            }
        }
        let state = apply(cfg, &opts)?;
        Ok(Self {
            opts,
            state: Some(state),
        })
    }

    /// What was installed.
    pub fn state(&self) -> Option<&CaptureState> {
        self.state.as_ref()
    }

    /// Removes the rules now, reporting failure (drop only logs it).
    pub fn remove(mut self) -> Result<(), RedirectError> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), RedirectError> {
        let Some(state) = self.state.take() else {
            return Ok(());
        };
        remove_state(&state)?;
        if let Some(path) = &self.opts.state_file {
            CaptureState::remove(path)?;
        }
        info!("capture rules removed");
        Ok(())
    }
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        if let Err(error) = self.remove_inner() {
            warn!(%error, "could not remove capture rules; `petrel redirect --cleanup` removes them");
        }
    }
}
