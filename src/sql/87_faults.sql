-- Fault drills: named points at the critical steps of every capability,
-- armed by a superuser on a server started with payments.fault_injection
-- = on (see src/fault.c).  The armed state is in shared memory: nothing
-- here is stored in a table, and a restart disarms every point.

CREATE FUNCTION payments.fault_arm(point text, action text, times integer DEFAULT 1,
                                   probability float8 DEFAULT 1,
                                   delay interval DEFAULT NULL,
                                   pid integer DEFAULT NULL)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_fault_arm'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.fault_arm(text, text, integer, float8, interval, integer) IS
    'Arm a fault point: error, delay, wait (until disarmed), crash or duplicate, for the next times passes (superuser; payments.fault_injection must be on)';

CREATE FUNCTION payments.fault_disarm(point text DEFAULT NULL)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_fault_disarm'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.fault_disarm(text) IS
    'Disarm a fault point, or every point; returns how many were armed';

CREATE FUNCTION payments.fault_point_states(
        OUT point text, OUT step text, OUT action text, OUT times_left integer,
        OUT probability float8, OUT delay interval, OUT pid integer, OUT hits bigint)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'payments_fault_points'
    LANGUAGE C VOLATILE;

CREATE VIEW payments.fault_points AS
    SELECT point, step, action, times_left, probability, delay, pid, hits
      FROM payments.fault_point_states();

COMMENT ON VIEW payments.fault_points IS
    'Every fault point, what it interrupts, what it is armed with (NULL: disarmed) and how often it fired since the server started';
