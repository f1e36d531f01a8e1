-- 0004: the server's own settings (store.Store's KeepSetting), the first
-- node's value kept for every node: its identity, sealed with the master
-- key by the server, so that every node and every new container presents
-- the certificate agents pinned.
CREATE TABLE settings (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
