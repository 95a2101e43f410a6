# Local stand-in for redis:7-alpine (docker-compose.local.yml): Debian's Redis 7 with the
# official image's docker-entrypoint.sh contract (started as root, it runs redis-server as the
# redis user), data in /data.
ARG BASE_IMAGE=minitwitter-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
    && mkdir /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
