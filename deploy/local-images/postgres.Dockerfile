# Local stand-in for postgres:15-alpine (docker-compose.local.yml): Debian's PostgreSQL 15 with
# the official image's start-up contract: POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE
# and POSTGRES_INITDB_ARGS initialise an empty PGDATA (/var/lib/postgresql/data), then the
# server runs as the postgres user, listening on every address with scram-sha-256.
ARG BASE_IMAGE=minitwitter-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
