"""A 1 KiB response that shared caches may keep (/cached) or not (/fresh): for bench/cache.sh."""
BODY = b"x" * 1024


def app(environ, start_response):
    cc = "public, max-age=3600" if environ["PATH_INFO"] == "/cached" else "no-store"
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(BODY))), ("Cache-Control", cc)])
    return [BODY]
