#!/bin/sh
# compose's one-shot `provision` service (compose.yaml): makes each fedmq service's broker user,
#   sh services/provision.sh NAME:ROLE ...     (ROLE: worker, client or coordinator)
# with the password in $FEDMQ_SECRETS_DIR/NAME_password (default /run/secrets, where compose
# puts its secrets), through `fedmq broker add-user` (a worker also gets its queue and binding),
# then exits. In compose it runs in the broker's network namespace, where guest (loopback only,
# see broker_config/README.md) may use the management API on 127.0.0.1. Running it again is
# safe: --update sets each password and permissions again (to the same values).
set -eu
mgmt=${FEDMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}
secrets=${FEDMQ_SECRETS_DIR:-/run/secrets}
vhost=${FEDMQ_VHOST:-/}
[ $# -gt 0 ] || { echo "provision: give NAME:ROLE arguments" >&2; exit 2; }

# the management API may answer a moment after the broker's healthcheck passes
tries=0
until fedmq queues --management-url "$mgmt" --vhost "$vhost" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    fedmq queues --management-url "$mgmt" --vhost "$vhost" >/dev/null   # prints why
    exit 1
  fi
  sleep 2
done

for spec in "$@"; do
  name=${spec%%:*}
  role=${spec#*:}
  fedmq broker add-user "$name" --role "$role" --password-file "$secrets/${name}_password" \
    --update --vhost "$vhost" --management-url "$mgmt"
done
