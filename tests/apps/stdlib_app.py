"""A standard-library WSGI app, every route wrapped in wsgiref.validate.validator.

The validator checks the server's side of PEP 3333 too: the environ's keys and types, the input and
error streams, start_response's return value, and that close() is called on every iterable.
"""
import json
import os
import sys
import time
from wsgiref.validate import validator

CGI_KEYS = [
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
    "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT",
    "HTTPS", "SSL_CLIENT_S_DN", "SSL_CLIENT_VERIFY",
]


def respond(start_response, body, status="200 OK", content_type="application/json", extra=()):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(extra))
    return [body]


class Closing:
    """An iterable whose close() leaves a mark, to prove the server calls it."""

    def __init__(self, chunks, mark):
        self.chunks, self.mark = chunks, mark

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        with open(self.mark, "w") as f:
            f.write("closed")


def environ_view(environ, start_response):
    info = {k: environ.get(k) for k in CGI_KEYS}
    info["headers"] = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    info["types"] = sorted({type(environ[k]).__name__ for k in environ if k.isupper()})
    info["wsgi"] = {
        "version": list(environ["wsgi.version"]),
        "url_scheme": environ["wsgi.url_scheme"],
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "run_once": environ["wsgi.run_once"],
        "input_terminated": environ.get("wsgi.input_terminated"),
    }
    info["path_info_codepoints"] = [ord(c) for c in environ["PATH_INFO"]]
    info["pid"] = os.getpid()
    info["sys_prefix"] = sys.prefix
    return respond(start_response, info)


def input_view(environ, start_response):
    """Mixed read calls, all of which must agree about where the stream is."""
    stream = environ["wsgi.input"]
    out = {}
    out["read3"] = stream.read(3).decode("latin-1")
    out["readline"] = stream.readline().decode("latin-1")
    out["readline_size2"] = stream.readline(2).decode("latin-1")
    out["readlines"] = [l.decode("latin-1") for l in stream.readlines()]
    out["eof_read"] = stream.read(10).decode("latin-1")
    out["eof_readline"] = stream.readline().decode("latin-1")
    return respond(start_response, out)


def iterate_view(environ, start_response):
    lines = [l.decode() for l in environ["wsgi.input"]]
    return respond(start_response, {"lines": lines})


def read_all_view(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(length)
    return respond(start_response, {"length": len(data), "sum": sum(data)})


def stream_view(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    count = int(environ["QUERY_STRING"] or "5")

    def chunks():
        for i in range(count):
            yield b"chunk %d\n" % i
    return chunks()


def big_view(environ, start_response):
    size = int(environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])

    def chunks():
        block = bytes(range(256)) * 256
        left = size
        while left:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece
    return chunks()


def write_view(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    return [b"then returned"]


def error_view(environ, start_response):
    raise RuntimeError("SECRET-TRACEBACK-MARKER")


def late_error_view(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def chunks():
        yield b"first part"
        raise RuntimeError("failed after the headers")
    return chunks()


def exc_info_view(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced"]


def hop_by_hop_view(environ, start_response):
    start_response("200 OK", [("Connection", "close")])
    return [b"never"]


def close_view(environ, start_response):
    mark = os.path.join(os.environ["GATEHOUSE_TEST_MARKS"], environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing([b"a", b"b"], mark)


def slow_close_view(environ, start_response):
    """Many slow chunks: the client goes away early, and close() must still run, promptly."""
    mark = os.path.join(os.environ["GATEHOUSE_TEST_MARKS"], environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Type", "text/plain")])

    def chunks():
        for i in range(100):
            yield b"chunk %d\n" % i
            time.sleep(0.05)
    return Closing(chunks(), mark)


def file_view(environ, start_response):
    path = os.path.join(os.environ["GATEHOUSE_TEST_MARKS"], "file.bin")
    size = os.path.getsize(path)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](open(path, "rb"), 65536)


def short_view(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    return [b"only this"]


def short_stream_view(environ, start_response):
    # Streamed: the head leaves the worker before the (short) body does.
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    yield b"part"
    time.sleep(0.05)
    yield b" of it"


def long_view(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"12345", b"67890"]


def no_content_view(environ, start_response):
    start_response("204 No Content", [])
    return []


def sleep_view(environ, start_response):
    time.sleep(float(environ["QUERY_STRING"] or "1"))
    return respond(start_response, {"slept": True, "pid": os.getpid()})


def plain_view(environ, start_response):
    # A whole response in a list, as most frameworks return it: its frames leave the worker together.
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain"]


def many_headers_view(environ, start_response):
    count = int(environ["QUERY_STRING"] or "30000")
    start_response("200 OK", [("X-H%d" % i, "v") for i in range(count)])
    return [b"headers"]


def two_lengths_view(environ, start_response):
    # Two Content-Length values that disagree, then 3 MB: more than the worker may send ahead of
    # the front's credit.
    start_response("200 OK", [("Content-Length", "0"), ("Content-Length", "3000000")])
    return [b"x" * 3000000]


def corrupt_view(environ, start_response):
    """Writes garbage into the worker's own connections to the front, as a buggy C extension
    holding a stray file descriptor might."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                os.write(int(name), b"\xff" * 64)
        except OSError:
            pass
    return respond(start_response, {"corrupted": True})


def crash_view(environ, start_response):
    os._exit(1)


def sigkill_view(environ, start_response):
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def segfault_view(environ, start_response):
    import ctypes
    ctypes.string_at(0)


ROUTES = {
    "/environ": environ_view,
    "/input": input_view,
    "/iterate": iterate_view,
    "/read_all": read_all_view,
    "/stream": stream_view,
    "/big": big_view,
    "/write": write_view,
    "/error": error_view,
    "/late_error": late_error_view,
    "/exc_info": exc_info_view,
    "/hop": hop_by_hop_view,
    "/close": close_view,
    "/slow_close": slow_close_view,
    "/file": file_view,
    "/no_content": no_content_view,
    "/sleep": sleep_view,
}

# Routes that break the WSGI rules on purpose are served without the validator.
UNVALIDATED = {
    "/short": short_view,
    "/short_stream": short_stream_view,
    "/long": long_view,
    "/plain": plain_view,
    "/many_headers": many_headers_view,
    "/two_lengths": two_lengths_view,
    "/crash": crash_view,
    "/corrupt": corrupt_view,
    "/segfault": segfault_view,
    "/sigkill": sigkill_view,
    "/hop": hop_by_hop_view,
    "/error": error_view,
    "/late_error": late_error_view,
}

VALIDATED = {path: validator(view) for path, view in ROUTES.items()}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path in UNVALIDATED:
        return UNVALIDATED[path](environ, start_response)
    view = VALIDATED.get(path)
    if view is None:
        return respond(start_response, {"error": "no route", "path": path}, status="404 Not Found")
    return view(environ, start_response)


def make_app():
    """For the `module:factory()` form."""
    return app
