//! Directory listings (`autoindex = true`): a plain HTML page, names escaped, hidden files left out.

use std::fs::File;
use std::os::fd::OwnedFd;

use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{Method, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::body::Body;
use crate::error::HttpError;

/// Characters left as they are in a link: RFC 3986 unreserved.
const LINK: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Renders the listing of an open directory.
pub fn render(
    req: &Parts,
    dir: File,
    url_path: &str,
    show_hidden: bool,
) -> Result<Response<Body>, std::io::Error> {
    let fd: OwnedFd = dir.into();
    let mut entries = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." || (!show_hidden && name.starts_with('.')) {
            continue;
        }
        let is_dir = entry.file_type() == rustix::fs::FileType::Directory;
        entries.push((name, is_dir));
    }
    entries.sort();
    let title = escape(url_path);
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1><hr><pre>\n<a href=\"../\">../</a>\n"
    );
    for (name, is_dir) in entries {
        let slash = if is_dir { "/" } else { "" };
        html.push_str(&format!(
            "<a href=\"{}{slash}\">{}{slash}</a>\n",
            utf8_percent_encode(&name, LINK),
            escape(&name)
        ));
    }
    html.push_str("</pre><hr></body></html>\n");
    let len = html.len();
    let body = if req.method == Method::HEAD {
        Body::Empty
    } else {
        Body::full(html)
    };
    Response::builder()
        .header(CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(|_| std::io::Error::other(HttpError::Internal))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
