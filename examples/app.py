"""The example Flask app behind Gatehouse (see gatehouse.toml for the plugin chain in front of it)."""
import time

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def home():
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Gatehouse example</title>"
        "<link rel='stylesheet' href='/static/css/style.css'></head><body>"
        "<h1>Hello from Flask behind Gatehouse</h1><ul>"
        "<li><a href='/api/time'>/api/time</a>: cached for 10 s by the cache plugin</li>"
        "<li><a href='/admin/'>/admin/</a>: behind the auth plugin (admin / gatehouse)</li>"
        "<li><a href='/static/css/style.css'>/static/</a>: files from the static target</li>"
        "</ul></body></html>"
    )


@app.get("/api/time")
def now():
    response = jsonify(time=time.time(), served_by="flask")
    # Shared caches may keep it for 10 s: the cache plugin answers repeats without Python.
    response.headers["Cache-Control"] = "public, max-age=10"
    return response


@app.route("/api/echo", methods=["POST"])
def echo():
    return jsonify(length=len(request.get_data()), content_type=request.content_type)


@app.get("/admin/")
def admin():
    # Set by the auth plugin after it checked the password; a client cannot send its own.
    user = request.headers.get("X-Authenticated-User", "nobody")
    return jsonify(admin=True, user=user)
