-- Seed 002's rate-limit model. Every change an operator makes is one transaction together with
-- its audit row; the audit log is append-only (a trigger refuses UPDATE, DELETE, TRUNCATE).

CREATE TABLE rl_tenants (
    id         text        PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status     text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rl_api_keys (
    id           uuid        PRIMARY KEY,
    tenant_id    text        NOT NULL REFERENCES rl_tenants (id),
    prefix       text        NOT NULL UNIQUE,
    -- SHA-256 of the whole secret; the secret itself is shown once and never stored.
    secret_hash  bytea       NOT NULL CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE rl_policies (
    id         text        PRIMARY KEY,
    tenant_id  text        REFERENCES rl_tenants (id),
    body       jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rl_quotas (
    tenant_id        text        PRIMARY KEY REFERENCES rl_tenants (id),
    monthly_requests bigint      NOT NULL CHECK (monthly_requests > 0),
    soft_alert_pct   integer     NOT NULL DEFAULT 80 CHECK (soft_alert_pct BETWEEN 1 AND 100),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per tenant x policy x hour; the snapshot writer upserts, so a re-run changes nothing.
CREATE TABLE rl_usage_snapshots (
    tenant_id      text        NOT NULL,
    policy_id      text        NOT NULL,
    period_start   timestamptz NOT NULL,
    allowed        bigint      NOT NULL DEFAULT 0,
    blocked        bigint      NOT NULL DEFAULT 0,
    shadow_blocked bigint      NOT NULL DEFAULT 0,
    quota_used     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, policy_id, period_start)
);

CREATE TABLE rl_revoked_tokens (
    jti        text        PRIMARY KEY,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- The published configuration's version: bumped in the transaction of every policy change.
CREATE TABLE rl_config_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint  NOT NULL
);
INSERT INTO rl_config_version (version) VALUES (0);

CREATE TABLE rl_audit_log (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text        NOT NULL,
    action     text        NOT NULL,
    target     text        NOT NULL,
    before     jsonb,
    after      jsonb,
    request_id text        NOT NULL
);
CREATE INDEX rl_audit_log_target ON rl_audit_log (target, id);

CREATE FUNCTION rl_audit_refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER rl_audit_log_append_only BEFORE UPDATE OR DELETE ON rl_audit_log
    FOR EACH ROW EXECUTE FUNCTION rl_audit_refuse_rewrite();
CREATE TRIGGER rl_audit_log_no_truncate BEFORE TRUNCATE ON rl_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION rl_audit_refuse_rewrite();
