-- 0001: the server's state, as server/store/pgstore keeps it: steps and
-- their queue, submission keys, workers and when they left, abandoned
-- steps, users, API keys and trust. Task logs and artifacts stay files in
-- the data dir.
--
-- Each table holds what its store.Store methods promise, no more: a Go
-- zero value is '' (strings) or NULL (times, an exit code), so that a
-- record reads back as it was written. Names and IDs are COLLATE "C", so
-- that the lists sort byte by byte, as the embedded store's do, whatever
-- the database's locale. Times are timestamptz, to the microsecond.
-- Sealed columns are bytea, encrypted with the master key by the server
-- before they get here: the database never sees a sensitive value in the
-- clear.

-- The steps (StepRecord). A step's ID is its ticket on the agent; the
-- server's IDs sort by submission time, and the queue is in their order.
CREATE TABLE steps (
    id               text COLLATE "C" PRIMARY KEY,
    -- What was asked for: a worker, or any worker of a pool with every one
    -- of labels.
    worker           text NOT NULL DEFAULT '',
    pool             text NOT NULL DEFAULT '',
    labels           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    CHECK (worker <> '' OR pool <> ''),
    queue_deadline   timestamptz,
    -- Who submitted it: the admin's username or "key:NAME", and the ID of
    -- the API key (no foreign key: the step outlives a revoked key, and
    -- the ID still says whose it was).
    submitted_by     text NOT NULL DEFAULT '',
    submitter_key    text NOT NULL DEFAULT '',
    -- A container step's image ('' for a host step).
    image            text NOT NULL DEFAULT '',
    -- The StartStepRequest, sealed: it holds sensitive values and
    -- registry passwords.
    sealed           bytea NOT NULL,
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'complete')),
    -- The worker running it (no foreign key: a forgotten worker's steps
    -- keep its name).
    assigned         text NOT NULL DEFAULT '',
    -- The last sequence stored in the task log (a uint64 in Go; sequences
    -- never come near 2^63).
    log_cursor       bigint NOT NULL DEFAULT 0 CHECK (log_cursor >= 0),
    -- Sticky: the store sets it with OR, so a driver writing an older copy
    -- of the record cannot undo a cancel; read alone by the drivers.
    cancel_requested boolean NOT NULL DEFAULT false,
    outcome          text NOT NULL DEFAULT '',
    exit_code        integer,
    signal           text NOT NULL DEFAULT '',
    reason           text NOT NULL DEFAULT '',
    -- Every output variable, a sensitive one's value masked; the names of
    -- the sensitive ones; and their real values, sealed.
    output_variables jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(output_variables) = 'object'),
    sensitive_outputs text[] NOT NULL DEFAULT '{}',
    sealed_outputs   bytea,
    -- The artifacts downloaded into the artifacts directory, in order
    -- (Artifact as JSON): written with the record as a whole, as
    -- UpdateStep writes it, and never queried apart from it.
    artifacts        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(artifacts) = 'array'),
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);

-- The queue: dispatch reads the queued steps in ID order, and only them.
CREATE INDEX steps_queue ON steps (id) WHERE state = 'queued';
-- The other states' lists (running steps at start-up, completed ones for
-- retention), in ID order.
CREATE INDEX steps_state ON steps (state, id);

-- A client's submission key → the step it made, so that a submission
-- retried after a lost reply does not run the step twice. Removing the
-- step (retention) frees its key.
CREATE TABLE submission_keys (
    key     text PRIMARY KEY,
    step_id text COLLATE "C" NOT NULL REFERENCES steps (id) ON DELETE CASCADE
);
CREATE INDEX submission_keys_step ON submission_keys (step_id);

-- The workers the server knows (WorkerRecord). Whether one is connected,
-- and to which node, is not stored here: it is each node's to know.
CREATE TABLE workers (
    name       text COLLATE "C" PRIMARY KEY,
    thumbprint text NOT NULL,
    -- A listening worker's address; '' for a polling one.
    address    text NOT NULL DEFAULT '',
    pools      text[] NOT NULL DEFAULT '{}',
    labels     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object')
);

-- When a worker went away, while it is away, so that --worker-lost-after
-- counts from then across restarts. A table of its own, as the store's
-- interface has it: replacing a worker's record keeps it.
CREATE TABLE workers_left (
    name    text COLLATE "C" PRIMARY KEY,
    left_at timestamptz NOT NULL
);

-- Steps ended LOST while their worker was away → that worker: when it
-- comes back they are cancelled and collected there. No foreign keys:
-- an entry must outlive the step's record (retention) and the worker's
-- (it may be forgotten, and return under the same name).
CREATE TABLE abandoned_steps (
    step_id text COLLATE "C" PRIMARY KEY,
    worker  text NOT NULL
);
CREATE INDEX abandoned_steps_worker ON abandoned_steps (worker);

-- The API's users: today the one admin, PBKDF2-HMAC-SHA256.
CREATE TABLE users (
    username   text PRIMARY KEY,
    salt       bytea NOT NULL,
    hash       bytea NOT NULL,
    iterations integer NOT NULL
);

-- API keys (APIKey), found by the SHA-256 of their secret, which is never
-- stored. Names are unique while a key lives.
CREATE TABLE api_keys (
    secret_sha256 bytea PRIMARY KEY CHECK (length(secret_sha256) = 32),
    id            text NOT NULL UNIQUE,
    name          text NOT NULL UNIQUE,
    role          text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz,
    expires_at    timestamptz
);

-- Agent thumbprints trusted through the API (beside --trust).
CREATE TABLE trust (
    thumbprint text COLLATE "C" PRIMARY KEY
);
