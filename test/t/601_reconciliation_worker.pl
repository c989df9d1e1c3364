# Reconciliation healed by the real worker.  An application role
# reconciles a day's statement against its orders: the provider captured a
# payment that the order still shows pending (status_mismatch: the heal
# moves the order to paid through the state guard) and charged another
# twice (duplicate_external: the heal records a refund).  The worker runs
# both heals once, as that role; the payment heal fails while the gateway is
# down, is retried, and shows as "healing" in payments.reconciliation_open
# until it succeeds, then leaves it.  A re-run of the statement finds the
# order matched and queues nothing.  A heal that always fails ends dead and
# shows as "heal_failed" until a person accepts the difference.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('main', conf => qq{
payments.backoff_base = 10ms
payments.backoff_max = 100ms
});

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
CREATE EXTENSION payments;
CREATE ROLE shop_app LOGIN;
GRANT payments_app TO shop_app;
CREATE SCHEMA shop AUTHORIZATION shop_app;
SELECT payments.define_state_machine('shop_order', jsonb_build_object(
    'pending', jsonb_build_array('paid', 'failed'),
    'paid', jsonb_build_array('refunded')));
});

# Everything below the extension is the application's, made by its role.
$node->safe_psql('shop', q{
CREATE TABLE shop.orders (
    ref        text PRIMARY KEY,
    amount     bigint NOT NULL,
    currency   char(3) NOT NULL,
    status     text NOT NULL,
    created_at timestamptz NOT NULL
);
SELECT payments.guard_state('shop.orders', 'status', 'shop_order');
INSERT INTO shop.orders VALUES
    ('o-1', 1000, 'EUR', 'pending', '2026-11-01 09:00+00'),
    ('o-2', 2000, 'EUR', 'pending', '2026-11-01 10:00+00'),
    ('o-3', 3000, 'EUR', 'pending', '2026-11-01 11:00+00'),
    ('o-4', 4000, 'EUR', 'pending', '2026-11-01 12:00+00'),
    ('o-5', 5000, 'EUR', 'pending', '2026-11-02 09:00+00');
-- o-2 stays pending: its callback never came.
UPDATE shop.orders SET status = 'paid' WHERE ref <> 'o-2';
CREATE TABLE shop.refunds (external_id text, payment_ref text, amount bigint);
-- Whether the payment gateway answers: the payment heal fails until the
-- test opens it, so that it is seen failing and retried whatever the
-- worker's speed.
CREATE TABLE shop.gateway (up boolean NOT NULL);
INSERT INTO shop.gateway VALUES (false);

-- Heals, each called with the difference as payload.  Handlers run with
-- an empty search_path, so every name is qualified.
CREATE FUNCTION shop.mark_paid(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (SELECT up FROM shop.gateway) THEN
        RAISE EXCEPTION 'gateway timeout' USING ERRCODE = '08006';
    END IF;
    UPDATE shop.orders SET status = 'paid'
     WHERE ref = p ->> 'payment_ref' AND status = 'pending';
END $$;
CREATE FUNCTION shop.refund_duplicate(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO shop.refunds
    VALUES (p ->> 'external_id', p ->> 'payment_ref', (p ->> 'external_amount')::bigint)
$$;
CREATE FUNCTION shop.adjust_amount(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the provider has no adjustment for %', p ->> 'payment_ref'
        USING ERRCODE = '22023';
END $$;

SELECT payments.define_reconciliation('psp', 'shop.orders', 'ref', 'amount', 'status',
    'created_at', currency_col => 'currency',
    status_map => '{"internal": {"pending": "pending", "paid": "succeeded", "refunded": "refunded"},
                    "external": {"SUCCESS": "succeeded", "REFUND": "refunded"}}');
SELECT payments.reconciliation_policy('psp', 'status_mismatch', 'shop.mark_paid(jsonb)');
SELECT payments.reconciliation_policy('psp', 'duplicate_external', 'shop.refund_duplicate(jsonb)');
}, extra_params => [ '-U', 'shop_app' ]);

wait_for_worker($node, 'shop');

sub app
{
	my ($sql) = @_;
	return $node->safe_psql('shop', $sql, extra_params => [ '-U', 'shop_app' ]);
}

# The extension's tables, which the application role cannot read, are
# read as the superuser.
sub db
{
	my ($sql) = @_;
	return $node->safe_psql('shop', $sql);
}

# The differences that payments.reconciliation_open shows, as
# class:reference:state, sorted.
sub open_items
{
	return app(
		q{SELECT coalesce(string_agg(class || ':' || reference || ':' || state, ' '
		                             ORDER BY class, reference), '')
		    FROM payments.reconciliation_open});
}

# The compensations queued by the reconciliation's heals, per class, as
# class:reference:status.
sub heals
{
	return db(
		q{SELECT string_agg(payload ->> 'class' || ':' || (payload ->> 'reference') || ':' || status,
		                    ' ' ORDER BY payload ->> 'class', payload ->> 'reference')
		    FROM payments.compensations WHERE payload ? 'reconciliation'});
}

sub wait_heal
{
	my ($class, $ref, $condition, $what) = @_;
	$node->poll_query_until('shop',
		"SELECT $condition FROM payments.compensations"
		  . " WHERE payload ->> 'class' = '$class' AND payload ->> 'reference' = '$ref'")
	  or die "the heal of $class $ref did not become $what: " . heals();
}

# --- the day's statement, loaded by COPY as the provider's file is ---

# o-1 matches; o-2 was captured but is pending with us; o-3 was charged
# twice; o-4 was charged 100 more than we asked (no policy yet).
my $day1 = app(q{
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'psp-2026-11-01.csv', 5, 13100) AS id \gset
SET payments.statement_id = :id;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin;
t-1	o-1	1000	EUR	SUCCESS	2026-11-01 09:00:05+00
t-2	o-2	2000	EUR	SUCCESS	2026-11-01 10:00:05+00
t-3	o-3	3000	EUR	SUCCESS	2026-11-01 11:00:05+00
t-3b	o-3	3000	EUR	SUCCESS	2026-11-01 11:00:09+00
t-4	o-4	4100	EUR	SUCCESS	2026-11-01 12:00:05+00
\.
SELECT payments.statement_close(:id) \gset
SELECT :id;
});

# A high attempt budget for these heals: the payment heal must still be
# retrying, not dead, when the test opens the gateway.
my $run1 = app(qq{
SET payments.max_attempts = 1000;
SELECT payments.reconcile('psp', $day1);
});
is( db(qq{SELECT differences || ' ' || heals_queued FROM payments.reconciliation_runs WHERE id = $run1}),
	'3 2', 'the run finds three differences and queues the heals of the two that have a policy');
is( db(
		q{SELECT string_agg(DISTINCT enqueued_by::text, ',') FROM payments.compensations
		   WHERE payload ? 'reconciliation'}),
	'shop_app', 'queued as the role that ran reconcile, whose rights the heals run with');

# --- the worker runs the heals ---

wait_heal('duplicate_external', 'o-3', q{status = 'succeeded'}, 'succeeded');
is( app(q{SELECT string_agg(external_id || ':' || payment_ref || ':' || amount, ',') FROM shop.refunds}),
	't-3b:o-3:3000', 'the double charge is refunded once: the second line, its amount');

wait_heal('status_mismatch', 'o-2', q{attempts >= 1}, 'attempted');
is( app(q{SELECT status FROM shop.orders WHERE ref = 'o-2'}),
	'pending', 'while the gateway is down the payment heal fails and the order stays pending');
is(heals(), 'duplicate_external:o-3:succeeded status_mismatch:o-2:pending',
	'the failed heal is pending again for its retry');
is( open_items(),
	'amount_mismatch:o-4:open status_mismatch:o-2:healing',
	'reconciliation_open: the payment being healed, the amount difference open, the refunded charge gone');

app(q{UPDATE shop.gateway SET up = true});
wait_heal('status_mismatch', 'o-2', q{status = 'succeeded'}, 'succeeded');
is(app(q{SELECT status FROM shop.orders WHERE ref = 'o-2'}), 'paid',
	'once the gateway answers, the retried heal moves the order to paid');
is( db(
		q{SELECT count(*) || ' ' || string_agg(DISTINCT changed_by::text, ',') FROM payments.state_history
		   WHERE tbl = 'shop.orders'::regclass AND row_key = 'o-2' AND to_state = 'paid'}),
	'1 shop_app', 'through the state guard, once, as the application role');
is( db(
		q{SELECT count(*) > 0 AND bool_and(a.sqlstate = '08006' AND a.error = 'gateway timeout')
		         AND max(a.attempt) = max(c.attempts) - 1
		    FROM payments.compensation_attempts a JOIN payments.compensations c ON c.id = a.compensation_id
		   WHERE c.payload ->> 'class' = 'status_mismatch'}),
	't', 'each failed attempt is recorded with its error, and the last attempt succeeded');
is(open_items(), 'amount_mismatch:o-4:open',
	'the healed difference leaves reconciliation_open');

# --- a re-run finds the order matched and queues nothing ---

my $run2 = app(qq{SELECT payments.reconcile('psp', $day1)});
is( db(
		qq{SELECT string_agg(class || ':' || reference, ' ' ORDER BY class, reference) || ' / ' || heals_queued
		     FROM payments.reconciliation_items i JOIN payments.reconciliation_runs r ON r.id = i.run_id
		    WHERE r.id = $run2 GROUP BY heals_queued}),
	'amount_mismatch:o-4 duplicate_external:o-3 / 0',
	'a re-run: o-2 matched now, the double charge still on the file, nothing queued');
is(heals(), 'duplicate_external:o-3:succeeded status_mismatch:o-2:succeeded',
	'no second heal of either difference');
is( db(qq{SELECT superseded_by = $run2 FROM payments.reconciliation_runs WHERE id = $run1}),
	't', 'the first run is superseded by the re-run');
is( app(
		qq{SELECT string_agg(class || ':' || count || ':' || amount, ' ' ORDER BY class)
		     FROM payments.reconciliation_summary WHERE statement_id = $day1 AND latest}),
	'amount_mismatch:1:4100 duplicate_external:1:3000 matched:3:6000',
	'reconciliation_summary shows the application the latest run: o-2 among the matched lines');

# --- a heal that always fails ends dead: heal_failed, until accepted ---

app(q{SELECT payments.reconciliation_policy('psp', 'amount_mismatch', 'shop.adjust_amount(jsonb)')});
my $run3 = app(qq{
SET payments.max_attempts = 2;
SELECT payments.reconcile('psp', $day1);
});
is(db(qq{SELECT heals_queued FROM payments.reconciliation_runs WHERE id = $run3}),
	'1', 'with a policy for amounts, the next run queues that heal only');
wait_heal('amount_mismatch', 'o-4', q{status = 'dead'}, 'dead');
is( db(
		q{SELECT string_agg(a.attempt || ':' || a.sqlstate, ',' ORDER BY a.attempt)
		    FROM payments.compensation_attempts a JOIN payments.compensations c ON c.id = a.compensation_id
		   WHERE c.payload ->> 'class' = 'amount_mismatch'}),
	'1:22023,2:22023', 'the heal that always fails is dead after its two attempts');
is(open_items(), 'amount_mismatch:o-4:heal_failed',
	'reconciliation_open shows it as heal_failed');

app(q{SELECT payments.accept_difference(item_id, 'fee of the provider, booked by finance')
        FROM payments.reconciliation_open WHERE reference = 'o-4'});
is(open_items(), '', 'accepted by a person, it leaves reconciliation_open');
is( db(q{SELECT accepted_by || ': ' || note FROM payments.reconciliation_heals
           WHERE class = 'amount_mismatch' AND reference = 'o-4'}),
	'shop_app: fee of the provider, booked by finance', 'the decision is recorded with who made it');
my $run4 = app(qq{SELECT payments.reconcile('psp', $day1)});
is( db(qq{SELECT heals_queued FROM payments.reconciliation_runs WHERE id = $run4}) . ' / ' . open_items(),
	'0 / ', 'a later run queues nothing for it and does not reopen it');
is(db(q{SELECT count(*) FROM payments.compensations WHERE payload ? 'reconciliation'}),
	'3', 'three heals in all, one per difference');
is(app(q{SELECT count(*) FROM shop.refunds}), '1', 'and still one refund');

# --- a payment charged three times ---

my $day2 = app(q{
SELECT payments.statement_begin('psp', '[2026-11-02, 2026-11-03)', 'psp-2026-11-02.csv', 3, 15000) AS id \gset
SET payments.statement_id = :id;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin;
u-5	o-5	5000	EUR	SUCCESS	2026-11-02 09:00:05+00
u-5b	o-5	5000	EUR	SUCCESS	2026-11-02 09:00:07+00
u-5c	o-5	5000	EUR	SUCCESS	2026-11-02 09:00:09+00
\.
SELECT payments.statement_close(:id) \gset
SELECT :id;
});
app(qq{SELECT payments.reconcile('psp', $day2)});
$node->poll_query_until('shop',
	q{SELECT count(*) = 0 FROM payments.compensations
	   WHERE payload ->> 'reference' = 'o-5' AND status NOT IN ('succeeded', 'dead')})
  or die 'the heals of o-5 did not finish: ' . heals();
is( app(q{SELECT string_agg(external_id, ',' ORDER BY external_id) FROM shop.refunds
           WHERE payment_ref = 'o-5'}),
	'u-5b,u-5c', 'each of the two extra charges is refunded, once');
is(app(q{SELECT count(*) FROM payments.reconciliation_open WHERE reference = 'o-5'}),
	'0', 'and neither is left open');

$node->stop;
done_testing();
