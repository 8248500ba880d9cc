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
