"""A misbehaving HTTP/1.1 server for the upstream tests (standard library only).

    python3 upstream_server.py NAME [--port N] [--tls CERT KEY] [--unix PATH]

Prints `port=N` once listening. Routes:
  /id                  its NAME
  /echo                NAME, method, path, headers, body length and SHA-256, as JSON
  /status/N            answers status N
  /hang                never answers (sleeps 120 s)
  /reset               resets the connection without answering (on the server named by ?only=NAME,
                       or on every server without it)
  /slow?gap=S          sends part of a body, pauses S seconds, sends the rest
  /download?size=N     streams N bytes (chunked)
  /upload              reads the body as it comes; answers its length and SHA-256
  /slowread?gap=S      reads the body in 64 KiB pieces, pausing S seconds after each
  /counts              how many requests each method+path got, as JSON
  /port                the client's port (which connection the request came on)
  /bye                 answers as if keeping the connection, then closes it 0.2 s later
  /open                how many client connections are open, this one included
  /healthz             200, or 503 after /sick (until /well)
  /ws                  a WebSocket that echoes text frames
"""
import base64
import hashlib
import json
import os
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NAME = sys.argv[1]
COUNTS = {}
COUNTS_LOCK = threading.Lock()
SICK = threading.Event()
OPEN = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with COUNTS_LOCK:
            OPEN[0] += 1

    def finish(self):
        with COUNTS_LOCK:
            OPEN[0] -= 1
        super().finish()

    def count(self):
        key = f"{self.command} {urlsplit(self.path).path}"
        with COUNTS_LOCK:
            COUNTS[key] = COUNTS.get(key, 0) + 1

    def send(self, status, body, content_type="text/plain", extra=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Server", NAME)
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Connection", "keep-alive, x-hop")
        self.send_header("X-Hop", "must not reach the client")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        """Reads the request body (Content-Length or chunked) as it arrives; yields pieces."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, 65536))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, 65536))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    def handle_any(self):
        self.count()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path
        if path == "/ws":
            return self.websocket()
        if path == "/slowread":
            gap = float(query.get("gap", ["0.3"])[0])
            length = 0
            for piece in self.read_body():
                length += len(piece)
                time.sleep(gap)
            return self.send(200, f"read {length} slowly\n")
        digest = hashlib.sha256()
        length = 0
        for piece in self.read_body():
            digest.update(piece)
            length += len(piece)
        if path == "/id":
            return self.send(200, NAME)
        if path in ("/echo", "/upload"):
            info = {
                "name": NAME,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "length": length,
                "sha256": digest.hexdigest(),
            }
            return self.send(200, json.dumps(info), "application/json")
        if path.startswith("/status/"):
            return self.send(int(path.rsplit("/", 1)[1]), f"status from {NAME}\n")
        if path == "/hang":
            time.sleep(120)
            return self.send(200, "too late")
        if path == "/reset":
            only = query.get("only", [None])[0]
            if only is None or only == NAME:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            return self.send(200, f"no reset on {NAME}")
        if path == "/slow":
            gap = float(query.get("gap", ["2"])[0])
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"12345")
            self.wfile.flush()
            time.sleep(gap)
            self.wfile.write(b"67890")
            return
        if path == "/download":
            size = int(query.get("size", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = bytes(range(256)) * 256
            left = size
            while left:
                piece = block[: min(left, len(block))]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                left -= len(piece)
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/port":
            return self.send(200, str(self.client_address[1]))
        if path == "/bye":
            self.send(200, "bye")
            self.wfile.flush()
            time.sleep(0.2)  # closed once the answer has been taken as a whole
            self.close_connection = True
            return
        if path == "/open":
            with COUNTS_LOCK:
                return self.send(200, str(OPEN[0]))
        if path == "/counts":
            with COUNTS_LOCK:
                return self.send(200, json.dumps(COUNTS), "application/json")
        if path == "/healthz":
            return self.send(503 if SICK.is_set() else 200, "health\n")
        if path == "/sick":
            SICK.set()
            return self.send(200, "sick\n")
        if path == "/well":
            SICK.clear()
            return self.send(200, "well\n")
        return self.send(404, f"no route {path}\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        rfile, wfile = self.rfile, self.wfile
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                return
            opcode = head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", rfile.read(8))[0]
            mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(length)))
            if opcode == 8:
                wfile.write(b"\x88\x00")
                wfile.flush()
                return
            reply = f"{NAME} echo: ".encode() + data
            wfile.write(bytes([0x81, len(reply)]) + reply)
            wfile.flush()
        self.close_connection = True


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("127.0.0.1", 0)


def main():
    args = sys.argv[2:]
    port = 0
    tls = None
    unix = None
    while args:
        flag = args.pop(0)
        if flag == "--port":
            port = int(args.pop(0))
        elif flag == "--tls":
            tls = (args.pop(0), args.pop(0))
        elif flag == "--unix":
            unix = args.pop(0)
    if unix:
        if os.path.exists(unix):
            os.unlink(unix)
        server = UnixServer(unix, Handler)
        print("port=0", flush=True)
    else:
        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print(f"port={server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
