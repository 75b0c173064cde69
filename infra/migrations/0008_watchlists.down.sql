-- 0008_watchlists down: the users' watchlists and universes are dropped with their tables.
DROP TABLE IF EXISTS user_universes;
DROP TABLE IF EXISTS watchlists;
DROP SEQUENCE IF EXISTS watchlist_revisions;
