# The scaled cloud stack's registry database: Debian's PostgreSQL (server,
# initdb, pg_isready, the modules initdb loads) with exactly the shared
# libraries ldd lists for them, Debian's dash as /bin/sh (initdb runs the
# server through it, and it runs postgres-entrypoint), the time zone files,
# on an empty image (nothing is pulled).
# Build context: a staging folder made by docker/build-images.sh.
FROM scratch
ARG PG_MAJOR
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/lib/postgresql/${PG_MAJOR}/bin:/bin \
    PGDATA=/var/lib/postgresql/${PG_MAJOR} \
    POSTGRES_PASSWORD_FILE=/var/lib/postgresql/devbridge.password \
    TZ=UTC
EXPOSE 5432
# Fast shutdown: the default (SIGTERM, smart) waits for every client to go.
STOPSIGNAL SIGINT
CMD ["postgres-entrypoint"]
