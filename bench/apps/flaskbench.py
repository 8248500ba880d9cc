"""The Flask app bench/run serves for both Flask workloads: flaskjson's JSON route (GET /json) plus a
POST route that reads the whole request body (1 KiB from wrk) and answers its length as JSON."""
from flask import jsonify, request

from flaskjson import app


@app.post("/post")
def post_route():
    body = request.get_data()
    return jsonify(received=len(body))
