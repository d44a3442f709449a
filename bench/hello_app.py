"""The baseline: a bare Flask app served by the same gunicorn settings as Baton.

POST /webhooks/whatsapp reads the body (as any POST endpoint must) and answers
a small JSON, with no verification, database or Redis: the ceiling that
`bench/ingest.py` and `bench/e2e.py` compare Baton against.

    gunicorn --chdir bench hello_app:app
"""
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/webhooks/whatsapp")
@app.post("/")
def hello():
    request.get_data(cache=False)
    return jsonify({"messages": 1, "statuses": 0, "duplicates": 0, "ignored": 0})


@app.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})
