#!/usr/bin/python3
"""One relay of the outbox workload; run.sh starts RELAYS of them per run.

    relay.py SIDE RUN RELAY BATCH LEASE WAIT POLL_MS LOGFILE

A loop, as a relay to a broker runs: claim up to BATCH messages of topic
'orders' in one transaction; deliver them (here: a line of the log with
the message's id, key and claim time and the relay's clock, in claim
order); acknowledge the batch in one more transaction, in one statement.

  SIDE ext   payments.outbox_claim, then payments.outbox_ack_batch of the
             batch's ids
  SIDE base  the plain table's claim, UPDATE ... WHERE id = ANY (ARRAY(
             SELECT ... ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED)), then
             one UPDATE of the batch's rows
  SIDE notexists  per-key order as plain SQL keeps it most simply: the
             base claim, skipping a message while an earlier one of its key
             is unacknowledged (NOT EXISTS on an index of key and id); the
             base ack
  SIDE ready  the extension's way in plain SQL (fresh_ready.sql): the base
             claim of messages marked ready only; public.base_ack() of the
             batch, which marks the next message of each key ready

The statements are prepared once per session.  A claim that returns a full batch is
followed at once by the next; a shorter or empty one (the relay has caught
up) by a wait: WAIT poll sleeps POLL_MS; WAIT listen blocks on LISTEN
payments_outbox until a notification, at most POLL_MS (an ack notifies
nobody, so a relay whose claim was empty only because every claimable key
was in flight with another relay needs the timeout).

An empty claim, and a busy relay once a second, reads public.bench_ctl.stop,
which run.sh sets once every message is acknowledged, or when it cuts a
run off; then it also cancels the statement each relay is in.
Should a lease run out and another relay take the message, the ack of the
first is refused (PM802 on the extension's side, a row not updated on the
baselines'): it acknowledges the rest of its batch one by one and counts
the conflict.  The log, and a line "claims empty_claims deliveries
conflicts" in LOGFILE.claims, are written at the end, outside the timed
part.  Connection from PGHOST/PGPORT/PGDATABASE as bench_outbox_relay.
"""
import random
import select
import sys
import time

import psycopg2
import psycopg2.errors

side, run, relay, batch, lease, wait, poll_ms, logfile = sys.argv[1:9]
batch = int(batch)
poll = int(poll_ms) / 1000.0

conn = psycopg2.connect("", user="bench_outbox_relay",
                        application_name="bench_outbox_relay_" + run)
conn.autocommit = True
cur = conn.cursor()

if side == "ext":
    # lease_expires_at is the claim's clock_timestamp() + lease, per row
    cur.execute("""PREPARE claim(integer, interval) AS
        SELECT id, key, claim_token, (lease_expires_at - $2)::text
          FROM payments.outbox_claim('orders', $1, $2)""")
    cur.execute("""PREPARE ack(bigint[], bigint) AS
        SELECT payments.outbox_ack_batch($1, $2)""")
else:
    # how each ordered side keeps a message back while an earlier one of
    # its key is unacknowledged (in flight, or pending behind one)
    key_order = {
        "base": "",
        "notexists": """
                  AND NOT EXISTS (SELECT FROM public.base_outbox e
                                   WHERE e.topic = m.topic AND e.key = m.key
                                     AND e.acked_at IS NULL AND e.id < m.id)""",
        "ready": """
                  AND m.ready""",
    }[side]
    cur.execute("""PREPARE claim(integer, interval, bigint) AS
        UPDATE public.base_outbox o
           SET status = 'in_flight', attempts = o.attempts + 1,
               claim_token = $3,
               claimed_at = clock_timestamp(), lease_expires_at = clock_timestamp() + $2
         WHERE o.id = ANY (ARRAY(
               SELECT m.id FROM public.base_outbox m
                WHERE m.topic = 'orders' AND m.acked_at IS NULL
                  AND (m.status = 'pending'
                       OR (m.status = 'in_flight' AND m.lease_expires_at < clock_timestamp()))%s
                ORDER BY m.id LIMIT $1
                  FOR UPDATE SKIP LOCKED))
        RETURNING o.id, o.key, o.claim_token, o.claimed_at::text"""
                % key_order)
    if side == "ready":
        cur.execute("""PREPARE ack(bigint[], bigint) AS
            SELECT public.base_ack($1, $2)""")
    else:
        cur.execute("""PREPARE ack(bigint[], bigint) AS
            UPDATE public.base_outbox
               SET status = 'acked', acked_at = clock_timestamp(), lease_expires_at = NULL
             WHERE id = ANY ($1) AND claim_token = $2 AND status = 'in_flight'""")
if wait == "listen":
    cur.execute("LISTEN payments_outbox")

log = []
claims = empty = conflicts = 0


def ack(ids, token):
    global conflicts
    if side == "ready":
        cur.execute("EXECUTE ack(%s, %s)", (ids, token))
        conflicts += len(ids) - cur.fetchone()[0]
        return
    if side != "ext":
        cur.execute("EXECUTE ack(%s, %s)", (ids, token))
        conflicts += len(ids) - cur.rowcount
        return
    try:
        cur.execute("EXECUTE ack(%s, %s)", (ids, token))
    except psycopg2.Error as e:
        if e.pgcode != "PM802":
            raise
        for mid in ids:
            try:
                cur.execute("EXECUTE ack(%s, %s)", ([mid], token))
            except psycopg2.Error as e1:
                if e1.pgcode != "PM802":
                    raise
                conflicts += 1


def wait_for_work():
    if wait == "listen":
        # a notification that came with an earlier answer: no wait
        if conn.notifies:
            del conn.notifies[:]
            return
        if select.select([conn], [], [], poll)[0]:
            conn.poll()
        del conn.notifies[:]
    else:
        time.sleep(poll)


def stop():
    cur.execute("SELECT stop FROM public.bench_ctl")
    return cur.fetchone()[0]


next_check = time.monotonic() + 1
try:
    while True:
        if time.monotonic() >= next_check:
            if stop():
                break
            next_check = time.monotonic() + 1
        claims += 1
        if side == "ext":
            cur.execute("EXECUTE claim(%s, %s)", (batch, lease))
        else:
            cur.execute("EXECUTE claim(%s, %s, %s)", (batch, lease, random.getrandbits(63)))
        rows = cur.fetchall()
        if not rows:
            empty += 1
            if stop():
                break
            wait_for_work()
            continue
        for mid, key, token, claimed_at in rows:
            # the delivery
            log.append("%s\t%s\t%d\t%s\t%s\t%d\n"
                       % (run, relay, mid, key, claimed_at, time.time_ns()))
        ack([r[0] for r in rows], rows[0][2])
        if len(rows) < batch:
            wait_for_work()
except psycopg2.errors.QueryCanceled:
    pass        # only run.sh cancels, once it has set stop

with open(logfile, "w") as f:
    f.writelines(log)
with open(logfile + ".claims", "w") as f:
    f.write("%d %d %d %d\n" % (claims, empty, len(log), conflicts))
