#!/bin/sh
# Writes a random password for each broker user compose.yaml logs in with, to
# services/secrets/<user>.password, unless that file exists already. compose hands each file to
# its service only (and to `provision`, which sets it on the broker). The directory is private
# (0700) and ignored by git and by docker builds; the files are readable (0644) because compose
# bind-mounts them as they are and the containers run as an unprivileged user.
set -eu
dir=$(dirname "$0")/secrets
mkdir -p "$dir"
chmod 700 "$dir"
for user in alice bob charlie testing coordinator; do
  file="$dir/$user.password"
  [ -e "$file" ] && continue
  head -c 18 /dev/urandom | base64 | tr '+/' '-_' > "$file"
  chmod 644 "$file"
  echo "make-secrets: wrote $file"
done
