# Local stand-in for nginxinc/nginx-unprivileged (docker-compose.local.yml): Debian's nginx,
# unprivileged, listening on 8080 with gateway/nginx.conf mounted at /etc/nginx/nginx.conf
# (which keeps its pid and temporary files under /tmp). wget for the health check.
ARG BASE_IMAGE=minitwitter-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light wget \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /etc/nginx/sites-enabled/*
USER www-data
EXPOSE 8080
STOPSIGNAL SIGQUIT
# -e stderr: nginx opens its error log before reading the configuration.
CMD ["nginx", "-e", "stderr", "-g", "daemon off;"]
