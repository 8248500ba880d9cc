"""The example WSGI app: standard library only, so the quickstart needs no pip install."""
import html
import sys


def app(environ, start_response):
    name = html.escape(environ.get("QUERY_STRING", "").partition("name=")[2] or "world")
    body = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Gatehouse</title></head>
<body>
<h1>Hello, {name}!</h1>
<p>Served by a Gatehouse WSGI worker running Python {sys.version.split()[0]}
({html.escape(sys.prefix)}). Try <a href="?name=Gatehouse">?name=Gatehouse</a>.</p>
<p>Path: <code>{html.escape(environ["PATH_INFO"])}</code></p>
</body></html>
""".encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
