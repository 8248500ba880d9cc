//! The exports [`crate::export_filter!`] wires to a [`Filter`]: `init` builds it and says what it
//! has, the hooks run it on the host's request and response.

use std::cell::RefCell;

use crate::__private::bindings::gatehouse::plugin::types as wit;
use crate::answer::Action;
use crate::http::{Request, Response, ip_addr};
use crate::{Filter, Hook, LogEntry};

thread_local! {
    static FILTER: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
    pub(crate) static TARGETS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Parses the config and builds the filter (shared by the export glue and the test harness).
pub(crate) fn build<F: Filter>(config: &str) -> Result<F, String> {
    let config: F::Config = serde_json::from_str(config).map_err(|e| format!("{e}"))?;
    F::new(config)
}

fn with_filter<F: Filter, R>(f: impl FnOnce(&F) -> R) -> R {
    FILTER.with(|cell| {
        let slot = cell.borrow();
        match slot.as_ref().and_then(|b| b.downcast_ref::<F>()) {
            Some(filter) => f(filter),
            None => panic!("gatehouse-sdk: a hook ran before init"),
        }
    })
}

/// What the filter tells the host at `init`.
pub(crate) fn capabilities<F: Filter>(filter: &F) -> wit::Capabilities {
    let mut caps = wit::Capabilities::empty();
    let hooks = filter.hooks();
    for hook in hooks {
        caps = caps
            | (match hook {
                Hook::OnRequest => wit::Capabilities::ON_REQUEST,
                Hook::OnResponse => wit::Capabilities::ON_RESPONSE,
                Hook::OnLog => wit::Capabilities::ON_LOG,
            });
    }
    // What a hook needs is asked for only if the hook is called: no body is read or buffered
    // for a hook the filter's config left out.
    let requests = hooks.contains(&Hook::OnRequest);
    for (wanted, flag) in [
        (F::REQUEST_HEAD && requests, wit::Capabilities::REQUEST_HEAD),
        (F::REQUEST_BODY && requests, wit::Capabilities::REQUEST_BODY),
        (
            F::RESPONSE_BODY && hooks.contains(&Hook::OnResponse),
            wit::Capabilities::RESPONSE_BODY,
        ),
    ] {
        if wanted {
            caps = caps | flag;
        }
    }
    caps
}

/// `init` export.
pub fn init<F: Filter>(config: String, targets: Vec<String>) -> Result<wit::Capabilities, String> {
    TARGETS.with(|t| *t.borrow_mut() = targets);
    std::panic::set_hook(Box::new(|info| {
        crate::log::error(&format!("plugin panicked: {info}"));
    }));
    let filter = build::<F>(&config)?;
    let caps = capabilities(&filter);
    FILTER.with(|cell| *cell.borrow_mut() = Some(Box::new(filter)));
    Ok(caps)
}

/// `on-request` export.
pub fn on_request<F: Filter>(
    head: Option<wit::RequestHead>,
    client: Option<wit::IpAddress>,
) -> wit::Action {
    let mut request = Request::new(head, Some(client.map(ip_addr)));
    match with_filter::<F, _>(|f| f.on_request(&mut request)) {
        Action::Continue => wit::Action::Continue,
        Action::Respond(r) => {
            crate::backend::respond(&r);
            wit::Action::Respond
        }
        Action::Route {
            target,
            strip_prefix,
        } => wit::Action::Route(route(&request, &target, strip_prefix.as_deref())),
    }
}

/// `on-response` export.
pub fn on_response<F: Filter>() {
    let mut request = Request::new(None, None);
    with_filter::<F, _>(|f| f.on_response(&mut request, &mut Response::new()));
}

/// `on-log` export.
pub fn on_log<F: Filter>(entry: wit::LogEntry) {
    let mut request = Request::new(None, None);
    let entry = LogEntry {
        status: entry.status,
        bytes_sent: entry.bytes_sent,
        duration_us: entry.duration_us,
        target: entry.target,
    };
    with_filter::<F, _>(|f| f.on_log(&mut request, &entry));
}

/// A route as the contract has it: the target's position in the config's list, and the mount
/// point's length in the path. A name or prefix that does not fit is logged here (the host only
/// sees numbers) and sent as a number the host rejects, so the request fails as for any plugin error.
pub(crate) fn route(request: &Request, target: &str, strip_prefix: Option<&str>) -> wit::Route {
    const INVALID: u32 = u32::MAX;
    let index = TARGETS.with(|t| t.borrow().iter().position(|name| name == target));
    let target = index.map_or_else(
        || {
            crate::log::error(&format!(
                "routed to {target:?}, which is not a configured target"
            ));
            INVALID
        },
        |i| i as u32,
    );
    let strip_prefix = match strip_prefix {
        None | Some("") => 0,
        Some(prefix) if request.path().starts_with(prefix) => prefix.len() as u32,
        Some(prefix) => {
            crate::log::error(&format!(
                "strip_prefix {prefix:?} is not a prefix of the path {:?}",
                request.path()
            ));
            INVALID
        }
    };
    wit::Route {
        target,
        strip_prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads request bodies and buffers response bodies, unless its config leaves a hook out.
    struct Reader {
        hooks: &'static [Hook],
    }

    impl Filter for Reader {
        type Config = ();
        const REQUEST_BODY: bool = true;
        const RESPONSE_BODY: bool = true;
        const REQUEST_HEAD: bool = true;

        fn new(_: ()) -> Result<Self, String> {
            Ok(Reader { hooks: &[] })
        }

        fn hooks(&self) -> &'static [Hook] {
            self.hooks
        }
    }

    #[test]
    fn a_hook_left_out_asks_for_nothing_it_would_need() {
        use wit::Capabilities as C;
        let all = capabilities(&Reader {
            hooks: &[Hook::OnRequest, Hook::OnResponse],
        });
        assert_eq!(
            all,
            C::ON_REQUEST | C::ON_RESPONSE | C::REQUEST_HEAD | C::REQUEST_BODY | C::RESPONSE_BODY
        );
        let response_only = capabilities(&Reader {
            hooks: &[Hook::OnResponse],
        });
        assert_eq!(
            response_only,
            C::ON_RESPONSE | C::RESPONSE_BODY,
            "no request body read, no head passed"
        );
        let request_only = capabilities(&Reader {
            hooks: &[Hook::OnRequest],
        });
        assert_eq!(
            request_only,
            C::ON_REQUEST | C::REQUEST_HEAD | C::REQUEST_BODY
        );
    }
}
