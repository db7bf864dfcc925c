-- The admission log: per event, leaves in order, every complete subtree hash, signed heads.
-- Append-only: triggers refuse UPDATE, DELETE and TRUNCATE of entries, nodes and heads, and
-- a log's size may only grow, so no write path can rewrite what a tree head has covered.

CREATE TABLE admission_log_sizes (
    event_id text   PRIMARY KEY,
    size     bigint NOT NULL DEFAULT 0 CHECK (size >= 0)
);

CREATE TABLE admission_log_entries (
    event_id    text        NOT NULL,
    idx         bigint      NOT NULL CHECK (idx >= 0),
    leaf        bytea       NOT NULL,
    -- The queue-events record id: a redelivered record is not appended twice.
    record_id   text        NOT NULL,
    appended_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, idx),
    UNIQUE (event_id, record_id)
);

CREATE TABLE admission_log_nodes (
    event_id text     NOT NULL,
    level    smallint NOT NULL CHECK (level >= 0 AND level < 64),
    idx      bigint   NOT NULL CHECK (idx >= 0),
    hash     bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (event_id, level, idx)
);

CREATE TABLE admission_log_heads (
    event_id  text        NOT NULL,
    size      bigint      NOT NULL CHECK (size >= 0),
    root      bytea       NOT NULL CHECK (length(root) = 32),
    sth       text        NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, size)
);

CREATE FUNCTION admission_log_refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the admission log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE FUNCTION admission_log_size_only_grows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR NEW.size < OLD.size OR NEW.event_id <> OLD.event_id THEN
        RAISE EXCEPTION 'the admission log is append-only: its size cannot shrink'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER admission_log_entries_append_only BEFORE UPDATE OR DELETE ON admission_log_entries
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_log_entries_no_truncate BEFORE TRUNCATE ON admission_log_entries
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_log_nodes_append_only BEFORE UPDATE OR DELETE ON admission_log_nodes
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_log_nodes_no_truncate BEFORE TRUNCATE ON admission_log_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_log_heads_append_only BEFORE UPDATE OR DELETE ON admission_log_heads
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_log_heads_no_truncate BEFORE TRUNCATE ON admission_log_heads
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_log_sizes_grow_only BEFORE UPDATE OR DELETE ON admission_log_sizes
    FOR EACH ROW EXECUTE FUNCTION admission_log_size_only_grows();
CREATE TRIGGER admission_log_sizes_no_truncate BEFORE TRUNCATE ON admission_log_sizes
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
