#!/usr/bin/env python3
"""A provider callback (webhook) receiver for the demo: Stripe events.

    callback_receiver.py PORT

Listens on 127.0.0.1:PORT (0: a free port), prints "listening on URL" once
it is connected to the database, then one line per request.  It connects
with the libpq environment (PGHOST, PGUSER, ...), as an application role
that is a member of payments_app and owns the provider.

POST /webhooks/stripe hands the raw body and the headers to
payments.receive_callback, which checks the signature over those bytes (a
body re-serialised from its parsed JSON would not verify), records the
event once and moves the order it names.  The answer is 200 with the
outcome, whatever it is, so that the provider stops retrying; a refused
signature is a 400, so that a forged request is never acknowledged.

Requests are served one at a time on one connection: enough for a demo.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import psycopg2
from psycopg2.extras import Json

PROVIDER = "stripe"
MAX_BODY = 1024 * 1024  # payments.callback_max_body's default

# PM401 signature mismatch, PM402 no valid key, PM403 timestamp outside
# the window, PM404 missing or malformed header.
REFUSED = {"PM401", "PM402", "PM403", "PM404"}
# PM408: the event came before the ones it follows; nothing was recorded,
# and a non-2xx answer makes the provider send it again later.
EARLY = "PM408"

conn = None


def connect():
    global conn
    if conn is None or conn.closed:
        conn = psycopg2.connect(application_name="callback_receiver")
    return conn


def stripe_event(body):
    """The event id, event type and our order reference of a Stripe event."""
    event = json.loads(body)
    return (event["id"], event["type"],
            event["data"]["object"]["metadata"]["order_id"], event)


class Handler(BaseHTTPRequestHandler):
    def answer(self, status, result, what):
        # Logged before answering, so the line is out before the client
        # has its answer.
        print(f"receiver: POST {self.path} {what} -> {status} "
              f"{result.get('outcome') or result.get('sqlstate') or result['error']}",
              flush=True)
        data = json.dumps(result).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/webhooks/stripe":
            return self.answer(404, {"error": "not found"}, "-")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return self.answer(411, {"error": "length required"}, "-")
        length = int(length)
        if length > MAX_BODY:
            return self.answer(413, {"error": "body too large"}, "-")
        body = self.rfile.read(length)
        try:
            event_id, event_type, order_ref, event = stripe_event(body)
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"error": "not a Stripe event"}, "-")
        what = f"{event_id} {event_type} order {order_ref}"
        headers = dict(self.headers.items())

        try:
            db = connect()
            with db, db.cursor() as cur:  # one transaction, rolled back on error
                cur.execute("SELECT payments.receive_callback(%s, %s, %s, %s, %s, %s, %s)",
                            (PROVIDER, event_id, order_ref, event_type, Json(event),
                             Json(headers), psycopg2.Binary(body)))
                outcome = cur.fetchone()[0]
                # outcome 'new': no route covers the event; the application
                # would apply it here, in the same transaction.
        except psycopg2.Error as e:
            if e.pgcode in REFUSED:
                status = 400
            elif e.pgcode == EARLY:
                status = 409
            else:
                status = 500
            error = e.diag.message_primary or str(e).strip()
            return self.answer(status, {"error": error, "sqlstate": e.pgcode}, what)
        self.answer(200, {"outcome": outcome}, what)

    def log_request(self, code="-", size="-"):
        pass  # answer() logs every request once


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: callback_receiver.py PORT")
    connect()
    server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"listening on http://127.0.0.1:{server.server_port}/webhooks/stripe", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
