# Who wakes the outbox's relays.
#  - With a worker running, a relay listening on payments_outbox is notified
#    of a sending commit by the worker, never by the sender: senders take no
#    part in PostgreSQL's notification queue, so their commits do not wait
#    for each other's.
#  - A sending transaction can then be prepared for two-phase commit with
#    payments.outbox_notify on, and its message is claimable once committed.
#  - The worker notifies only the topics sent to since its last
#    notification: a topic whose messages nobody claims is not notified
#    again with every pass (which would fill PostgreSQL's notification
#    queue).
#  - A worker that gives its slot to another database while a commit waits
#    for its notification hands it to the next worker of its database.
#  - With payments.worker_enabled off, the sending transaction notifies at
#    its commit instead.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use PaymentsNode;

my $node = payments_node('outbox_notify', conf => qq{
max_prepared_transactions = 2
});
$node->safe_psql('postgres', q{
CREATE EXTENSION payments;
CREATE ROLE shop LOGIN IN ROLE payments_app;
SELECT payments.outbox_grant('orders', 'shop', 'send');
SELECT payments.outbox_grant('refunds', 'shop', 'send');
SELECT payments.outbox_grant('payouts', 'shop', 'send');
SELECT payments.outbox_grant('stale', 'shop', 'send');
});
my $worker = wait_for_worker($node, 'postgres');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Send a message of the topic as shop in a transaction of its own; returns
# the PID of the sending backend.
sub send_as_shop
{
	my ($topic, $key) = @_;
	return sql("SET ROLE shop; SELECT pg_backend_pid()"
		  . " FROM payments.outbox_send('$topic', '$key', '{}') AS id");
}

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN payments_outbox');

# Everything the listener was told, as it is told it: psql prints a
# notification after the statement during which it came.
my $heard = '';

# The PIDs that notified the topic to the listener since the last call,
# once at least one has.
sub notifiers_of
{
	my ($topic) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	my @pids;

	while (!@pids && time() < $deadline)
	{
		my $out = $listener->query_safe('SELECT 1');
		$heard .= $out;
		@pids = $out =~
		  /Asynchronous notification "payments_outbox" with payload "\Q$topic\E" received from server process with PID (\d+)/g;
		usleep(20_000) unless @pids;
	}
	return @pids;
}

# --- the worker notifies, the senders do not ---

my @senders = map { send_as_shop('orders', "k$_") } 1 .. 5;
my @notifiers = notifiers_of('orders');
ok(@notifiers > 0, 'the listening relay is notified of the sending commits');
is_deeply([ grep { $_ != $worker } @notifiers ], [],
	'every notification comes from the worker');
my %sender = map { $_ => 1 } @senders;
is(scalar(grep { $sender{$_} } @notifiers), 0, 'no sender notified');

# --- a topic nobody relays is notified once, not at every pass ---

send_as_shop('stale', 's1');
ok(notifiers_of('stale') > 0, 'a topic sent to is notified');
$heard = '';
send_as_shop('orders', 'k6');
notifiers_of('orders');
unlike($heard, qr/payload "stale"/,
	'the next notification names only the topic sent to since');

# --- a sending transaction can be prepared ---

my ($ret, $stdout, $stderr) = $node->psql('postgres', q{
SET ROLE shop;
BEGIN;
SELECT payments.outbox_send('refunds', 'r1', '{}');
PREPARE TRANSACTION 'send_refund';
});
is($ret, 0, 'a transaction that sent can be prepared with payments.outbox_notify on')
  or diag $stderr;
sql("COMMIT PREPARED 'send_refund'");
is(sql("SELECT count(*) FROM payments.outbox_claim('refunds', 10, '1 minute')"),
	'1', 'its message is claimable once committed');

# --- without a worker, the sender notifies at its commit ---
# (a topic no worker has seen, so that no notification of the worker's can
# be taken for the sender's)

$node->append_conf('postgresql.conf', 'payments.worker_enabled = off');
$node->reload;
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'payments worker')")
  or die 'the worker did not leave';
my $sender = send_as_shop('payouts', 'p1');
@notifiers = notifiers_of('payouts');
is_deeply(\@notifiers, [$sender], 'without a worker the sending transaction notifies');

$listener->quit;
$node->stop;

# --- a worker leaving its slot does not drop a pending notification ---
# One worker for two databases, rounds only every 10 minutes, and a
# notification at most every 3 s: the second send waits for the interval,
# and meanwhile a send in the other database takes the only slot (a
# worker whose database has nothing due leaves when another waits).  The
# listener still hears of the second send; before the fix it waited for
# the database's next round, 10 minutes later.
my $pool = payments_node('outbox_notify_pool', conf => qq{
payments.max_workers = 1
payments.worker_naptime = '10min'
payments.outbox_notify_interval = '3s'
});
$pool->safe_psql('postgres', 'CREATE DATABASE other');
for my $db ('postgres', 'other')
{
	$pool->safe_psql($db, q{
CREATE EXTENSION payments;
SELECT payments.outbox_grant('orders', 'postgres', 'send');
});
}
$listener = $pool->background_psql('postgres');
$listener->query_safe('LISTEN payments_outbox');
$pool->safe_psql('postgres', "SELECT payments.outbox_send('orders', 'p1', '{}')");
ok(notifiers_of('orders') > 0, 'pool: the first send is notified');
$pool->safe_psql('postgres', "SELECT payments.outbox_send('orders', 'p2', '{}')");
$pool->safe_psql('other', "SELECT payments.outbox_send('orders', 'o1', '{}')");
ok(notifiers_of('orders') > 0,
	'pool: the second send is notified, whichever database had the slot');
$listener->quit;
$pool->stop;
done_testing();
