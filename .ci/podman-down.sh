#!/usr/bin/env bash
# Undo .ci/podman-up.sh: kill the test containers still running, remove the project image and
# the state directory (shim, env.sh, wheels). The base and dependency images stay as a cache for
# the next .ci/podman-up.sh on this machine; `--purge` removes every llem image too.
set -uo pipefail
DIR="${LLEM_PODMAN_DIR:-/tmp/llem-podman}"
IMAGE="${LLEM_CONTAINER_IMAGE:-localhost/llem-test:latest}"
command -v podman >/dev/null || { rm -rf "$DIR"; exit 0; }
[ -f "$DIR/containers.conf" ] && export CONTAINERS_CONF="$DIR/containers.conf"

# Containers the Docker runner started (named llem-<hex>), only those.
for name in $(podman ps -a --format '{{.Names}}' | grep -E '^llem-[0-9a-f]{12}$'); do
    podman rm -f "$name" >/dev/null 2>&1 || true
done
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
if [ "${1:-}" = "--purge" ]; then
    for image in $(podman images --format '{{.Repository}}:{{.Tag}}' \
            | grep -E '^localhost/llem-(base|deps|test):'); do
        podman rmi -f "$image" >/dev/null 2>&1 || true
    done
fi
podman image prune -f >/dev/null 2>&1 || true
rm -rf "$DIR"
echo "podman-down: removed $IMAGE and $DIR"
