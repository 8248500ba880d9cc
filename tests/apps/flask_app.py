"""A Flask app: JSON, forms, uploads, streaming and cookies."""
import hashlib

from flask import Flask, Response, jsonify, make_response, request, stream_with_context

app = Flask(__name__)


@app.get("/json")
def json_route():
    return jsonify(message="hello", items=[1, 2, 3], args=request.args.to_dict())


@app.post("/form")
def form_route():
    return jsonify(name=request.form.get("name"), tags=request.form.getlist("tag"))


@app.post("/upload")
def upload_route():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   note=request.form.get("note"))


@app.post("/echo-json")
def echo_json():
    return jsonify(received=request.get_json())


@app.get("/stream")
def stream_route():
    def generate():
        for i in range(5):
            yield f"line {i}\n"
    return Response(stream_with_context(generate()), mimetype="text/plain")


@app.get("/set-cookie")
def set_cookie():
    resp = make_response("cookie set")
    resp.set_cookie("session", "abc123", httponly=True)
    resp.set_cookie("theme", "dark")
    return resp


@app.get("/cookies")
def cookies():
    return jsonify(request.cookies.to_dict())


@app.get("/headers")
def headers_route():
    return jsonify(headers={k.lower(): v for k, v in request.headers.items()},
                   remote_addr=request.remote_addr, full_path=request.full_path)


@app.get("/boom")
def boom():
    raise RuntimeError("flask view failed")
