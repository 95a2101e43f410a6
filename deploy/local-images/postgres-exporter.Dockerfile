# Local stand-in for prometheus-community/postgres-exporter (docker-compose.local.yml): Debian's
# exporter, reading DATA_SOURCE_URI / _USER / _PASS_FILE as the official one does.
ARG BASE_IMAGE=minitwitter-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus-postgres-exporter wget \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log
USER nobody
EXPOSE 9187
ENTRYPOINT ["/usr/bin/prometheus-postgres-exporter"]
