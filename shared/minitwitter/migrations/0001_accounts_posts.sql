-- Accounts, posts, comments, likes and follows. Counters are kept by triggers in the same
-- transaction as the write, so reads never count rows and counts never drift.

CREATE TABLE users (
    id              bigserial PRIMARY KEY,
    username        text        NOT NULL CHECK (username ~ '^[a-z0-9_]{3,30}$'),
    display_name    text        NOT NULL DEFAULT '' CHECK (char_length(display_name) <= 50),
    bio             text        NOT NULL DEFAULT '' CHECK (char_length(bio) <= 160),
    password_hash   text        NOT NULL,
    token_version   integer     NOT NULL DEFAULT 0,
    posts_count     integer     NOT NULL DEFAULT 0,
    followers_count integer     NOT NULL DEFAULT 0,
    following_count integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

CREATE TABLE follows (
    follower_id bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    followee_id bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CONSTRAINT follows_not_self CHECK (follower_id <> followee_id)
);
CREATE INDEX follows_followee_idx ON follows (followee_id, follower_id);

CREATE TABLE posts (
    id                   bigserial PRIMARY KEY,
    author_id            bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content              text        NOT NULL CHECK (char_length(content) BETWEEN 1 AND 280),
    likes_count          integer     NOT NULL DEFAULT 0,
    comments_count       integer     NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    edited_at            timestamptz,
    -- sentiment: written by the worker without touching updated_at
    sentiment_status     text        NOT NULL DEFAULT 'pending'
                         CHECK (sentiment_status IN ('pending', 'done', 'failed')),
    sentiment_label      text        CHECK (sentiment_label IN ('positive', 'neutral', 'negative')),
    sentiment_score      double precision,
    sentiment_backend    text,
    sentiment_model      text,
    sentiment_reason     text,
    sentiment_version    integer     NOT NULL DEFAULT 1,
    sentiment_attempts   integer     NOT NULL DEFAULT 0,
    sentiment_next_at    timestamptz,
    sentiment_updated_at timestamptz,
    search               tsvector GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED
);
CREATE INDEX posts_author_idx ON posts (author_id, id DESC);
CREATE INDEX posts_label_idx ON posts (sentiment_label, id DESC);
CREATE INDEX posts_search_idx ON posts USING gin (search);
CREATE INDEX posts_sentiment_todo_idx ON posts (sentiment_updated_at)
    WHERE sentiment_status IN ('pending', 'failed');

CREATE TABLE comments (
    id                   bigserial PRIMARY KEY,
    post_id              bigint      NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    author_id            bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content              text        NOT NULL CHECK (char_length(content) BETWEEN 1 AND 280),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sentiment_status     text        NOT NULL DEFAULT 'pending'
                         CHECK (sentiment_status IN ('pending', 'done', 'failed')),
    sentiment_label      text        CHECK (sentiment_label IN ('positive', 'neutral', 'negative')),
    sentiment_score      double precision,
    sentiment_backend    text,
    sentiment_model      text,
    sentiment_reason     text,
    sentiment_version    integer     NOT NULL DEFAULT 1,
    sentiment_attempts   integer     NOT NULL DEFAULT 0,
    sentiment_next_at    timestamptz,
    sentiment_updated_at timestamptz
);
CREATE INDEX comments_post_idx ON comments (post_id, id);
CREATE INDEX comments_author_idx ON comments (author_id);
CREATE INDEX comments_sentiment_todo_idx ON comments (sentiment_updated_at)
    WHERE sentiment_status IN ('pending', 'failed');

CREATE TABLE likes (
    post_id    bigint      NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, user_id)
);
CREATE INDEX likes_user_idx ON likes (user_id, post_id);

-- Idempotency-Key records for create-post and add-comment: written in the same transaction as the
-- resource, so a retried request returns the original resource even when Redis is down.
CREATE TABLE idempotency_keys (
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scope       text        NOT NULL,
    key         text        NOT NULL,
    resource_id bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Counter maintenance.
CREATE FUNCTION mt_posts_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET posts_count = posts_count + 1 WHERE id = NEW.author_id;
    ELSE
        UPDATE users SET posts_count = posts_count - 1 WHERE id = OLD.author_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER posts_count AFTER INSERT OR DELETE ON posts
    FOR EACH ROW EXECUTE FUNCTION mt_posts_count();

CREATE FUNCTION mt_follows_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE users SET following_count = following_count + 1 WHERE id = NEW.follower_id;
        UPDATE users SET followers_count = followers_count + 1 WHERE id = NEW.followee_id;
    ELSE
        UPDATE users SET following_count = following_count - 1 WHERE id = OLD.follower_id;
        UPDATE users SET followers_count = followers_count - 1 WHERE id = OLD.followee_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER follows_count AFTER INSERT OR DELETE ON follows
    FOR EACH ROW EXECUTE FUNCTION mt_follows_count();

CREATE FUNCTION mt_likes_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE posts SET likes_count = likes_count + 1 WHERE id = NEW.post_id;
    ELSE
        UPDATE posts SET likes_count = likes_count - 1 WHERE id = OLD.post_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER likes_count AFTER INSERT OR DELETE ON likes
    FOR EACH ROW EXECUTE FUNCTION mt_likes_count();

CREATE FUNCTION mt_comments_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE posts SET comments_count = comments_count + 1 WHERE id = NEW.post_id;
    ELSE
        UPDATE posts SET comments_count = comments_count - 1 WHERE id = OLD.post_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER comments_count AFTER INSERT OR DELETE ON comments
    FOR EACH ROW EXECUTE FUNCTION mt_comments_count();
