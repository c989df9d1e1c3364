# The RSA callback schemes, wechatpay-v3 and alipay-rsa2, against requests
# signed by the openssl command (RSA-SHA256, PKCS#1 v1.5) with keys made
# for the test: the key that verified is the one the request names, a
# tampered request is PM401, an unknown serial PM402, a bad header or
# parameter PM404, and a key shorter than 2048 bits is refused when it is
# added.  Also notes the cost of one verification, measured in SQL (a note,
# never an assertion).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $dir = PostgreSQL::Test::Utils::tempdir;

# openssl(args...): runs the openssl command, dies if it fails, returns
# its standard output.
sub openssl
{
	my ($stdout, $stderr) = run_command([ 'openssl', @_ ]);
	die "openssl @_ failed: $stderr" if $? != 0;
	return $stdout;
}

# An RSA key pair of the given size: the private key's file and the public
# key's PEM text (SubjectPublicKeyInfo, or PKCS#1 with $pkcs1).
sub rsa_key
{
	my ($name, $bits, $pkcs1) = @_;
	my $key = "$dir/$name.key";
	openssl('genrsa', '-out', $key, $bits);
	openssl('rsa', '-in', $key, $pkcs1 ? '-RSAPublicKey_out' : '-pubout',
		'-out', "$dir/$name.pub");
	return ($key, slurp_file("$dir/$name.pub"));
}

my $n_signed = 0;

# The base64 RSA-SHA256 signature of a message (bytes) with a private key.
sub sign
{
	my ($key, $message) = @_;
	my $file = "$dir/message" . $n_signed++;
	open my $fh, '>:raw', $file or die "could not write $file: $!";
	print $fh $message;
	close $fh;
	openssl('dgst', '-sha256', '-sign', $key, '-out', "$file.sig", $file);
	return openssl('base64', '-A', '-in', "$file.sig");
}

# A SQL literal of a Perl string (the test's strings have no backslashes).
sub lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# run(sql): (stdout, SQLSTATE or '') of one statement, which may fail.
sub run
{
	my ($node, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY sqlstate\n$sql", on_error_stop => 0);
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5})/;
	return ($out, $state // ($ret == 0 ? '' : "failed: $err"));
}

my $node = payments_node('callback_rsa', worker_timings => 0);
$node->safe_psql('postgres', 'CREATE EXTENSION payments');

# The time every request is judged at, as verify_callback's `at`, and its
# signed timestamp.
my $ts = $node->safe_psql('postgres',
	'SELECT floor(extract(epoch FROM now()))::bigint');
my $at = "to_timestamp($ts)";

#
# WeChat Pay v3: "<timestamp>\n<nonce>\n<body>\n", the platform key named
# by Wechatpay-Serial.  One platform key as a public key, one as a
# certificate (the form WeChat Pay's platform-certificate API returns).
#
my ($wx_key, $wx_pub) = rsa_key('wx', 2048);
my $wx_serial = '5157F09EFDC096DE15EBE81A47057A7232F1B8E1';
my ($wx2_key) = rsa_key('wx2', 2048);
openssl('req', '-x509', '-new', '-key', $wx2_key, '-days', '3650',
	'-subj', '/CN=WeChat Pay platform (test)/O=payments test',
	'-out', "$dir/wx2.crt");
my $wx2_cert = slurp_file("$dir/wx2.crt");
my ($wx2_serial) = openssl('x509', '-in', "$dir/wx2.crt", '-noout', '-serial') =~ /serial=([0-9A-F]+)/;
like($wx2_cert, qr/BEGIN CERTIFICATE/, 'the second platform key is a certificate');

is( $node->safe_psql(
		'postgres', qq{
	SELECT payments.callback_key_add('wechat', 'wechatpay-v3', @{[lit($wx_pub)]},
	                                 key_id => '$wx_serial', valid_from => $at - interval '1 day') > 0;
	SELECT payments.callback_key_add('wechat', 'wechatpay-v3', @{[lit($wx2_cert)]},
	                                 key_id => '$wx2_serial', valid_from => $at - interval '1 day') > 0;
}),
	"t\nt",
	'both platform keys are added, the certificate by its serial number');

my $wx_body =
  '{"id":"EV-2018022511223320873","create_time":"2015-05-20T13:29:35+08:00","resource_type":"encrypt-resource",'
  . '"event_type":"TRANSACTION.SUCCESS","summary":"payment succeeded","resource":{"algorithm":"AEAD_AES_256_GCM",'
  . '"ciphertext":"c2lnbmVkIGJvZHk=","associated_data":"transaction","nonce":"fdasflkja484w"}}';
my $nonce = 'fdasfjihIHAJFUAfdafjhihaiHIHAF';

# The headers of a request signed with $key over (ts, nonce, body).
sub wx_headers
{
	my (%h) = @_;
	my $sig = sign($h{key}, "$h{ts}\n$h{nonce}\n$h{body}\n");
	my %headers = (
		'Wechatpay-Timestamp' => $h{ts},
		'Wechatpay-Nonce' => $h{nonce},
		'Wechatpay-Signature' => $sig,
		'Wechatpay-Serial' => $h{serial},
		%{ $h{extra} // {} });
	return 'jsonb_build_object('
	  . join(', ', map { lit($_) . ', ' . lit($headers{$_}) } sort keys %headers) . ')';
}

sub wx_verify
{
	my ($headers, $body) = @_;
	return run($node,
		"SELECT payments.verify_callback('wechat', $headers, convert_to(@{[lit($body)]}, 'UTF8'), $at)");
}

my %wx = (key => $wx_key, serial => $wx_serial, ts => $ts, nonce => $nonce, body => $wx_body);
my $wx_headers = wx_headers(%wx);
is_deeply([ wx_verify($wx_headers, $wx_body) ], [ $wx_serial, '' ],
	'wechatpay-v3: a signed request verifies; the key_id is the serial it names');
is_deeply(
	[ run($node, "SELECT payments.verify_callback('wechat', $wx_headers, @{[lit($wx_body)]}::text, $at)") ],
	[ $wx_serial, '' ],
	'... also with the body as text');
is_deeply(
	[ wx_verify(wx_headers(%wx, key => $wx2_key, serial => $wx2_serial), $wx_body) ],
	[ $wx2_serial, '' ],
	'the key given as a certificate verifies the requests that name its serial');
is_deeply(
	[ wx_verify(wx_headers(%wx, extra => { 'Wechatpay-Signature-Type' => 'WECHATPAY2-SHA256-RSA2048' }), $wx_body) ],
	[ $wx_serial, '' ],
	'Wechatpay-Signature-Type WECHATPAY2-SHA256-RSA2048 is accepted');
my $lower = $wx_headers;
$lower =~ s/'Wechatpay-/'wechatpay-/g;
is_deeply([ wx_verify($lower, $wx_body) ], [ $wx_serial, '' ],
	'header names regardless of case');

# Refusals.
(my $tampered = $wx_body) =~ s/TRANSACTION\.SUCCESS/TRANSACTION.SUCCESs/;
is((wx_verify($wx_headers, $tampered))[1], 'PM401', 'a tampered body is PM401');
is((wx_verify($wx_headers, substr($wx_body, 0, -1)))[1], 'PM401', 'a truncated body is PM401');
is( (wx_verify($wx_headers, "$wx_body\n"))[1],
	'PM401', 'the body with the message\'s trailing newline is PM401');
(my $other_nonce = $wx_headers) =~ s/\Q$nonce\E/${nonce}X/;
is((wx_verify($other_nonce, $wx_body))[1], 'PM401', 'another nonce is PM401: the nonce is signed');
is( (wx_verify(wx_headers(%wx, serial => $wx2_serial), $wx_body))[1],
	'PM401',
	'a request signed with one platform key but naming the other is PM401: only the named key is tried');
is( (wx_verify(wx_headers(%wx, serial => 'FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'), $wx_body))[1],
	'PM402', 'a request naming an unknown serial is PM402');
is( (wx_verify(wx_headers(%wx, ts => $ts - 301), $wx_body))[1],
	'PM403', 'a timestamp older than payments.callback_tolerance is PM403');
is( (wx_verify(wx_headers(%wx, ts => $ts + 301), $wx_body))[1],
	'PM403', 'a timestamp too far in the future is PM403');
is( (wx_verify(wx_headers(%wx, extra => { 'Wechatpay-Signature-Type' => 'WECHATPAY2-SHA256-RSA' }), $wx_body))[1],
	'PM404', 'another Wechatpay-Signature-Type is PM404');
for my $missing ('Wechatpay-Timestamp', 'Wechatpay-Nonce', 'Wechatpay-Signature', 'Wechatpay-Serial')
{
	is( (wx_verify("$wx_headers - '$missing'", $wx_body))[1],
		'PM404', "a request without $missing is PM404");
}
is( (wx_verify("$wx_headers || '{\"Wechatpay-Signature\": \"not base64!\"}'", $wx_body))[1],
	'PM404', 'a signature that is not base64 is PM404');

# Revoking a platform key: its serial is then unknown.
$node->safe_psql('postgres',
	"SELECT payments.callback_key_revoke(id) FROM payments.callback_keys WHERE key_id = '$wx2_serial'");
is( (wx_verify(wx_headers(%wx, key => $wx2_key, serial => $wx2_serial), $wx_body))[1],
	'PM402', 'a request naming a revoked key is PM402');
is_deeply([ wx_verify($wx_headers, $wx_body) ], [ $wx_serial, '' ],
	'the other key still verifies');

# receive_callback records the serial, and nothing on a refusal.
my $now_headers = wx_headers(%wx,
	ts => $node->safe_psql('postgres', 'SELECT floor(extract(epoch FROM now()))::bigint'));
is( $node->safe_psql(
		'postgres', qq{
	SELECT payments.receive_callback('wechat', 'EV-2018022511223320873', '1217752501201407033233368018',
	                                 'TRANSACTION.SUCCESS', '{}', $now_headers, convert_to(@{[lit($wx_body)]}, 'UTF8'));
	SELECT key_id FROM payments.callbacks WHERE provider = 'wechat';
}),
	"new\n$wx_serial",
	'receive_callback records the serial of the key that verified');
is( (run($node, qq{
	SELECT payments.receive_callback('wechat', 'EV-2', 'pay-2', 'TRANSACTION.SUCCESS', '{}',
	                                 $now_headers, convert_to(@{[lit($tampered)]}, 'UTF8'))}))[1],
	'PM401', 'receive_callback refuses the tampered body');
is($node->safe_psql('postgres', "SELECT count(*) FROM payments.callbacks WHERE provider = 'wechat'"),
	'1', '... and records nothing');

#
# Alipay RSA2: every parameter but sign and sign_type, sorted by name in
# byte order, joined "k=v&k=v", with empty values included.
#
my ($ali_key, $ali_pub) = rsa_key('alipay', 2048, 1);
like($ali_pub, qr/BEGIN RSA PUBLIC KEY/, 'the Alipay key is given in its PKCS#1 form');
is( $node->safe_psql(
		'postgres', qq{
	SELECT payments.callback_key_add('alipay', 'alipay-rsa2', @{[lit($ali_pub)]},
	                                 key_id => 'alipay-2025', valid_from => $at - interval '1 day') > 0}),
	't',
	'an Alipay public key is added');

# "subject" is 商品 ("goods"): in SQL as JSON escapes, signed as its UTF-8 bytes.
my %params = (
	notify_time => '2025-03-01 12:00:00',
	notify_type => 'trade_status_sync',
	notify_id => 'ac05099524730693a8b330c5ecf72da9786',
	app_id => '2021000117600000',
	charset => 'utf-8',
	version => '1.0',
	trade_no => '2025030122001400000000000001',
	out_trade_no => 'A-3001',
	trade_status => 'TRADE_SUCCESS',
	total_amount => '88.88',
	buyer_logon_id => '',
	subject => "\xe5\x95\x86\xe5\x93\x81",
	passback_params => 'a=1&b=2');
my %json_escapes = (subject => '\\u5546\\u54c1');

# The parameters (plus sign and sign_type) as a jsonb expression, signed
# over %$signed (the parameters themselves unless given).
sub ali_params
{
	my (%o) = @_;
	my %p = %{ $o{params} // \%params };
	my %s = %{ $o{signed} // \%p };
	my $message = join('&', map { "$_=$s{$_}" } sort keys %s);
	$p{sign} = sign($o{key} // $ali_key, $message);
	$p{sign_type} = $o{sign_type} // 'RSA2';
	delete $p{sign_type} if $o{no_sign_type};
	return '('
	  . lit('{'
		  . join(',', map { "\"$_\":\"" . ($json_escapes{$_} // $p{$_}) . '"' } sort keys %p)
		  . '}')
	  . '::jsonb)';
}

sub ali_verify
{
	my ($params) = @_;
	return run($node, "SELECT payments.verify_callback('alipay', $params, NULL::bytea, $at)");
}

my $ali_params = ali_params();
is_deeply([ ali_verify($ali_params) ], [ 'alipay-2025', '' ],
	'alipay-rsa2: signed parameters verify (sorted by bytes, empty values and non-ASCII included)');
is_deeply(
	[ run($node, "SELECT payments.verify_callback('alipay', $ali_params, 'ignored body', $at)") ],
	[ 'alipay-2025', '' ],
	'... the body is not used');
is_deeply([ ali_verify(ali_params(no_sign_type => 1)) ], [ 'alipay-2025', '' ],
	'... and sign_type may be left out');
is( (ali_verify("($ali_params || '{\"total_amount\": \"888.8\"}')"))[1],
	'PM401', 'a changed parameter is PM401');
is((ali_verify("($ali_params - 'buyer_logon_id')"))[1],
	'PM401', 'a parameter left out, even an empty one, is PM401');
is( (ali_verify("($ali_params || '{\"refund_fee\": \"88.88\"}')"))[1],
	'PM401', 'a parameter added is PM401');
is( (ali_verify(ali_params(signed => { %params, subject => 'goods' })))[1],
	'PM401', 'a signature over another value is PM401');
my ($other_key) = rsa_key('other', 2048);
is((ali_verify(ali_params(key => $other_key)))[1], 'PM401', 'a signature by another key is PM401');
is((ali_verify(ali_params(sign_type => 'RSA')))[1], 'PM404', 'sign_type RSA (SHA-1) is PM404');
is((ali_verify("($ali_params - 'sign')"))[1], 'PM404', 'a request without sign is PM404');
is( (ali_verify("($ali_params || '{\"sign\": \"***\"}')"))[1],
	'PM404', 'a sign that is not base64 is PM404');
is( (ali_verify("($ali_params || '{\"total_amount\": 88.88}')"))[1],
	'PM404', 'a parameter that is not a string is PM404');

# The failures above, counted once each.
is( $node->safe_psql('postgres',
		"SELECT string_agg(provider || '=' || signature_failures, ',' ORDER BY provider) FROM payments.callback_stats"),
	'alipay=9,wechat=16',
	'callback_stats counts each refusal once');

#
# Keys that are no RSA key of 2048 bits or more are refused when added.
#
my (undef, $short_pub) = rsa_key('short', 1024);
for my $scheme ('alipay-rsa2', 'wechatpay-v3')
{
	my ($out, $state) = run($node,
		"SELECT payments.callback_key_add('short_$scheme', '$scheme', @{[lit($short_pub)]}, key_id => 'k')");
	is($state, '22023', "$scheme: a 1024-bit key is refused (22023)");
}
openssl('req', '-x509', '-new', '-key', "$dir/short.key", '-days', '1',
	'-subj', '/CN=short', '-out', "$dir/short.crt");
is( (run($node,
			"SELECT payments.callback_key_add('short_cert', 'wechatpay-v3', @{[lit(slurp_file(\"$dir/short.crt\"))]}, key_id => 'k')"))[1],
	'22023',
	'... and so is a certificate of one');
is( (run($node,
			"SELECT payments.callback_key_add('private', 'alipay-rsa2', @{[lit(slurp_file($ali_key))]}, key_id => 'k')"))[1],
	'22023',
	'a private key is refused (22023)');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM payments.callback_keys WHERE provider NOT IN ('wechat', 'alipay')"),
	'0',
	'no key was added');

#
# The cost of one verification through verify_callback, 2000 calls in
# one statement; noted, not asserted.
#
sub cost_us
{
	my ($call) = @_;
	return $node->safe_psql(
		'postgres', qq{
	SELECT clock_timestamp() AS t0 \\gset
	SELECT count($call) FROM generate_series(1, 2000);
	SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1e6 / 2000, 1);
}) =~ s/^2000\n//r;
}
$node->safe_psql(
	'postgres', qq{
	SELECT payments.callback_key_add('hmac', 'hmac-sha256', 'sigtest-hmac-secret-01',
	                                 valid_from => $at - interval '1 day')});
my $hmac_sig = $node->safe_psql('postgres',
	"CREATE EXTENSION pgcrypto; SELECT encode(hmac(convert_to(@{[lit($wx_body)]}, 'UTF8'), 'sigtest-hmac-secret-01', 'sha256'), 'hex')");
note 'one verify_callback, microseconds: wechatpay-v3 (RSA-SHA256, 2048 bits) '
  . cost_us("payments.verify_callback('wechat', $wx_headers, @{[lit($wx_body)]}::text, $at)")
  . ', alipay-rsa2 '
  . cost_us("payments.verify_callback('alipay', $ali_params, NULL::bytea, $at)")
  . ', hmac-sha256 '
  . cost_us("payments.verify_callback('hmac', jsonb_build_object('X-Signature', '$hmac_sig'), @{[lit($wx_body)]}::text, $at)");

$node->stop;
done_testing();
