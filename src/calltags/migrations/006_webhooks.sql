-- Outbound webhooks: where call events are sent, and the outbox of their deliveries.
CREATE TABLE webhooks (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- A URL template: [call_uuid], [tag:NAME|fallback] ... replaced at each delivery.
    url               text NOT NULL,
    method            text NOT NULL DEFAULT 'POST' CHECK (method IN ('POST', 'GET')),
    events            text[] NOT NULL,
    -- Filters: every one given must match for an event to make a delivery.
    publisher_id      bigint,
    campaign          text,
    tag_filters       jsonb NOT NULL DEFAULT '[]',
    enabled           boolean NOT NULL DEFAULT true,
    -- HMAC-SHA256 secret of X-Calltags-Signature. Kept as is: the server signs with it.
    secret            text NOT NULL,
    -- Deliveries that ended `failed` since the last one delivered; at
    -- CALLTAGS_WEBHOOK_DISABLE_AFTER the webhook is disabled, saying why.
    failures_in_row   integer NOT NULL DEFAULT 0,
    disabled_reason   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- The outbox: the workers insert a batch's deliveries in the transaction that commits
-- the batch's log rows and call records; arq jobs send them. One delivery per webhook,
-- event and source (the postback entry's id, or the call for call.connected and
-- call.ended), so a batch delivered twice makes no delivery twice.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    webhook_id       bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event            text NOT NULL,
    source           text NOT NULL,
    call_uuid        text,
    -- The caller the event is about (E.164), so that erasing a caller can find its
    -- deliveries, whose bodies hold the number and the tags.
    caller_number    text,
    method           text NOT NULL,
    -- The URL and body as sent, the same on every attempt (the body empty for GET).
    url              text NOT NULL,
    body             text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      smallint,
    last_error       text,
    -- The last attempt's time from sending the request to the answer, ms.
    latency_ms       integer,
    -- When the event happened (the postback's arrival, the connect, the end).
    occurred_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (webhook_id, event, source)
);

CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, created_at, id);
CREATE INDEX webhook_deliveries_call ON webhook_deliveries (call_uuid, created_at, id);
CREATE INDEX webhook_deliveries_caller ON webhook_deliveries (caller_number);
-- The workers' sweep: pending deliveries whose attempt is due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
