-- 0004: what several server nodes on one database share besides the
-- steps.
--
-- The server's own settings (store.Store's KeepSetting), the first node's
-- value kept for every node: its identity, sealed with the master key by
-- the server, so that every node and every new container presents the
-- certificate agents pinned.
CREATE TABLE settings (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

-- Named holds that nodes take in turn, each until a time unless renewed
-- (store.Store's TakeLease): a listening worker is dialled by the node
-- that holds its lease, and by no other.
CREATE TABLE leases (
    name   text PRIMARY KEY,
    holder text NOT NULL,
    until  timestamptz NOT NULL
);
