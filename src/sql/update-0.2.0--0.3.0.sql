-- What the update from 0.2.0 changes in objects 0.2.0 created (the new
-- objects come from their fragments).  Every name is qualified with
-- @extschema@.

-- define_state_machine judges its caller (current_user), so it runs as the
-- caller and takes the extension owner's rights only for its own statement.
ALTER FUNCTION @extschema@.define_state_machine(text, jsonb, text[]) SECURITY INVOKER;
