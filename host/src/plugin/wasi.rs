//! The WASI a plugin may import, and what each part does in the sandbox.
//!
//! Rust's `std` links WASI p2 (stdio, clocks, random, and stubs for files and sockets), so plugins
//! import it even when they never use it. wasmtime-wasi's synchronous bindings implement every
//! blocking call (`blocking-write-and-flush`, `pollable.block`, even dropping a stream) by running a
//! future to completion with tokio's `block_on`, which panics on an event-loop thread: a plugin's
//! `println!` or `sleep` would take the host's connection task down with it. So the `wasi:io`
//! interfaces are bound here instead, over the same resource table:
//!
//! - stdout and stderr are the plugin's log: each line goes to the host's log tagged with the
//!   plugin's name, at most [`STDIO_LINES_PER_SECOND`](crate::sandbox::STDIO_LINES_PER_SECOND) per
//!   plugin (the rest are counted and reported), each cut at
//!   [`STDIO_LINE_MAX`](crate::sandbox::STDIO_LINE_MAX) bytes;
//! - stdin is closed: a read sees end of file;
//! - waiting (`pollable.block`, `poll`, so `std::thread::sleep`) and blocking splices trap: the
//!   call fails, the request gets the plugin's error status (500, or skipped under
//!   `on_error = "continue"`) and the instance is replaced.
//!
//! Files, sockets, environment and arguments stay wasmtime-wasi's, with nothing granted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::sandbox::{STDIO_LINE_MAX, STDIO_LINES_PER_SECOND};

/// Links WASI p2 for plugins: wasmtime-wasi's, with `wasi:io` replaced by the non-blocking
/// versions below.
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, NonBlocking>(linker, |s| NonBlockingIo(s.ctx().table))?;
    streams::add_to_linker::<T, NonBlocking>(linker, |s| NonBlockingIo(s.ctx().table))?;
    linker.allow_shadowing(false);
    Ok(())
}

struct NonBlocking;

impl HasData for NonBlocking {
    type Data<'a> = NonBlockingIo<'a>;
}

/// The store's resource table, seen through `wasi:io` calls that never block.
struct NonBlockingIo<'a>(&'a mut ResourceTable);

fn refuse<T>(what: &str) -> wasmtime::Result<T> {
    wasmtime::bail!("a plugin may not block ({what}): calls must return without waiting")
}

impl poll::Host for NonBlockingIo<'_> {
    fn poll(&mut self, _: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        refuse("wasi:io/poll.poll, e.g. a sleep")
    }
}

impl poll::HostPollable for NonBlockingIo<'_> {
    fn ready(&mut self, _: Resource<DynPollable>) -> wasmtime::Result<bool> {
        refuse("pollable.ready")
    }

    fn block(&mut self, _: Resource<DynPollable>) -> wasmtime::Result<()> {
        refuse("pollable.block, e.g. a sleep")
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NonBlockingIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        // No `cancel().await`: the only streams a plugin can open are its stdio, which hold
        // nothing to cancel.
        drop(self.0.delete(stream)?);
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let borrowed = || Resource::new_borrow(stream.rep());
        if (streams::HostOutputStream::check_write(self.0, borrowed())? as usize) < bytes.len() {
            return Err(StreamError::trap("a plugin's output stream would block"));
        }
        streams::HostOutputStream::write(self.0, borrowed(), bytes)?;
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.blocking_write_and_flush(stream, vec![0; usize::try_from(len).unwrap_or(0).min(4096)])
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        _: Resource<DynOutputStream>,
        _: Resource<DynInputStream>,
        _: u64,
    ) -> StreamResult<u64> {
        Err(StreamError::trap(
            "a plugin may not block (blocking-splice)",
        ))
    }
}

impl streams::HostInputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        drop(self.0.delete(stream)?);
        Ok(())
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        // Stdin is closed, so this is end of file; a stream with nothing yet would mean waiting.
        let read = streams::HostInputStream::read(self.0, stream, len)?;
        if read.is_empty() && len > 0 {
            return Err(StreamError::trap("a plugin may not block (blocking-read)"));
        }
        Ok(read)
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        let skipped = streams::HostInputStream::skip(self.0, stream, len)?;
        if skipped == 0 && len > 0 {
            return Err(StreamError::trap("a plugin may not block (blocking-skip)"));
        }
        Ok(skipped)
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}

/// Lines a plugin wrote to stdout and stderr, allowed into the host's log at a bounded rate.
#[derive(Debug)]
pub struct OutputBudget {
    plugin: Arc<str>,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    lines: u32,
    dropped: u64,
}

impl OutputBudget {
    /// A budget for the plugin named `plugin`.
    pub fn new(plugin: &str) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            plugin: plugin.into(),
            window: Mutex::new(Window {
                started: Instant::now(),
                lines: 0,
                dropped: 0,
            }),
        })
    }

    fn emit(&self, stream: &'static str, line: &[u8]) {
        let Ok(mut window) = self.window.lock() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(window.started) >= Duration::from_secs(1) {
            if window.dropped > 0 {
                tracing::warn!(plugin = %self.plugin, dropped = window.dropped,
                    "plugin output over {STDIO_LINES_PER_SECOND} lines per second; lines dropped");
            }
            *window = Window {
                started: now,
                lines: 0,
                dropped: 0,
            };
        }
        if window.lines >= STDIO_LINES_PER_SECOND {
            window.dropped += 1;
            return;
        }
        window.lines += 1;
        drop(window);
        let text = String::from_utf8_lossy(&line[..line.len().min(STDIO_LINE_MAX)]);
        tracing::info!(plugin = %self.plugin, stream, "{}", text.trim_end_matches('\r'));
    }

    /// The stream a store's WASI context hands out as stdout (or stderr).
    pub fn stream(self: &Arc<Self>, name: &'static str) -> PluginOutput {
        PluginOutput {
            budget: Arc::clone(self),
            name,
        }
    }
}

/// A plugin's stdout or stderr.
pub struct PluginOutput {
    budget: Arc<OutputBudget>,
    name: &'static str,
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only for WASI p3, which plugins are not linked with.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            budget: Arc::clone(&self.budget),
            name: self.name,
            line: Vec::new(),
        })
    }
}

/// Splits what a plugin writes into lines for its log; a partial line waits for its end (or the
/// stream's drop), and no line holds more than `STDIO_LINE_MAX` bytes.
struct LineWriter {
    budget: Arc<OutputBudget>,
    name: &'static str,
    line: Vec<u8>,
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let mut rest = &bytes[..];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.push(&rest[..end]);
            self.budget.emit(self.name, &self.line);
            self.line.clear();
            rest = &rest[end + 1..];
        }
        self.push(rest);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        let room = STDIO_LINE_MAX.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.budget.emit(self.name, &self.line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}
