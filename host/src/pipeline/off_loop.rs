//! The plugin phases, run where they may block: on the event loop when the shared store is in
//! memory (a call takes microseconds), on the loop's blocking threads when it is remote (a store
//! call waits for a network round trip, which must not stall every connection of the loop).

use std::sync::Arc;

use super::Gateway;
use crate::error::HttpError;
use crate::plugin::{Decision, Exchange, LogEntry, Progress, Ran};

/// The plugins' `on-request` from where the chain stands.
pub(super) async fn on_request(
    gateway: &Arc<Gateway>,
    ex: &mut Box<Exchange>,
    progress: &mut Progress,
) -> Result<Decision, HttpError> {
    if !gateway.plugins.store().is_remote() {
        return gateway.plugins.on_request(ex, progress);
    }
    let g = Arc::clone(gateway);
    let mut moved = std::mem::replace(ex, Box::new(Exchange::placeholder()));
    let mut moved_progress = std::mem::take(progress);
    let (result, back, back_progress) = tokio::task::spawn_blocking(move || {
        let result = g.plugins.on_request(&mut moved, &mut moved_progress);
        (result, moved, moved_progress)
    })
    .await
    .map_err(|_| HttpError::Internal)?;
    *ex = back;
    *progress = back_progress;
    result
}

/// The plugins' `on-response`.
pub(super) async fn on_response(
    gateway: &Arc<Gateway>,
    ex: &mut Box<Exchange>,
    ran: Ran,
) -> Result<(), HttpError> {
    if !gateway.plugins.store().is_remote() {
        return gateway.plugins.on_response(ex, ran);
    }
    let g = Arc::clone(gateway);
    let mut moved = std::mem::replace(ex, Box::new(Exchange::placeholder()));
    let (result, back) = tokio::task::spawn_blocking(move || {
        let result = g.plugins.on_response(&mut moved, ran);
        (result, moved)
    })
    .await
    .map_err(|_| HttpError::Internal)?;
    *ex = back;
    result
}

/// The plugins' `on-log`, once the response is sent: nobody waits for it.
pub(super) fn on_log(gateway: Arc<Gateway>, mut ex: Box<Exchange>, ran: Ran, entry: LogEntry) {
    let remote = gateway.plugins.store().is_remote();
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if remote => {
            handle.spawn_blocking(move || gateway.plugins.on_log(&mut ex, ran, &entry));
        }
        _ => gateway.plugins.on_log(&mut ex, ran, &entry),
    }
}
