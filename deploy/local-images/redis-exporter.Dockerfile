# Local stand-in for oliver006/redis_exporter (docker-compose.local.yml): Debian's exporter at
# the official image's path, /redis_exporter. wget for the health check.
ARG BASE_IMAGE=minitwitter-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-redis-exporter wget \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
    && ln -s /usr/bin/prometheus-redis-exporter /redis_exporter
USER nobody
EXPOSE 9121
ENTRYPOINT ["/redis_exporter"]
