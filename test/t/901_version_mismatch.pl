# A database whose extension is older than the loaded library (a package
# upgrade before ALTER EXTENSION payments UPDATE): calls are refused with a
# hint to update, the worker says so once in the log and does nothing there
# instead of failing every round, and after the update it goes on by itself.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('mismatch');
my $log_offset = -s $node->logfile;

# The released 0.1.0 script still loads with this library.
$node->safe_psql('postgres', "CREATE EXTENSION payments VERSION '0.1.0'");
$node->poll_query_until('postgres',
	'SELECT pid IS NOT NULL FROM payments.worker_status()', 't')
  or die 'no worker';

# Let the worker finish two rounds that began after it was seen running.
for my $round (1 .. 2)
{
	my $since = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
	$node->poll_query_until('postgres',
		"SELECT last_run > '$since' FROM payments.worker_status()", 't')
	  or die "worker round $round did not end";
}

my $other_version =
  qr/extension "payments" version "0\.1\.0" is installed in database "postgres", but the loaded library is version/;
my $log = slurp_file($node->logfile, $log_offset);
my @said = ($log =~ /LOG:  $other_version/g);
is(scalar(@said), 1, 'the worker logs the version mismatch once');
like($log, qr/LOG:  $other_version[^\n]*\n(?:[^\n]*\n)*?[^\n]*HINT:  Run ALTER EXTENSION payments UPDATE\./,
	'with the hint to update');
unlike($log, qr/payments worker task/, 'and runs no task there, so none fails');
is($node->safe_psql('postgres',
		q{SELECT items_done || '/' || items_failed FROM payments.worker_status()}),
	'0/0', 'the worker counts no failed items');

# A call of the API is refused with the hint to update.
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT payments.stock_set('A', 10)");
like($stderr, qr/ERROR:  55000: $other_version/,
	'an API call fails with 55000 while the versions differ');
like($stderr, qr/HINT:  Run ALTER EXTENSION payments UPDATE\./, 'and says how to fix it');

# The 0.1.0 signature of complete_compensation has no claim token.
($ret, $stdout, $stderr) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT payments.complete_compensation(1)");
like($stderr, qr/ERROR:  0A000: function payments\.complete_compensation\(bigint\) is no longer supported/,
	'the retired complete_compensation(bigint) fails with 0A000');

# After the update the worker does its work there by itself.
$node->safe_psql('postgres', 'ALTER EXTENSION payments UPDATE');
$node->safe_psql('postgres', q{
	SELECT payments.stock_set('A', 10);
	SELECT payments.reserve('order-1', 'A', 3, '1 hour');
	UPDATE payments.reservations SET expires_at = now() - interval '1 second'
	 WHERE order_ref = 'order-1';
});
ok( $node->poll_query_until('postgres',
		"SELECT state FROM payments.reservations WHERE order_ref = 'order-1'",
		'expired'),
	'after ALTER EXTENSION UPDATE the worker expires a hold whose TTL ran out');
is($node->safe_psql('postgres',
		"SELECT on_hand || '/' || held || '/' || available FROM payments.stock_levels WHERE sku = 'A'"),
	'10/0/10', 'and its stock is available again');
is($node->safe_psql('postgres', 'SELECT items_failed FROM payments.worker_status()'),
	'0', 'no worker item failed');

$log = slurp_file($node->logfile, $log_offset);
@said = ($log =~ /LOG:  $other_version/g);
is(scalar(@said), 1, 'the mismatch was logged once in all');

done_testing();
