#!/usr/bin/env python3
"""The warehouse's consumer for the demo: applies each message once.

    outbox_consumer.py BROKER_FILE

Connects with the libpq environment as the warehouse's role and reads the
messages BROKER_FILE holds, in order.  Each is applied in one transaction
that first asks payments.inbox_receive whether its message id is new: a
copy of a message already applied (at-least-once delivery sends some
twice) is dropped, and a transaction that fails takes its inbox record
with it, so the message is applied when it comes again.
"""

import json
import sys

import psycopg2


def main():
    conn = psycopg2.connect(application_name="outbox_consumer")
    with open(sys.argv[1]) as broker:
        for line in broker:
            msg = json.loads(line)
            with conn, conn.cursor() as cur:
                cur.execute("SELECT payments.inbox_receive('shop', %s)", (msg["message_id"],))
                if cur.fetchone()[0]:
                    cur.execute("INSERT INTO warehouse_events (order_ref, event) VALUES (%s, %s)",
                                (msg["key"], msg["payload"]["event"]))
                    outcome = "applied"
                else:
                    outcome = "a copy of a message already applied: dropped"
            print(f"warehouse: {msg['key']} {msg['payload']['event']}: {outcome}", flush=True)
    conn.close()


if __name__ == "__main__":
    main()
