-- A buyer's receipt found by the number they queued with (issue 19: receipts on the waiting
-- page). Tickets are public in the entries anyway; the column and its index only spare a
-- scan of the log. Set at the append (NULL for waivers and for leaves appended before), so
-- the append-only triggers never see an UPDATE.

ALTER TABLE admission_log_entries ADD COLUMN admitted_ticket bigint;

CREATE INDEX admission_log_entries_by_ticket
    ON admission_log_entries (event_id, admitted_ticket, idx)
    WHERE admitted_ticket IS NOT NULL;
