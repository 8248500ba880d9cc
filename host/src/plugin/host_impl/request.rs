//! The `request` interface: the request being handled, beyond its fields.

use http::Method;
use wasmtime::Result;

use super::HostState;
use super::wit::{self, ErrorCode};
use crate::plugin::answers;
use crate::plugin::bindings::gatehouse::plugin::request;
use crate::plugin::chain::local_parts;
use crate::plugin::exchange::{Exchange, HeadSource};
use crate::request_target::{normalise_path, replace_path_and_query};

/// Method, path, query and host, as `request.head` returns them.
pub fn request_head(ex: &Exchange) -> wit::RequestHeadResult {
    wit::RequestHeadResult {
        method: wit_method(&ex.request.method),
        path: ex.request.uri.path().to_string(),
        query: ex.request.uri.query().map(str::to_string),
        host: ex.host().map(str::to_string),
    }
}

/// The same, lent to an `on-request` call: lowered into the guest straight from the request's
/// buffers.
pub fn lent_head(head: &HeadSource) -> wit::RequestHeadParam<'_> {
    wit::RequestHeadParam {
        method: method_as!(&head.method, MethodParam, |token| token),
        path: head.uri.path(),
        query: head.uri.query(),
        host: head.host(),
    }
}

/// An address as the contract's numbers; an IPv4-mapped IPv6 address (a dual-stack listener's view
/// of an IPv4 client) is the IPv4 address it stands for.
pub fn wit_ip(ip: std::net::IpAddr) -> wit::IpAddress {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => wit::IpAddress::V4(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            // Truncation is the point: the high and the low 64 bits.
            wit::IpAddress::V6(((bits >> 64) as u64, bits as u64))
        }
    }
}

/// A method as the contract carries it (the common ones without a string), as either generated
/// type: `$other` makes the token of any other method.
macro_rules! method_as {
    ($method:expr, $ty:ident, $other:expr) => {
        match *$method {
            Method::GET => wit::$ty::Get,
            Method::HEAD => wit::$ty::Head,
            Method::POST => wit::$ty::Post,
            Method::PUT => wit::$ty::Put,
            Method::DELETE => wit::$ty::Delete,
            Method::CONNECT => wit::$ty::Connect,
            Method::OPTIONS => wit::$ty::Options,
            Method::TRACE => wit::$ty::Trace,
            Method::PATCH => wit::$ty::Patch,
            ref other => wit::$ty::Other($other(other.as_str())),
        }
    };
}
use method_as;

/// A method as `request.head` returns it.
pub(super) fn wit_method(method: &Method) -> wit::MethodResult {
    method_as!(method, MethodResult, str::to_string)
}

/// A method from a plugin; an invalid token comes back as the error.
pub(super) fn http_method(method: wit::MethodResult) -> std::result::Result<Method, String> {
    Ok(match method {
        wit::MethodResult::Get => Method::GET,
        wit::MethodResult::Head => Method::HEAD,
        wit::MethodResult::Post => Method::POST,
        wit::MethodResult::Put => Method::PUT,
        wit::MethodResult::Delete => Method::DELETE,
        wit::MethodResult::Connect => Method::CONNECT,
        wit::MethodResult::Options => Method::OPTIONS,
        wit::MethodResult::Trace => Method::TRACE,
        wit::MethodResult::Patch => Method::PATCH,
        wit::MethodResult::Other(token) => {
            Method::from_bytes(token.as_bytes()).map_err(|_| token)?
        }
    })
}

impl request::Host for HostState {
    fn head(&mut self) -> Result<wit::RequestHeadResult> {
        Ok(request_head(self.ex()?))
    }

    fn set_method(&mut self, method: wit::MethodResult) -> Result<Result<(), ErrorCode>> {
        Ok(match http_method(method) {
            Ok(m) => {
                self.changing_request()?.request.method = m;
                Ok(())
            }
            Err(_) => Err(ErrorCode::InvalidMethod),
        })
    }

    fn set_path(&mut self, path: String) -> Result<Result<(), ErrorCode>> {
        let ex = self.changing_request()?;
        if !path.starts_with('/') {
            return Ok(Err(ErrorCode::InvalidPath));
        }
        // The path a plugin sets gets the normal form the client's path got, so later plugins, the
        // router and the target read it the same way.
        let path = match normalise_path(&path) {
            Ok(normal) => normal.unwrap_or(path),
            Err(_) => return Ok(Err(ErrorCode::InvalidPath)),
        };
        let query = ex.request.uri.query().map(str::to_string);
        Ok(
            replace_path_and_query(&mut ex.request.uri, &path, query.as_deref())
                .map_err(|()| ErrorCode::InvalidPath),
        )
    }

    fn set_query(&mut self, query: Option<String>) -> Result<Result<(), ErrorCode>> {
        let ex = self.changing_request()?;
        let path = ex.request.uri.path().to_string();
        Ok(
            replace_path_and_query(&mut ex.request.uri, &path, query.as_deref())
                .map_err(|()| ErrorCode::InvalidQuery),
        )
    }

    fn client_addr(&mut self) -> Result<Option<wit::IpAddress>> {
        Ok(self.ex()?.client.map(wit_ip))
    }

    fn is_tls(&mut self) -> Result<bool> {
        Ok(self.ex()?.tls)
    }

    fn client_cert_subject(&mut self) -> Result<Option<String>> {
        Ok(self.ex()?.client_subject.as_deref().map(str::to_string))
    }

    fn context_get(&mut self, key: String) -> Result<Option<String>> {
        Ok(self.ex()?.context_get(&key).map(str::to_string))
    }

    fn context_set(&mut self, key: String, value: String) -> Result<()> {
        // No error code in the contract for this: the plugin's call fails (500, or skipped).
        self.changing_request()?
            .context_set(key, value)
            .map_err(wasmtime::Error::msg)
    }

    fn wait_for(&mut self, key: String, timeout_ms: u32) -> Result<()> {
        let timeout =
            std::time::Duration::from_millis(u64::from(timeout_ms)).min(crate::sandbox::MAX_WAIT);
        let key = super::scoped(&mut self.scratch, &self.info.namespace, &key).to_string();
        let waiter = self.info.store.waits.register(key, timeout);
        self.ex()?.wait = Some(waiter);
        Ok(())
    }

    fn offer_answer(&mut self, answer: wit::Answer) -> Result<bool> {
        self.ex()?;
        if !self.in_on_request {
            return Ok(false);
        }
        // A store shared with other servers changes unseen: nothing read from it can vouch for
        // an answer.
        if self.info.store.is_remote() {
            return Ok(false);
        }
        let Some(key) = answers::key(&self.exchange) else {
            return Ok(false);
        };
        let too_many = |list: &[String]| list.len() > answers::MAX_NAMES;
        if too_many(&answer.consult_if_present)
            || too_many(&answer.vary)
            || answer.depends_on.len() > crate::sandbox::MAX_ANSWER_READS
        {
            return Ok(false);
        }
        let mut depends: Vec<(String, u64)> = Vec::with_capacity(answer.depends_on.len());
        for name in &answer.depends_on {
            let key = super::scoped(&mut self.scratch, &self.info.namespace, name);
            // A key not read in this call, or read twice with a write between, cannot vouch
            // for the answer.
            match self.reads.version(key) {
                Some(version) if version != super::CHANGED_WHILE_READ => {
                    if !depends.iter().any(|(k, _)| k == key) {
                        depends.push((key.to_string(), version));
                    }
                }
                _ => return Ok(false),
            }
        }
        let names = |list: &[String]| -> Option<Vec<http::HeaderName>> {
            list.iter()
                .map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
                .collect()
        };
        let consult = names(&answer.consult_if_present);
        // The values that select the answer are this request's, as it is now.
        let vary = names(&answer.vary).map(|names| {
            names
                .into_iter()
                .map(|name| {
                    let values = self.exchange.request.headers.get_all(&name);
                    let values = values.iter().cloned().collect();
                    (name, values)
                })
                .collect::<Vec<_>>()
        });
        let cache_status_fits = answer
            .cache_status
            .as_ref()
            .is_none_or(|s| http::HeaderValue::try_from(format!("{s}; ttl=0")).is_ok());
        let (Some(consult), Some(vary), true, Ok((status, headers, body))) = (
            consult,
            vary,
            cache_status_fits,
            local_parts(answer.response),
        ) else {
            return Ok(false);
        };
        let metric = answer.metric.and_then(|name| self.metric(name));
        let answer = answers::Answer {
            status,
            headers,
            body,
            response_time: answer.response_time,
            initial_age: answer.initial_age,
            lifetime: answer.lifetime,
            consult,
            vary,
            depends,
            cache_status: answer.cache_status,
            metric,
        };
        if !answer.fits(&key, self.info.answers.budget()) {
            return Ok(false);
        }
        // Kept once the call answers `respond` (a call that traps or goes on offers nothing).
        self.offered = Some((key, answer));
        Ok(true)
    }

    fn set_response_headers(
        &mut self,
        headers: Vec<wit::HeaderField>,
    ) -> Result<Result<(), ErrorCode>> {
        self.set_response_fields(headers)
    }

    fn continue_for_client(&mut self, ttl_ms: u32) -> Result<()> {
        self.ex()?;
        if self.in_on_request {
            self.continue_for_client = Some(ttl_ms);
        }
        Ok(())
    }

    fn respond(&mut self, response: wit::LocalResponse) -> Result<()> {
        // Like every request call, an error outside a hook.
        self.ex()?;
        self.local = Some(response);
        Ok(())
    }
}
