-- Durable callback deliveries, long-term logs and the local gateway's deployed-function state.

CREATE TABLE callback_deliveries (
    id              bigserial PRIMARY KEY,
    kind            text        NOT NULL,            -- 'post', 'comment', 'async-function'
    item_id         bigint,
    url             text        NOT NULL,
    payload         text        NOT NULL,
    call_id         text,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'refused')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    last_status     integer,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX callback_deliveries_due_idx ON callback_deliveries (next_attempt_at)
    WHERE status = 'pending';

-- Callback URL registered with a post or comment write, used when its verdict arrives.
CREATE TABLE sentiment_callbacks (
    id         bigserial PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('post', 'comment')),
    item_id    bigint      NOT NULL,
    version    integer     NOT NULL,
    url        text        NOT NULL,
    call_id    text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sentiment_callbacks_item_idx ON sentiment_callbacks (kind, item_id, version);

CREATE TABLE logs (
    id          bigserial PRIMARY KEY,
    ts          timestamptz NOT NULL,
    level       text        NOT NULL,
    logger      text        NOT NULL,
    message     text        NOT NULL,
    function    text,
    call_id     text,
    account_id  bigint,
    status      integer,
    duration_ms double precision,
    instance    text,
    extra       jsonb
);
CREATE INDEX logs_ts_idx ON logs (ts);
CREATE INDEX logs_function_ts_idx ON logs (function, ts);
CREATE INDEX logs_level_ts_idx ON logs (level, ts);
CREATE INDEX logs_call_id_idx ON logs (call_id);

CREATE TABLE gateway_functions (
    name        text        PRIMARY KEY,
    namespace   text        NOT NULL DEFAULT 'openfaas-fn',
    deployed    boolean     NOT NULL DEFAULT true,
    spec        jsonb       NOT NULL,            -- FunctionDeployment as last deployed
    replicas    integer     NOT NULL DEFAULT 1,
    generation  bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
