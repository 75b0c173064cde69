-- 0008_watchlists: each user's named watchlists and symbol universe, on the server, so every
-- device of a user sees the same lists (the old system's /api/users/universe and watchlists).
--
-- A user is the token's `sub` (connectors/gateway/auth.py). A list is an ordered array of
-- symbols, replaced whole by each change (one row, one atomic write; no join table to keep in
-- step). `revision` comes from one sequence, so it only ever grows, also across a delete and a
-- re-create of the same name: a gateway applying change notices out of order keeps the newest.
-- The bounds are the gateway's (schemas/watchlists.py), repeated here so no other writer can
-- store what the gateway would refuse; symbols are checked against `symbols` by the gateway.

CREATE SEQUENCE watchlist_revisions AS BIGINT;

CREATE TABLE watchlists (
    user_id    TEXT        NOT NULL CHECK (length(user_id) BETWEEN 1 AND 256),
    name       TEXT        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    symbols    TEXT[]      NOT NULL CHECK (cardinality(symbols) <= 500 AND array_position(symbols, NULL) IS NULL),
    revision   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, name)
);

CREATE TABLE user_universes (
    user_id    TEXT        PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 256),
    symbols    TEXT[]      NOT NULL CHECK (cardinality(symbols) <= 5000 AND array_position(symbols, NULL) IS NULL),
    revision   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
