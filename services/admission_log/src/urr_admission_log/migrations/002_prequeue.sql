-- The pre-queue publications (issue 19): the commitment before the pre-queue opens, then the
-- frozen roster and the revealed secret at sale start. Written once: a redelivered or
-- republished record changes nothing, and rows are never rewritten or deleted.

CREATE TABLE admission_prequeues (
    event_id       text        PRIMARY KEY,
    commitment     text        NOT NULL CHECK (commitment ~ '^[0-9a-f]{64}$'),
    prequeue_start text        NOT NULL,
    sale_start     text        NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT now(),
    -- Set once, at the reveal.
    size           bigint      CHECK (size >= 0),
    root           text        CHECK (root ~ '^[0-9a-f]{64}$'),
    secret         text        CHECK (secret ~ '^([0-9a-f]{2})+$'),
    revealed_at    timestamptz
);

CREATE TABLE admission_prequeue_members (
    event_id text   NOT NULL REFERENCES admission_prequeues (event_id),
    idx      bigint NOT NULL CHECK (idx >= 0),
    member   text   NOT NULL CHECK (member ~ '^([0-9a-f]{2})+$'),
    PRIMARY KEY (event_id, idx)
);

CREATE FUNCTION admission_prequeue_reveal_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_id <> OLD.event_id OR NEW.commitment <> OLD.commitment
        OR NEW.prequeue_start <> OLD.prequeue_start OR NEW.sale_start <> OLD.sale_start
        OR OLD.root IS NOT NULL THEN
        RAISE EXCEPTION 'a published pre-queue never changes'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER admission_prequeues_reveal_once BEFORE UPDATE ON admission_prequeues
    FOR EACH ROW EXECUTE FUNCTION admission_prequeue_reveal_once();
CREATE TRIGGER admission_prequeues_no_delete BEFORE DELETE ON admission_prequeues
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_prequeues_no_truncate BEFORE TRUNCATE ON admission_prequeues
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_prequeue_members_append_only
    BEFORE UPDATE OR DELETE ON admission_prequeue_members
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_prequeue_members_no_truncate BEFORE TRUNCATE ON admission_prequeue_members
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
