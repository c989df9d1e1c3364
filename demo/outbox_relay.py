#!/usr/bin/env python3
"""An outbox relay for the demo: hands the messages of a topic to a broker.

    outbox_relay.py TOPIC BROKER_FILE COUNT [--lose-first-ack]

Connects with the libpq environment (PGHOST, PGUSER, ...) as a role granted
the relay privilege on TOPIC, LISTENs on the channel payments_outbox and,
each time it is woken (or every second), claims the topic's due messages
with payments.outbox_claim.  Each message is "published" by appending it as
a JSON line to BROKER_FILE, a stand-in for Kafka or RabbitMQ, and then
acknowledged with payments.outbox_ack.  It stops once it has acknowledged
COUNT messages.

With --lose-first-ack the relay publishes its first message and then
behaves as if it crashed before its ack reached the database: it does not
acknowledge it.  Once the claim's lease runs out the message is claimed
again and published a second time, which is what at-least-once delivery
means; the consumer's inbox drops the copy.
"""

import json
import select
import sys

import psycopg2

LEASE = "1 second"


def main():
    topic, broker_file, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lose_first_ack = "--lose-first-ack" in sys.argv[4:]
    conn = psycopg2.connect(application_name="outbox_relay")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("LISTEN payments_outbox")
    print("relay: listening on channel payments_outbox", flush=True)
    acked = 0
    while acked < count:
        cur.execute(
            "SELECT id, message_id, key, payload, claim_token, attempts"
            "  FROM payments.outbox_claim(%s, 100, %s)",
            (topic, LEASE),
        )
        claimed = cur.fetchall()
        for msg_id, message_id, key, payload, token, attempts in claimed:
            with open(broker_file, "a") as broker:
                broker.write(json.dumps({"message_id": message_id, "key": key,
                                         "payload": payload}) + "\n")
            print(f"relay: published {key} {payload['event']} "
                  f"(attempt {attempts}, message id {message_id[:8]}...)", flush=True)
            if lose_first_ack:
                lose_first_ack = False
                print("relay: ... and lost the ack; the claim's lease runs out", flush=True)
                continue
            cur.execute("SELECT payments.outbox_ack(%s, %s)", (msg_id, token))
            acked += 1
        if not claimed:
            # woken by a commit that sent to the topic, or by the timeout,
            # which also catches a lease that ran out
            if select.select([conn], [], [], 1.0)[0]:
                conn.poll()
                for note in conn.notifies:
                    print(f"relay: woken by a commit that sent to {note.payload}", flush=True)
                conn.notifies.clear()
    conn.close()


if __name__ == "__main__":
    main()
