"""A Flask JSON route: a typical framework request."""
from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/json")
def json_route():
    return jsonify(message="Hello, World!", items=list(range(10)))
