#!/bin/sh
# The postgres image's entrypoint (run by Debian's dash, the image's only
# shell): on the first start it creates the cluster in $PGDATA, the role
# `devbridge` with the password in $POSTGRES_PASSWORD_FILE and the database
# `devbridge` it owns; then it runs the server in the foreground, with the
# arguments given.
# Runs as any uid but root (PostgreSQL refuses root).
set -eu
data=${PGDATA:?PGDATA is not set}
password_file=${POSTGRES_PASSWORD_FILE:-/var/lib/postgresql/devbridge.password}

# initdb and single-user mode look the uid up in /etc/passwd, which the image
# links here (/tmp is the container's own): an entry for whatever uid runs us.
uid=
gid=
while read -r key real _; do
  case $key in
    Uid:) uid=$real ;;
    Gid:) gid=$real ;;
  esac
done </proc/self/status
if [ "$uid" = 0 ]; then
  echo "error: PostgreSQL does not run as root: give the container another user (compose: user:)" >&2
  exit 1
fi
echo "postgres:x:$uid:$gid:PostgreSQL:/var/lib/postgresql:/bin/sh" >/tmp/passwd
echo "postgres:x:$gid:" >/tmp/group

# The marker is written last, so a start that failed half way fails again
# (initdb refuses a non-empty directory) instead of running without the role.
if [ ! -e "$data/devbridge-initialized" ]; then
  password=
  read -r password <"$password_file" || true # the file may lack a final newline
  case $password in
    "" | *[!0-9A-Za-z]*)
      echo "error: $password_file must hold one password of letters and digits" >&2
      exit 1
      ;;
  esac
  # No locale (C, bytewise order) and UTF-8: initdb needs no locale files.
  initdb --pgdata="$data" --username=postgres --encoding=UTF8 --no-locale \
    --auth-local=peer --auth-host=scram-sha-256
  # Only the cloud's role, only its database, from any address of the stack's
  # network (the port is not published); the superuser has no password.
  echo "host devbridge devbridge all scram-sha-256" >>"$data/pg_hba.conf"
  # Single-user mode: no server listens yet. exit_on_error makes a failed
  # statement fail the start.
  postgres --single -D "$data" -c exit_on_error=on postgres >/dev/null <<SQL
CREATE ROLE devbridge LOGIN PASSWORD '$password';
CREATE DATABASE devbridge OWNER devbridge;
SQL
  : >"$data/devbridge-initialized"
  echo "created the database devbridge and its role devbridge in $data"
fi

# The Unix socket in /tmp (the image's /var/run has no postgresql folder);
# arguments (such as -c max_connections=200) go to the server.
exec postgres -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
