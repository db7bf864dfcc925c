-- Issue 22: a version of each event's seat catalogue (its seats' ids, rows, numbers, prices).
-- The ticket API keeps the catalogue in memory with the version it was read at, and reads
-- per seat map only the version and the claimed seats; a version it does not know makes it
-- read the catalogue again. So every change to an event's seats, by any process or by hand
-- (insert, update, delete, truncate), gives the event a new version in the same transaction,
-- and a version is random, never a counter: a recreated event or database never meets a
-- version a process already cached for another catalogue.
ALTER TABLE booking_events
    ADD COLUMN seats_version uuid NOT NULL DEFAULT gen_random_uuid();

CREATE FUNCTION booking_seats_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE booking_events SET seats_version = gen_random_uuid();
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE booking_events SET seats_version = gen_random_uuid()
            WHERE event_id = OLD.event_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        UPDATE booking_events SET seats_version = gen_random_uuid()
            WHERE event_id = NEW.event_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER seats_change_the_version AFTER INSERT OR UPDATE OR DELETE ON seats
    FOR EACH ROW EXECUTE FUNCTION booking_seats_changed();
CREATE TRIGGER seats_truncate_changes_the_version AFTER TRUNCATE ON seats
    FOR EACH STATEMENT EXECUTE FUNCTION booking_seats_changed();
-- Also under session_replication_role = replica (logical replication's apply, some loaders).
ALTER TABLE seats ENABLE ALWAYS TRIGGER seats_change_the_version;
ALTER TABLE seats ENABLE ALWAYS TRIGGER seats_truncate_changes_the_version;
