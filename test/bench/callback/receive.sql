\set ev random(1, 9223372036854775807)
\set id random(1, 100000)
\set succeeded random(0, 1)
\if :succeeded
SELECT payments.receive_callback('bench', 'evt_' || :ev, :id, 'charge.succeeded', payload, headers, body) FROM request;
\else
SELECT payments.receive_callback('bench', 'evt_' || :ev, :id, 'charge.pending', payload, headers, body) FROM request;
\endif
