-- Users of the stand-in identity provider. The auth schema keeps these tables apart from
-- other services sharing the database.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.users (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Stored lower-cased by the service; the CHECK keeps any other writer honest.
    email         text        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254
                                              AND email = lower(email)),
    display_name  text        CHECK (display_name IS NULL OR char_length(display_name) <= 100),
    password_hash text        NOT NULL CHECK (password_hash LIKE '$argon2%'),
    role          text        NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One account per address whatever its case: this index, not a prior SELECT, is what makes
-- two concurrent registrations of one address end with exactly one row.
CREATE UNIQUE INDEX users_email_lower_key ON auth.users (lower(email));
