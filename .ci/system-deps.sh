#!/usr/bin/env bash
# Install the Debian packages fedmq's tests and data loaders use, when they are missing:
#   docker-compose          tests/test_compose.py validates compose.yaml with `docker-compose config`
#   dataset-fashion-mnist   Fashion-MNIST under /usr/share/datasets/fashion-mnist (never downloaded)
#   chromium chromium-driver  tests/test_dashboard.py reads `fedmq dashboard` in headless Chromium
# Only as root, quietly, and never failing the caller: a missing package makes the tests that
# need it skip with a reason instead. Safe to run repeatedly.
set -u
PACKAGES=(docker-compose dataset-fashion-mnist chromium chromium-driver)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system-deps.sh: already installed: ${PACKAGES[*]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps.sh: missing ${missing[*]}; install them as root with apt-get" >&2
  exit 0
fi
echo "system-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq >/dev/null 2>&1; then
  echo "system-deps.sh: apt-get update failed; trying the package lists already here" >&2
fi
if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  echo "system-deps.sh: installed ${missing[*]}"
else
  echo "system-deps.sh: could not install ${missing[*]} (tests that need them will skip)" >&2
fi
exit 0
