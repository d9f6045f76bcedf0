#!/usr/bin/env bash
# A throwaway PostgreSQL on loopback with its own data directory, for the tests.
#   .ci/postgres.sh start DIR PORT   -> prints the URL of database "runner"
#   .ci/postgres.sh restart DIR      (a database restart, as the failure tests need)
#   .ci/postgres.sh stop DIR
# initdb refuses to run as root, so the server runs as the `postgres` user.
set -euo pipefail
action=$1 dir=$2 port=${3:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] && [ "$action" = start ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
case $action in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "'$bin/initdb' -D '$dir/data' -U postgres -A trust --no-sync >/dev/null"
    as_pg "'$bin/pg_ctl' -D '$dir/data' -l '$dir/log' -w -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" start >/dev/null"
    as_pg "'$bin/createdb' -h 127.0.0.1 -p $port -U postgres runner"
    echo "postgresql://postgres@127.0.0.1:$port/runner"
    ;;
  restart)
    as_pg "'$bin/pg_ctl' -D '$dir/data' -m fast -w restart >/dev/null"
    ;;
  stop)
    [ -d "$dir/data" ] && as_pg "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop >/dev/null" || true
    ;;
esac
