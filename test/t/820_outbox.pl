# The outbox and the inbox against what kills processes, and a randomized
# history of several relays.
#  - The worker purges acknowledged messages after payments.outbox_retention
#    and inbox ids after their retain period; unsettled messages stay.
#  - A relay killed (kill -9 of its client) after its claim committed and
#    before its ack did: the message stays in flight, the later messages of
#    its key wait, and once the lease runs out another relay gets it, counted
#    as another attempt; the dead relay's token acknowledges nothing.
#  - A relay's backend killed with kill -9 mid-transaction (the server
#    restarts): its uncommitted claim and acks are gone, nothing is lost.
#  - An immediate shutdown: every committed message comes back with its
#    message id, an uncommitted one never appears.
#  - Randomized: senders (some transactions rolled back) and three relays
#    that claim with short or long leases and ack (one by one or the whole
#    claim at once), nack or drop what they claimed, with relays killed
#    along the way and one crash restart.  In
#    the end every committed message is acknowledged exactly once, in send
#    order per key, and no message of a rolled-back transaction is seen.
# The seed is printed; OUTBOX_SEED=<seed> replays a history.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $seed = $ENV{OUTBOX_SEED} // (time() ^ $$);
srand($seed);
note "OUTBOX_SEED=$seed";

my $node = payments_node('outbox', conf => qq{
payments.outbox_retention = 1s
});
$node->safe_psql('postgres', q{
CREATE EXTENSION payments;
CREATE ROLE shop LOGIN IN ROLE payments_app;
CREATE ROLE relay LOGIN IN ROLE payments_app;
CREATE ROLE consumer LOGIN IN ROLE payments_app;
SELECT payments.outbox_grant('orders', 'shop', 'send');
SELECT payments.outbox_grant('orders', 'relay', 'relay');
-- the relays' record of what they acknowledged, written in the ack's
-- transaction
CREATE TABLE ack_log (seq bigserial, id bigint, key text);
GRANT INSERT ON ack_log TO relay;
GRANT USAGE ON SEQUENCE ack_log_seq_seq TO relay;
});
wait_for_worker($node, 'postgres');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub send_sql
{
	my ($key, $event) = @_;
	return "SET ROLE shop; SELECT payments.outbox_send('orders', '$key', "
	  . "jsonb_build_object('event', '$event'))";
}

# A relay: a session of role relay with quick retries.
sub relay_session
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe("SET ROLE relay");
	$s->query_safe("SET payments.backoff_base = '1ms'");
	$s->query_safe("SET payments.backoff_max = '20ms'");
	return $s;
}

# Claim as a relay: a list of [id, key, token].
sub claim
{
	my ($s, $max, $lease) = @_;
	my $out = $s->query_safe(
		"SELECT id || ' ' || key || ' ' || claim_token FROM payments.outbox_claim('orders', $max, '$lease')");
	return map { [ split / / ] } grep { $_ ne '' } split /\n/, $out;
}

# Kill the relay's client process, as kill -9 of the relay would.
sub kill_client
{
	my ($s) = @_;
	$s->{run}->signal('KILL');
	eval { $s->{run}->finish; };
}

# --- the worker purges settled messages and expired inbox ids ---

my $m1 = sql(send_sql('k1', 'paid'));
my $m2 = sql(send_sql('k1', 'shipped'));
my $m3 = sql(send_sql('k1', 'delivered'));
my $r = relay_session();
my @c = claim($r, 10, '1 hour');
is(scalar(@c), 1, 'one message of key k1 is handed out');
is($c[0][0], $m1, 'the first one');
$r->query_safe("SELECT payments.outbox_ack($m1, $c[0][2])");
sql("SET ROLE consumer; SELECT payments.inbox_receive('shop', 'x-1', '1 second')");
sql("SET ROLE consumer; SELECT payments.inbox_receive('shop', 'x-2', '1 day')");
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM payments.outbox WHERE id = $m1)"
	. " AND NOT EXISTS (SELECT FROM payments.inbox WHERE message_id = 'x-1')")
  or die 'the worker did not purge';
pass('the worker purged the acknowledged message and the expired inbox id');
is(sql("SELECT string_agg(status, ',' ORDER BY id) FROM payments.outbox"),
	'pending,pending', 'unsettled messages stay');
is(sql("SELECT message_id FROM payments.inbox"), 'x-2', 'an inbox id within its retain period stays');

# --- kill -9 of a relay after its claim, before its ack ---

@c = claim($r, 10, '3 seconds');
is($c[0][0], $m2, 'the relay claims the next message');
my $lost_token = $c[0][2];
$r->query_safe('BEGIN');
$r->query_safe("SELECT payments.outbox_ack($m2, $lost_token)");
my $relay_pid = $r->query_safe('SELECT pg_backend_pid()');
kill_client($r);
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $relay_pid)")
  or die 'the killed relay\'s backend did not exit';
is(sql("SELECT status || ':' || attempts || ':' || (claim_token = $lost_token) FROM payments.outbox WHERE id = $m2"),
	'in_flight:1:true', 'killed relay: its ack is gone, its claim holds the message');

$r = relay_session();
$node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM payments.outbox_claim('orders', 10, '1 hour') WHERE id = $m2")
  or die 'the message was not handed out again';
is(sql("SELECT status || ':' || attempts || ':' || last_error FROM payments.outbox WHERE id = $m2"),
	'in_flight:2:The lease of its claim ran out.',
	'after the lease, another relay gets the message, as a second attempt');
is(sql("SELECT count(*) FROM payments.outbox WHERE id = $m3 AND status = 'pending'"),
	'1', 'the later message of the key still waits');
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SET ROLE relay; SELECT payments.outbox_ack($m2, $lost_token)");
like($stderr, qr/cannot acknowledge outbox message/, 'the killed relay\'s token acknowledges nothing');
my $token = sql("SELECT claim_token FROM payments.outbox WHERE id = $m2");
sql("SET ROLE relay; SELECT payments.outbox_ack($m2, $token)");
@c = claim($r, 10, '1 hour');
is($c[0][0], $m3, 'then the next message of the key is handed out');

# --- kill -9 of a relay's backend mid-transaction: crash restart ---

$r->query_safe("SELECT payments.outbox_nack($m3, $c[0][2], 'broker down')");
my $m4 = sql(send_sql('k2', 'paid'));
$node->poll_query_until('postgres',
	"SELECT count(*) = 2 FROM payments.outbox WHERE status = 'pending' AND next_attempt_at <= now()")
  or die 'the nacked message did not become due';
my $before = sql("SELECT string_agg(id || status || attempts, ',' ORDER BY id) FROM payments.outbox WHERE settled_at IS NULL");
$r->query_safe('BEGIN');
@c = claim($r, 10, '1 hour');
is(scalar(@c), 2, 'the relay claims both keys\' messages in an open transaction');
$r->query_safe("SELECT payments.outbox_ack($_->[0], $_->[2])") for @c;
$relay_pid = $r->query_safe('SELECT pg_backend_pid()');
kill 'KILL', $relay_pid or die "could not kill backend $relay_pid";
eval { $r->quit; };
$node->poll_query_until('postgres', 'SELECT 1', '1')
  or die 'server did not come back after the crash';
ok($node->log_contains(qr/terminated by signal 9/), 'the relay\'s backend was killed and the server restarted');
is(sql("SELECT string_agg(id || status || attempts, ',' ORDER BY id) FROM payments.outbox WHERE settled_at IS NULL"),
	$before, 'kill -9: the uncommitted claim and acks are gone, every message is as it was');

# --- immediate shutdown ---

sql("SELECT payments.outbox_send('orders', 'k' || (i % 7), jsonb_build_object('n', i)) FROM generate_series(1, 50) i");
my $ids_before = sql("SELECT md5(string_agg(id || message_id::text || status, ',' ORDER BY id)) FROM payments.outbox WHERE settled_at IS NULL");
my $open = $node->background_psql('postgres', on_error_stop => 0);
$open->query_safe('BEGIN');
$open->query_safe(send_sql('k9', 'uncommitted'));
$node->stop('immediate');
eval { $open->quit; };
$node->start;
is(sql("SELECT md5(string_agg(id || message_id::text || status, ',' ORDER BY id)) FROM payments.outbox WHERE settled_at IS NULL"),
	$ids_before, 'immediate shutdown: every committed message is back with its message id');
is(sql("SELECT count(*) FROM payments.outbox WHERE payload->>'event' = 'uncommitted'"),
	'0', 'immediate shutdown: the uncommitted message never appears');

# Start the randomized history from an empty outbox.
sql("UPDATE payments.outbox SET status = 'acked', settled_at = now() WHERE settled_at IS NULL");
sql("TRUNCATE ack_log");
wait_for_worker($node, 'postgres');

# --- a randomized history ---

my $keys = 6;
my $batches = 100;
my @relays = map { relay_session() } 1 .. 3;
# Senders give their messages attempts enough never to go dead.
sub sender_session
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	$s->query_safe('SET ROLE shop');
	$s->query_safe('SET payments.max_attempts = 1000');
	return $s;
}
my @senders = map { sender_session() } 1 .. 2;
my ($sent, $rolled_back, $kills, $crashed, $steps) = (0, 0, 0, 0, 0);
my %held;    # relay index -> list of [id, key, token] it holds

sub sender_step
{
	my $s = $senders[ int(rand(@senders)) ];
	my $n = 1 + int(rand(4));
	my $rollback = rand() < 0.2;
	my $flag = $rollback ? 'true' : 'false';
	$s->query_safe('BEGIN');
	for (1 .. $n)
	{
		my $k = 'r' . int(rand($keys));
		$s->query_safe("SELECT payments.outbox_send('orders', '$k', "
			  . "jsonb_build_object('rolled_back', $flag))");
	}
	$s->query_safe($rollback ? 'ROLLBACK' : 'COMMIT');
	$rollback ? ($rolled_back += $n) : ($sent += $n);
}

sub relay_step
{
	my $i = int(rand(@relays));
	my $s = $relays[$i];
	my $long = rand() < 0.7;
	my @got = claim($s, 1 + int(rand(4)), $long ? '1 minute' : '50 milliseconds');
	if (@got && rand() < 0.3)
	{
		# the whole claim acknowledged in one call, and recorded, in one
		# transaction; refused as a whole if a lease ran out meanwhile
		my $ids = join(',', map { $_->[0] } @got);
		$s->query_safe('BEGIN');
		$s->query("SELECT payments.outbox_ack_batch(ARRAY[$ids]::bigint[], $got[0][2])");
		$s->query("INSERT INTO ack_log (id, key) VALUES ($_->[0], '$_->[1]')") for @got;
		$s->query_safe('COMMIT');
		return;
	}
	for my $m (@got)
	{
		my $x = rand();
		if ($x < 0.65)
		{
			# ack, and record it, in one transaction; refused if the lease
			# ran out and another relay took the message
			$s->query_safe('BEGIN');
			$s->query("SELECT payments.outbox_ack($m->[0], $m->[2])");
			$s->query("INSERT INTO ack_log (id, key) VALUES ($m->[0], '$m->[1]')");
			$s->query_safe('COMMIT');
		}
		elsif ($x < 0.85 || $long)
		{
			$s->query("SELECT payments.outbox_nack($m->[0], $m->[2], 'random failure')");
		}
		# else: dropped, its short lease runs out
	}
}

while (1)
{
	$steps++;
	die "no end after $steps steps" if $steps > 20000;
	if ($batches > 0 && rand() < 0.3)
	{
		sender_step();
		$batches--;
	}
	elsif (rand() < 0.04)
	{
		# a relay dies in the middle of acking what it claimed
		my $i = int(rand(@relays));
		my @got = claim($relays[$i], 2, '100 milliseconds');
		$relays[$i]->query_safe('BEGIN');
		$relays[$i]->query("SELECT payments.outbox_ack($_->[0], $_->[2])") for @got;
		kill_client($relays[$i]);
		$relays[$i] = relay_session();
		$kills++;
	}
	elsif (!$crashed && $batches < 50)
	{
		# once: kill -9 of a relay's backend, and the crash restart
		my $pid = $relays[0]->query_safe('SELECT pg_backend_pid()');
		$relays[0]->query_safe('BEGIN');
		claim($relays[0], 3, '1 minute');
		kill 'KILL', $pid;
		eval { $_->quit; } for @relays, @senders;
		$node->poll_query_until('postgres', 'SELECT 1', '1')
		  or die 'server did not come back after the crash';
		@relays = map { relay_session() } 1 .. 3;
		@senders = map { sender_session() } 1 .. 2;
		$crashed = 1;
	}
	else
	{
		relay_step();
	}
	last
	  if $batches == 0
	  && $steps % 10 == 0
	  && sql("SELECT count(*) FROM payments.outbox WHERE settled_at IS NULL") eq '0';
}
note "steps $steps, messages sent $sent, rolled back $rolled_back, relays killed $kills";

is(sql("SELECT count(*) FROM ack_log"), $sent, 'every committed message was acknowledged once');
is(sql("SELECT count(DISTINCT id) FROM ack_log"), $sent, 'no message was acknowledged twice');
is( sql("SELECT count(*) FROM payments.outbox o WHERE settled_at IS NOT NULL AND status = 'acked'"
		  . " AND NOT EXISTS (SELECT FROM ack_log a WHERE a.id = o.id) AND key LIKE 'r%'"),
	'0', 'every acknowledged message is in the relays\' record');
is( sql(q{SELECT count(*) FROM (SELECT key, array_agg(id ORDER BY seq) AS by_ack,
                                         array_agg(id ORDER BY id) AS by_send
                                    FROM ack_log GROUP BY key) k
           WHERE by_ack <> by_send}),
	'0', 'per key, messages were acknowledged in send order');
is(sql("SELECT count(*) FROM payments.outbox WHERE payload->>'rolled_back' = 'true'"),
	'0', 'no message of a rolled-back transaction was ever seen');
ok($crashed && $node->log_contains(qr/terminated by signal 9/), 'the history went through a crash restart');

done_testing();
