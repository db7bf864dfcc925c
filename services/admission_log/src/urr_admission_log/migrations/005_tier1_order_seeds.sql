-- Tier 1's own random-method seed (issue 19): the waiting room draws its order from a seed it
-- keeps itself, so it commits to it in public too (tier1_order_seed_committed) and reveals it
-- once the line is over (tier1_order_seed_revealed). Same rules as admission_order_seeds:
-- written once, revealed once, never rewritten or deleted.

CREATE TABLE admission_tier1_order_seeds (
    event_id     text        PRIMARY KEY,
    commitment   text        NOT NULL CHECK (commitment ~ '^[0-9a-f]{64}$'),
    committed_at timestamptz NOT NULL DEFAULT now(),
    seed         text        CHECK (seed ~ '^([0-9a-f]{2})+$'),
    revealed_at  timestamptz
);

CREATE TRIGGER admission_tier1_order_seeds_reveal_once BEFORE UPDATE ON admission_tier1_order_seeds
    FOR EACH ROW EXECUTE FUNCTION admission_order_seed_reveal_once();
CREATE TRIGGER admission_tier1_order_seeds_no_delete BEFORE DELETE ON admission_tier1_order_seeds
    FOR EACH ROW EXECUTE FUNCTION admission_log_refuse_rewrite();
CREATE TRIGGER admission_tier1_order_seeds_no_truncate BEFORE TRUNCATE ON admission_tier1_order_seeds
    FOR EACH STATEMENT EXECUTE FUNCTION admission_log_refuse_rewrite();
