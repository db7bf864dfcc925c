-- Booking schema shared by the ticket API, the SQS worker and the consumers.

CREATE TABLE booking_events (
    event_id    text        PRIMARY KEY,
    name        text        NOT NULL,
    venue       text        NOT NULL DEFAULT '',
    starts_at   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE seats (
    event_id    text    NOT NULL REFERENCES booking_events (event_id),
    seat_id     text    NOT NULL,
    row_label   text    NOT NULL,
    seat_number integer NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents >= 0),
    PRIMARY KEY (event_id, seat_id)
);

CREATE TABLE reservations (
    reservation_id uuid        PRIMARY KEY,
    event_id       text        NOT NULL REFERENCES booking_events (event_id),
    user_id        text        NOT NULL,
    seat_ids       text[]      NOT NULL,
    status         text        NOT NULL CHECK (status IN
        ('pending', 'awaiting_payment', 'confirmed', 'declined', 'expired', 'cancelled')),
    reason         text,
    amount_cents   integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- After this instant an unpaid reservation expires and its seats free up.
    pay_by         timestamptz
);
CREATE INDEX reservations_event_status ON reservations (event_id, status);
CREATE INDEX reservations_open_deadline ON reservations (pay_by)
    WHERE status IN ('pending', 'awaiting_payment');

-- One row per seat taken by a live (awaiting_payment or confirmed) reservation. The primary
-- key is what makes selling a seat twice impossible, whatever the application code does.
CREATE TABLE seat_claims (
    event_id       text        NOT NULL,
    seat_id        text        NOT NULL,
    reservation_id uuid        NOT NULL REFERENCES reservations (reservation_id),
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, seat_id),
    FOREIGN KEY (event_id, seat_id) REFERENCES seats (event_id, seat_id)
);
CREATE INDEX seat_claims_reservation ON seat_claims (reservation_id);

-- Messages already applied, per consumer: the SQS worker records SQS message ids, Kafka
-- consumers record the records' messageId; written in the same transaction as the effect.
CREATE TABLE processed_messages (
    consumer     text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Transactional outbox: domain events written with the change that causes them, published
-- to Kafka by the relay in id order.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    message_id  uuid        NOT NULL UNIQUE,
    topic       text        NOT NULL,
    key         text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Counters kept by the stats consumer, per event.
CREATE TABLE event_stats (
    event_id   text        NOT NULL,
    counter    text        NOT NULL,
    value      bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, counter)
);
