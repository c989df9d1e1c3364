# The worker's purge of the TCC fence keeps every live row: it deletes the
# branches that finished (confirmed, cancelled, suspended) longer than
# payments.tcc_fence_retention ago, and keeps a branch still tried however
# old, a branch that finished within the retention, and a branch tried long
# ago but finished recently.  Rows are aged by hand (as a superuser), and
# the test waits until the real worker has purged the old finished ones.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('tcc_purge');
$node->safe_psql('postgres', q{
CREATE EXTENSION payments;
CREATE ROLE tcc_app LOGIN;
GRANT payments_app TO tcc_app;
});

$node->safe_psql('postgres', q{
SET ROLE tcc_app;
-- old and finished: purged
SELECT payments.tcc_try('old-confirmed', 'b'), payments.tcc_confirm('old-confirmed', 'b');
SELECT payments.tcc_try('old-cancelled', 'b'), payments.tcc_cancel('old-cancelled', 'b');
SELECT payments.tcc_cancel('old-suspended', 'b');
-- kept: still tried, however old
SELECT payments.tcc_try('old-tried', 'b');
-- kept: tried long ago, finished recently
SELECT payments.tcc_try('old-try-new-confirm', 'b'), payments.tcc_confirm('old-try-new-confirm', 'b');
SELECT payments.tcc_try('old-try-new-cancel', 'b'), payments.tcc_cancel('old-try-new-cancel', 'b');
-- kept: finished within the retention
SELECT payments.tcc_try('new-confirmed', 'b'), payments.tcc_confirm('new-confirmed', 'b');
SELECT payments.tcc_cancel('new-suspended', 'b');
RESET ROLE;
UPDATE payments.tcc_fence
   SET created_at = now() - interval '8 days', updated_at = now() - interval '8 days'
 WHERE gid IN ('old-confirmed', 'old-cancelled', 'old-suspended', 'old-tried');
UPDATE payments.tcc_fence
   SET created_at = now() - interval '8 days', updated_at = now() - interval '1 hour'
 WHERE gid IN ('old-try-new-confirm', 'old-try-new-cancel');
});

ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM payments.tcc_fence
		   WHERE gid IN ('old-confirmed', 'old-cancelled', 'old-suspended')}),
	'the worker purged the branches that finished longer than the retention ago');

is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(gid || ':' || state, ' ' ORDER BY gid) FROM payments.tcc_fence}),
	'new-confirmed:confirmed new-suspended:suspended old-tried:tried '
	  . 'old-try-new-cancel:cancelled old-try-new-confirm:confirmed',
	'every live row is kept: tried however old, finished within the retention, tried long ago and finished recently'
);

# A kept marker still suspends a late Try.
is( $node->safe_psql(
		'postgres', q{SET ROLE tcc_app;
SELECT payments.tcc_try('new-suspended', 'b')}),
	'suspended',
	'a Try whose Cancel marker is within the retention is suspended');

done_testing();
