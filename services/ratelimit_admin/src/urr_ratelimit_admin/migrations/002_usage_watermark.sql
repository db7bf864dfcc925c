-- The snapshot scheduler's progress: every hour before `next_hour` has its final rows. It moves
-- in the transaction that writes those rows, so a restart neither skips nor re-counts an hour.
CREATE TABLE rl_usage_watermark (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    next_hour  timestamptz NOT NULL CHECK (extract(epoch FROM next_hour)::bigint % 3600 = 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Usage across tenants by period (the admin view without a tenant filter).
CREATE INDEX rl_usage_snapshots_period ON rl_usage_snapshots (period_start, tenant_id, policy_id);
