-- 0003: several server nodes on one database. A running step is driven by
-- one node at a time: the node that holds its lease (node, lease_until),
-- renewed while it drives the step; a lease that has run out may be taken
-- by another node, and a node's writes to a step it no longer holds are
-- refused by the server, so that a node that comes back does not drive it
-- twice.
ALTER TABLE steps
    ADD COLUMN node        text NOT NULL DEFAULT '',
    ADD COLUMN lease_until timestamptz;

-- The leases a node looks for: the running steps, in ID order, are
-- steps_state's already.

-- Every change of a step is announced to every node on the channel
-- stevedore_steps, its payload the step's state, "cancel" once one is asked
-- for, and its ID ("running s…", "running cancel s…"; delivered at commit, one per
-- step per transaction): a step queued on one node is dispatched at once
-- by the node its worker is connected to, a log followed on any node moves
-- as the driving node stores lines, and a cancel asked of any node reaches
-- the driver.
CREATE FUNCTION steps_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stevedore_steps', NEW.state || CASE WHEN NEW.cancel_requested THEN ' cancel ' ELSE ' ' END || NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER steps_notify AFTER INSERT OR UPDATE ON steps
    FOR EACH ROW EXECUTE FUNCTION steps_notify();
