# A randomized history of TCC branches against the fence.  Several sessions
# run, at once, a shuffled mix of the Try, Confirm and Cancel of many
# branches, with retries (the same phase twice), reorderings (a Cancel
# before its Try, a Confirm before its Try), Try transactions that roll
# back after the fence said proceed, and random pauses between the fence's
# answer and the commit.  Each phase is a participant's transaction: the
# fence call, the business work it allows, and a record of the answer, so
# only committed answers are recorded.  Then every branch is checked
# against the rules:
#  - each phase was told to proceed at most once (among committed answers);
#  - the final state agrees with the committed answers: confirmed after a
#    Try and a Confirm that proceeded, cancelled after a Try and a Cancel
#    that proceeded, suspended after an empty Cancel and no Try that
#    proceeded, and never both a Confirm and a Cancel that proceeded;
#  - no stock stays held for a branch that ended cancelled or suspended;
#  - no deadlock, and no error but the documented ones.
# The seed is printed; TCC_SEED=<seed> replays a history.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util qw(shuffle);
use PaymentsNode;

my $seed = $ENV{TCC_SEED} // (time() ^ $$);
srand($seed);
note "TCC_SEED=$seed";

my $branches = 400;
my $sessions = 6;

my $node = payments_node('tcc_history', worker_timings => 0);
$node->safe_psql('postgres', q{
CREATE EXTENSION payments;
CREATE ROLE tcc_app LOGIN;
GRANT payments_app TO tcc_app;
CREATE SCHEMA app AUTHORIZATION tcc_app;
});

# The participant, as the application writes it: one function per phase,
# each calling the fence first and doing the business work it allows, all
# in the caller's transaction.
$node->safe_psql('postgres', q{
SET ROLE tcc_app;
CREATE TABLE app.answers (gid text, phase text, answer text);
CREATE TABLE app.holds (gid text PRIMARY KEY, released boolean NOT NULL DEFAULT false);
CREATE TABLE app.sales (gid text PRIMARY KEY);

CREATE FUNCTION app.try(g text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE a text := payments.tcc_try(g, 'stock', 'reserve');
BEGIN
    INSERT INTO app.answers VALUES (g, 'try', a);
    IF a = 'proceed' THEN
        INSERT INTO app.holds (gid) VALUES (g);
    END IF;
END $$;

CREATE FUNCTION app.confirm(g text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE a text := payments.tcc_confirm(g, 'stock');
BEGIN
    INSERT INTO app.answers VALUES (g, 'confirm', a);
    IF a = 'proceed' THEN
        INSERT INTO app.sales VALUES (g);
    END IF;
END $$;

CREATE FUNCTION app.cancel(g text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE a text := payments.tcc_cancel(g, 'stock');
BEGIN
    INSERT INTO app.answers VALUES (g, 'cancel', a);
    IF a = 'proceed' THEN
        UPDATE app.holds SET released = true WHERE gid = g;
    END IF;
END $$;
});

# Each branch gets a Try (sometimes retried, sometimes failing after the
# fence), and a Confirm or a Cancel (sometimes retried, sometimes both when
# the coordinator is confused); the calls are dealt to random sessions and
# each session's list is shuffled, so every order happens.
my @calls;
for my $b (1 .. $branches)
{
	my $g = "g$b";
	my $tries = 1 + int(rand(2));
	for (1 .. $tries)
	{
		push @calls, [ $g, 'try', rand() < 0.2 ? 'ROLLBACK' : 'COMMIT' ];
	}
	my $r = rand();
	my @second =
	    $r < 0.45 ? ('confirm')
	  : $r < 0.85 ? ('cancel')
	  :             ('confirm', 'cancel');
	for my $phase (@second)
	{
		push @calls, [ $g, $phase, 'COMMIT' ] for 1 .. 1 + int(rand(2));
	}
}

my @scripts = map { '' } 1 .. $sessions;
my @lists = map { [] } 1 .. $sessions;
push @{ $lists[ int(rand($sessions)) ] }, $_ for @calls;
for my $s (0 .. $sessions - 1)
{
	my $sql = "SET ROLE tcc_app;\n\\set VERBOSITY sqlstate\n";
	for my $c (shuffle @{ $lists[$s] })
	{
		my ($g, $phase, $end) = @$c;
		my $pause = sprintf('%.3f', rand() < 0.3 ? rand(0.02) : 0);
		$sql .= "BEGIN;\nSELECT app.$phase('$g');\nSELECT pg_sleep($pause);\n$end;\n";
	}
	$scripts[$s] = $sql;
}

# Run the sessions at once.
my @runs;
for my $s (0 .. $sessions - 1)
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-q', '-d', $node->connstr('postgres'),
			'-v', 'ON_ERROR_STOP=0'
		],
		'<', \$scripts[$s], '>', \$out, '2>', \$err);
	push @runs, [ $h, \$out, \$err ];
}
my %errors;
for my $r (@runs)
{
	$r->[0]->finish;
	$errors{$1}++ while ${ $r->[2] } =~ /ERROR:\s+([0-9A-Z]{5})/g;
}
note 'errors by SQLSTATE: ' . join(', ', map { "$_ x$errors{$_}" } sort keys %errors);

ok(!exists $errors{'40P01'}, 'no deadlock in any interleaving');
is_deeply(
	[ grep { !/^(PM60[123]|25P02)$/ } sort keys %errors ],
	[],
	'the only errors are the documented PM601, PM602 and PM603 (and the failed transaction\'s later statements)'
);

my $check = sub {
	my ($what, $sql) = @_;
	my $bad = $node->safe_psql('postgres', $sql);
	is($bad, '', $what);
};

$check->(
	'each phase of a branch is told proceed at most once',
	q{SELECT gid || ' ' || phase FROM app.answers WHERE answer = 'proceed'
	   GROUP BY gid, phase HAVING count(*) > 1});

# One line per branch: its final state and what its committed answers were.
my $per_branch = q{
WITH a AS (
    SELECT gid,
           count(*) FILTER (WHERE phase = 'try' AND answer = 'proceed') AS try_proceed,
           count(*) FILTER (WHERE phase = 'try' AND answer = 'suspended') AS try_suspended,
           count(*) FILTER (WHERE phase = 'confirm' AND answer = 'proceed') AS confirm_proceed,
           count(*) FILTER (WHERE phase = 'cancel' AND answer = 'proceed') AS cancel_proceed,
           count(*) FILTER (WHERE phase = 'cancel' AND answer = 'empty') AS cancel_empty
      FROM app.answers GROUP BY gid)
SELECT f.gid AS fence_gid, a.gid AS answered_gid, coalesce(f.gid, a.gid) AS gid, f.state,
       coalesce(try_proceed, 0) AS try_proceed, coalesce(try_suspended, 0) AS try_suspended,
       coalesce(confirm_proceed, 0) AS confirm_proceed,
       coalesce(cancel_proceed, 0) AS cancel_proceed, coalesce(cancel_empty, 0) AS cancel_empty
  FROM (SELECT gid, state FROM payments.tcc_branches) f
  FULL JOIN a ON a.gid = f.gid};

$check->(
	'a confirmed branch had a Try and a Confirm proceed, and no Cancel',
	"SELECT gid FROM ($per_branch) b WHERE state = 'confirmed'
	   AND NOT (try_proceed = 1 AND confirm_proceed = 1 AND cancel_proceed = 0 AND cancel_empty = 0)");
$check->(
	'a cancelled branch had a Try and a Cancel proceed, and no Confirm',
	"SELECT gid FROM ($per_branch) b WHERE state = 'cancelled'
	   AND NOT (try_proceed = 1 AND cancel_proceed = 1 AND confirm_proceed = 0 AND cancel_empty = 0)");
$check->(
	'a suspended branch had an empty Cancel and no Try, Confirm or Cancel that proceeded',
	"SELECT gid FROM ($per_branch) b WHERE state = 'suspended'
	   AND NOT (cancel_empty = 1 AND try_proceed = 0 AND confirm_proceed = 0 AND cancel_proceed = 0)");
$check->(
	'a branch still tried had only its Try proceed',
	"SELECT gid FROM ($per_branch) b WHERE state = 'tried'
	   AND NOT (try_proceed = 1 AND confirm_proceed = 0 AND cancel_proceed = 0 AND cancel_empty = 0)");
$check->(
	'a branch the fence has no row for was never told to proceed, nor suspended',
	"SELECT gid FROM ($per_branch) b WHERE state IS NULL
	   AND try_proceed + confirm_proceed + cancel_proceed + cancel_empty + try_suspended > 0");
$check->(
	'a late Try is told suspended only once the branch is cancelled or suspended',
	"SELECT gid FROM ($per_branch) b WHERE try_suspended > 0
	   AND state NOT IN ('cancelled', 'suspended')");
$check->(
	'no stock stays held for a branch that ended cancelled or suspended',
	q{SELECT h.gid FROM app.holds h JOIN payments.tcc_branches f USING (gid)
	   WHERE f.state IN ('cancelled', 'suspended') AND NOT h.released});
$check->(
	'the business work matches the answers: a hold per Try, a sale per Confirm',
	q{SELECT gid FROM app.answers a WHERE answer = 'proceed' AND
	     ((phase = 'try' AND NOT EXISTS (SELECT FROM app.holds h WHERE h.gid = a.gid))
	   OR (phase = 'confirm' AND NOT EXISTS (SELECT FROM app.sales s WHERE s.gid = a.gid)))
	  UNION ALL
	  SELECT gid FROM app.holds h WHERE NOT EXISTS (SELECT FROM app.answers a
	     WHERE a.gid = h.gid AND a.phase = 'try' AND a.answer = 'proceed')});

# The history must have exercised the interesting orders.
my $seen = $node->safe_psql('postgres', qq{
SELECT count(*) FILTER (WHERE state = 'confirmed') > 0,
       count(*) FILTER (WHERE state = 'cancelled') > 0,
       count(*) FILTER (WHERE state = 'suspended') > 0,
       count(*) FILTER (WHERE try_suspended > 0) > 0
  FROM ($per_branch) b});
is($seen, 't|t|t|t',
	'the history had confirmed, cancelled and suspended branches, and late Trys');

done_testing();
