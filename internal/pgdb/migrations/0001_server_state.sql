-- 0001: the server's state, as the embedded store (server/server.go and
-- beside it) keeps it in buckets: steps, the queue, cancels, submission
-- keys, workers and when they left, abandoned steps, users, API keys and
-- trust. A FIRST DRAFT: the PostgreSQL store that uses it comes next, and
-- what it finds wanting becomes 0002, not an edit here once released.
-- Task logs and artifacts stay files, as they are now.
--
-- Times are timestamptz (UTC in, UTC out); "no time" is NULL where the Go
-- records use a zero time. Sealed columns are bytea, encrypted with the
-- master key by the server before they get here: the database never sees
-- a sensitive value in the clear.

-- The steps (StepRecord). A step's ID is its ticket on the agent.
CREATE TABLE steps (
    id               text PRIMARY KEY,
    -- The queue's order. IDs are time-ordered on one node, but nodes'
    -- clocks differ; a sequence orders submissions across all of them.
    -- A step queued again keeps its place, as it does now.
    queue_seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- What was asked for: a worker, or any worker of a pool with every one
    -- of labels.
    worker           text,
    pool             text,
    labels           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    CHECK (worker IS NOT NULL OR pool IS NOT NULL),
    queue_deadline   timestamptz,
    -- Who submitted it: the admin's username or "key:NAME", and the ID of
    -- the API key (no foreign key: the step outlives a revoked key, and
    -- the ID still says whose it was).
    submitted_by     text NOT NULL DEFAULT '',
    submitter_key    text,
    -- A container step's image ('' for a host step): it goes only to a
    -- worker with a Docker Engine.
    image            text NOT NULL DEFAULT '',
    -- The StartStepRequest, sealed: it holds sensitive values and
    -- registry passwords.
    sealed           bytea NOT NULL,
    state            text NOT NULL CHECK (state IN ('queued', 'running', 'complete')),
    -- The worker running it (no foreign key: a forgotten worker's steps
    -- keep its name).
    assigned         text,
    -- The last sequence stored in the task log (a uint64 in Go; sequences
    -- never come near 2^63).
    log_cursor       bigint NOT NULL DEFAULT 0 CHECK (log_cursor >= 0),
    -- Sticky: the store sets it with OR, so a driver writing an older copy
    -- of the record cannot undo a cancel (what the cancels bucket does now).
    cancel_requested boolean NOT NULL DEFAULT false,
    outcome          text,
    exit_code        integer,
    signal           text,
    reason           text,
    -- Every output variable, a sensitive one's value masked; the names of
    -- the sensitive ones; and their real values, sealed.
    output_variables jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(output_variables) = 'object'),
    sensitive_outputs text[] NOT NULL DEFAULT '{}',
    sealed_outputs   bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CHECK (state <> 'complete' OR finished_at IS NOT NULL)
);

-- Dispatch reads the queue in order, and only the queue (what the queue
-- bucket indexes now). Nodes dispatching at once will take steps with
-- SELECT … FOR UPDATE SKIP LOCKED over this.
CREATE INDEX steps_queue ON steps (queue_seq) WHERE state = 'queued';
-- Resuming a node's running steps, and finding a worker's.
CREATE INDEX steps_running ON steps (assigned) WHERE state = 'running';
-- Retention and the storage bound remove completed steps oldest first.
CREATE INDEX steps_finished ON steps (finished_at) WHERE state = 'complete';
-- GET /api/steps lists steps newest first, optionally by state.
CREATE INDEX steps_state_created ON steps (state, created_at);

-- A step's artifacts, downloaded into the artifacts directory (Artifact).
CREATE TABLE step_artifacts (
    step_id    text NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    name       text NOT NULL,
    path       text NOT NULL,
    file       text NOT NULL,
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    PRIMARY KEY (step_id, name)
);

-- A client's submission key → the step it made, so that a submission
-- retried after a lost reply does not run the step twice. Removing the
-- step (retention) frees its key, as now.
CREATE TABLE submission_keys (
    key        text PRIMARY KEY,
    step_id    text NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX submission_keys_step ON submission_keys (step_id);

-- The workers the server knows (WorkerRecord). Whether one is connected,
-- and to which node, is not stored here: it is each node's to know.
CREATE TABLE workers (
    name       text PRIMARY KEY,
    thumbprint text NOT NULL CHECK (thumbprint ~ '^[0-9a-f]{64}$'),
    -- A listening worker's address; NULL for a polling one.
    address    text,
    pools      text[] NOT NULL DEFAULT '{}',
    labels     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    -- When it went away, if it is away (the workers-left bucket), so that
    -- --worker-lost-after counts from then across restarts.
    left_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Steps ended LOST while their worker was away → that worker: when it
-- comes back they are cancelled and collected there. No foreign keys:
-- an entry must outlive the step's record (retention) and the worker's
-- (it may be forgotten, and return under the same name).
CREATE TABLE abandoned_steps (
    step_id      text PRIMARY KEY,
    worker       text NOT NULL,
    abandoned_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX abandoned_steps_worker ON abandoned_steps (worker);

-- The API's users: today the one admin, PBKDF2-HMAC-SHA256.
CREATE TABLE users (
    username   text PRIMARY KEY,
    salt       bytea NOT NULL,
    hash       bytea NOT NULL,
    iterations integer NOT NULL CHECK (iterations > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- API keys (APIKey), found by the SHA-256 of their secret, which is never
-- stored.
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    secret_sha256 bytea NOT NULL UNIQUE CHECK (length(secret_sha256) = 32),
    name          text NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('reader', 'submitter', 'admin')),
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz,
    expires_at    timestamptz
);

-- Agent thumbprints trusted through the API (beside --trust).
CREATE TABLE trust (
    thumbprint text PRIMARY KEY CHECK (thumbprint ~ '^[0-9a-f]{64}$'),
    added_at   timestamptz NOT NULL DEFAULT now()
);
