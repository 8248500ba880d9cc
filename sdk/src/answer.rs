//! What a filter answers: go on, route, or respond itself.

/// A response made by the filter instead of the target:
/// `LocalResponse::new(403).header("x-why", "bot").body("no\n")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The status code.
    pub status: u16,
    /// Header fields.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// An empty response with this status.
    pub fn new(status: u16) -> LocalResponse {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> LocalResponse {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> LocalResponse {
        self.body = body.into();
        self
    }

    /// Sets a plain-text body, with `content-type: text/plain; charset=utf-8` added here.
    pub fn text(self, body: impl Into<Vec<u8>>) -> LocalResponse {
        self.header("content-type", "text/plain; charset=utf-8")
            .body(body)
    }

    /// A redirect (`301`, `302`, `307` or `308`) to `location`.
    pub fn redirect(status: u16, location: &str) -> LocalResponse {
        LocalResponse::new(status).header("location", location)
    }
}

/// A response the host may give in the filter's place for later GET and HEAD requests of the same
/// URL, without calling it: see [`Request::offer_answer`](crate::Request::offer_answer). A cache's
/// hit, made once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Status, fields and body as every answer sends them; the host adds `age`,
    /// `content-length` and (with [`Answer::cache_status`]) `cache-status`.
    pub response: LocalResponse,
    /// When the response arrived, in milliseconds since the Unix epoch.
    pub response_time_ms: u64,
    /// Its age then, in milliseconds (RFC 9111 section 4.2.3's corrected initial age); an
    /// answer's `age` is this plus the time since `response_time_ms`.
    pub initial_age_ms: u64,
    /// Its freshness lifetime in milliseconds: the host answers only while the age is below it.
    pub lifetime_ms: u64,
    /// Lower-case names of request fields whose presence sends a request to the filter instead.
    pub consult_if_present: Vec<String>,
    /// Lower-case names of request fields that select this answer (the response's `Vary`): the
    /// host gives it only to requests with byte-for-byte the same values of them.
    pub vary: Vec<String>,
    /// Keys of the store, read during this call, the answer was made from: a change to any ends it.
    pub depends_on: Vec<String>,
    /// A `Cache-Status` value to send, to which the host appends `; ttl=` and the seconds left.
    pub cache_status: Option<String>,
    /// A metric of the filter ([`crate::metrics::add`]) that counts each answer.
    pub metric: Option<String>,
}

/// What [`Filter::on_request`](crate::Filter::on_request) decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on with the next plugin, then the target.
    Continue,
    /// Answer now; later plugins and the target are skipped.
    Respond(LocalResponse),
    /// Go on, and send the request to this target (unless a later plugin chooses again).
    Route {
        /// A target name from the config's `[targets]`; another name fails the request (500).
        target: String,
        /// A prefix of the request's path, ending at a segment, that the target treats as its
        /// mount point (WSGI: `SCRIPT_NAME`); one the path is not below fails the request (500).
        strip_prefix: Option<String>,
    },
}

impl Action {
    /// Route to `target`.
    pub fn route(target: &str) -> Action {
        Action::Route {
            target: target.to_string(),
            strip_prefix: None,
        }
    }
}

impl From<LocalResponse> for Action {
    fn from(r: LocalResponse) -> Action {
        Action::Respond(r)
    }
}
