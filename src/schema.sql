-- The schema itself is created by CREATE EXTENSION (payments.control names
-- it).  Nothing in it is usable by PUBLIC: applications get access through
-- the payments_app role, see privileges.sql.
REVOKE ALL ON SCHEMA payments FROM PUBLIC;
