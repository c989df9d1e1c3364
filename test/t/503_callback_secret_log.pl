# A callback key's secret never reaches the server log and no application
# role can read it back: every error callback_key_add raises hides the
# statement (which carries the secret) from log_min_error_statement, and
# quotes no secret; payments_app and payments_operator cannot select the
# secret column.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

# log_min_error_statement = error logs the statement of every error (its
# default, set here so that the test does not depend on it);
# log_min_messages is left at its default.  The test framework logs every
# statement (log_statement = all), which shows every secret by design: a
# production setting is none.
my $node = payments_node('callback_secret_log', worker_timings => 0,
	conf => "log_min_error_statement = error\nlog_statement = none\n");
$node->safe_psql('postgres', q{
	CREATE EXTENSION payments;
	CREATE ROLE shop LOGIN IN ROLE payments_app;
	CREATE ROLE other_shop LOGIN IN ROLE payments_app;
	CREATE ROLE ops LOGIN IN ROLE payments_operator;
});

# Each secret is recognisable in the log, and each is unique to its case.
my $n = 0;
sub secret { return sprintf('whsec_LOGLEAK_%02d_c0ffee', ++$n) }

my $rsa = PostgreSQL::Test::Utils::tempdir . '/k.pem';
run_command([ 'openssl', 'genrsa', '-out', $rsa, 2048 ]);
my ($pem) = run_command([ 'openssl', 'rsa', '-in', $rsa, '-pubout' ]);
like($pem, qr/BEGIN PUBLIC KEY/, 'an RSA public key for the RSA cases');

my $first = secret();
is( $node->safe_psql('postgres',
		"SELECT payments.callback_key_add('leak', 'stripe', '$first', key_id => 'k1') > 0",
		extra_params => [ '-U', 'shop' ]),
	't',
	'a key is added');

# Each case: [role, description, SQL with %s for the secret, secret or undef
# for one of its own].
my @cases = (
	[ 'shop', 'a duplicate key_id',
	  q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k1')} ],
	[ 'shop', 'valid_until before valid_from',
	  q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k2', valid_from => now(), valid_until => now() - interval '1 day')} ],
	[ 'shop', 'an infinite valid_from',
	  q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k3', valid_from => 'infinity')} ],
	[ 'shop', 'an unknown scheme (before a valid secret)',
	  q{SELECT payments.callback_key_add('leak', 'stripe-v2', '%s', key_id => 'k4')} ],
	[ 'shop', 'a bad header name in the scheme',
	  q{SELECT payments.callback_key_add('leak', 'hmac-sha256:X Sig', '%s', key_id => 'k5')} ],
	[ 'shop', 'another scheme than the provider\'s keys',
	  q{SELECT payments.callback_key_add('leak', 'hmac-sha256', '%s', key_id => 'k6')} ],
	[ 'shop', 'a secret too short for the scheme',
	  q{SELECT payments.callback_key_add('leak2', 'stripe', '%s')}, 'LOGLEAK_short' ],
	[ 'shop', 'a standard-webhooks secret that is not base64',
	  q{SELECT payments.callback_key_add('leak2', 'standard-webhooks', '%s')} ],
	[ 'shop', 'an RSA scheme given an HMAC secret',
	  q{SELECT payments.callback_key_add('leak2', 'alipay-rsa2', '%s')} ],
	[ 'shop', 'a PEM block around the secret',
	  qq{SELECT payments.callback_key_add('leak2', 'wechatpay-v3', E'-----BEGIN PUBLIC KEY-----\\n%s\\n-----END PUBLIC KEY-----\\n', key_id => 's')} ],
	[ 'shop', 'a wechatpay-v3 key without key_id (the secret in a comment)',
	  qq{SELECT payments.callback_key_add('leak2', 'wechatpay-v3', \$\$$pem\$\$) /* %s */} ],
	[ 'shop', 'a key_id over its limit',
	  q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => repeat('k', 100000))} ],
	[ 'shop', 'a NULL valid_from',
	  q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k7', valid_from => NULL)} ],
	[ 'other_shop', 'a provider of another role',
	  q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k8')} ],
	[ 'shop', 'a statement timeout while the call waits for a concurrent one',
	  q{SET statement_timeout = '200ms'; SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k9')} ],
);

# The last case waits for a session adding the same key_id, which never
# commits.
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'shop' ]);
$holder->query_safe('BEGIN');
$holder->query_safe(sprintf(
	q{SELECT payments.callback_key_add('leak', 'stripe', '%s', key_id => 'k9')}, secret()));

my @secrets;
my $offset = -s $node->logfile;
for my $case (@cases)
{
	my ($role, $what, $sql, $own) = @$case;
	my $secret = $own // secret();
	push @secrets, $secret;
	my ($ret, $out, $err) = $node->psql('postgres', sprintf($sql, $secret),
		extra_params => [ '-U', $role ]);
	isnt($ret, 0, "refused: $what");
	unlike($err, qr/\Q$secret\E/, "... and the error does not quote the secret");
}

$holder->query_safe('ROLLBACK');
$holder->quit;

# The server log of the cases: each error is there, no secret is.
my $log = slurp_file($node->logfile, $offset);
my $errors = () = $log =~ /^.*ERROR:/mg;
is($errors, scalar @cases, 'the server logged one error per case');
for my $secret (@secrets)
{
	unlike($log, qr/\Q$secret\E/, "the log does not show $secret");
}
unlike($log, qr/STATEMENT:.*callback_key_add/, 'no statement of callback_key_add is logged');
unlike($log, qr/LOGLEAK/, 'no part of any secret is logged');

# That the log would show them: an error after callback_key_add returned
# is logged with its statement, secret and all.  (So pass secrets as bind
# parameters, which log_parameter_max_length_on_error = 0 keeps out.)
$offset = -s $node->logfile;
my $control = secret();
$node->psql('postgres',
	"SELECT payments.callback_key_add('leak3', 'stripe', '$control') / 0",
	extra_params => [ '-U', 'shop' ]);
like(slurp_file($node->logfile, $offset), qr/STATEMENT:.*\Q$control\E/,
	'control: an error outside callback_key_add logs the statement with the secret');

# Nothing was added by the refused calls.
is( $node->safe_psql('postgres',
		"SELECT string_agg(provider || '/' || key_id, ',' ORDER BY id) FROM payments.callback_keys"),
	'leak/k1',
	'only the first key was added');

# No application role reads a secret back, not even the one that added it.
for my $role ('shop', 'ops')
{
	for my $sql ('SELECT secret FROM payments.callback_keys',
		'SELECT * FROM payments.callback_keys',
		'SELECT count(*) FROM payments.callback_keys WHERE secret LIKE \'whsec%\'',
		'COPY payments.callback_keys (secret) TO STDOUT')
	{
		my ($ret, $out, $err) = $node->psql('postgres', $sql, extra_params => [ '-U', $role ]);
		like($err, qr/permission denied/, "$role: $sql is denied");
		unlike($out, qr/LOGLEAK/, '... and shows nothing');
	}
}
is( $node->safe_psql('postgres',
		"SELECT string_agg(key_id || ':' || scheme, ',') FROM payments.callback_keys",
		extra_params => [ '-U', 'ops' ]),
	'k1:stripe',
	'payments_operator reads the other columns');
is( $node->safe_psql('postgres',
		q{ANALYZE payments.callback_keys;
		  SELECT count(*) FROM pg_stats WHERE schemaname = 'payments' AND tablename = 'callback_keys' AND attname = 'secret'}),
	'1',
	'the secret column has statistics');
for my $role ('shop', 'ops')
{
	is( $node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_stats WHERE schemaname = 'payments' AND tablename = 'callback_keys' AND attname = 'secret'},
			extra_params => [ '-U', $role ]),
		'0',
		"$role does not see them in pg_stats");
}

$node->stop;
done_testing();
