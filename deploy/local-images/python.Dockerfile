# Local stand-in for python:3.11-slim-bookworm, for machines that reach no image registry
# (scripts/containers.sh base). Debian bookworm's own Python 3.11, `python` on PATH, pip and venv
# available, no build tools. Built FROM the locally bootstrapped Debian base, which carries this
# host's CA bundle for downloads during local builds; never published.
ARG BASE_IMAGE=minitwitter-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
    && ln -s /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8
CMD ["python3"]
