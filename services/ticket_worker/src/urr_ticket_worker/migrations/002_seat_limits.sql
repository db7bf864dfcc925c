-- Issue 15: per-event seat limits and a recorded payment verdict.

-- How many seats one account may hold and buy together in an event (holds in Redis plus
-- reservations awaiting payment or confirmed), and how long a seat hold lasts at most.
ALTER TABLE booking_events
    ADD COLUMN max_seats_per_user integer NOT NULL DEFAULT 4
        CHECK (max_seats_per_user BETWEEN 1 AND 100),
    ADD COLUMN hold_seconds integer NOT NULL DEFAULT 300
        CHECK (hold_seconds BETWEEN 5 AND 3600);

-- The payment stand-in's verdict, drawn from a server-side random source the first time the
-- request is seen and read back on every redelivery (so the answer never changes).
ALTER TABLE reservations
    ADD COLUMN payment_verdict text CHECK (payment_verdict IN ('approved', 'declined'));

-- Who bought a reservation that has since been transferred (NULL: its owner bought it). The
-- cap counts seats by buyer, so passing tickets on does not free an account's allowance.
ALTER TABLE reservations ADD COLUMN bought_by text;

-- An account's live purchases in an event: the API reads their seats on every hold, the
-- worker counts them inside the booking transaction.
CREATE INDEX reservations_buyer_live ON reservations (event_id, (coalesce(bought_by, user_id)))
    WHERE status IN ('pending', 'awaiting_payment', 'confirmed');
