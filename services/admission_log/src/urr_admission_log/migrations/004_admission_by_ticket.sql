-- A buyer's receipt found by the number they queued with (issue 19: receipts on the waiting
-- page). Tickets are public in the entries anyway; the index only spares a scan of the log.
-- The leaf is canonical UTF-8 JSON written once, so reading its ticket is immutable in fact.

CREATE FUNCTION admission_log_admitted_ticket(leaf bytea) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN doc ->> 'kind' = 'admit' THEN (doc ->> 'ticket')::bigint END
    FROM (SELECT convert_from(leaf, 'UTF8')::jsonb AS doc) AS parsed
$$;

CREATE INDEX admission_log_entries_by_ticket
    ON admission_log_entries (event_id, admission_log_admitted_ticket(leaf), idx)
    WHERE admission_log_admitted_ticket(leaf) IS NOT NULL;
