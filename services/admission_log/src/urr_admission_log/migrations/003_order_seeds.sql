-- The random method's seed (issue 19): its commitment SHA-256(seed) from the moment the event
-- uses the method, the seed itself once the line is over. Written once: a redelivered or
-- republished record changes nothing, and rows are never rewritten or deleted.

CREATE TABLE admission_order_seeds (
    event_id     text        PRIMARY KEY,
    commitment   text        NOT NULL CHECK (commitment ~ '^[0-9a-f]{64}$'),
    committed_at timestamptz NOT NULL DEFAULT now(),
    -- Set once, at the reveal.
    seed         text        CHECK (seed ~ '^([0-9a-f]{2})+$'),
    revealed_at  timestamptz
);

CREATE FUNCTION admission_order_seed_reveal_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_id <> OLD.event_id OR NEW.commitment <> OLD.commitment
        OR NEW.committed_at <> OLD.committed_at OR OLD.seed IS NOT NULL THEN
        RAISE EXCEPTION 'a published order seed never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER admission_order_seeds_reveal_once BEFORE UPDATE ON admission_order_seeds
    FOR EACH ROW EXECUTE FUNCTION admission_order_seed_reveal_once();
CREATE TRIGGER admission_order_seeds_no_delete BEFORE DELETE ON admission_order_seeds
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_order_seeds_no_truncate BEFORE TRUNCATE ON admission_order_seeds
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
