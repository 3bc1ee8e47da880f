#!/usr/bin/env bash
# A real container engine for tests/containers: rootful podman (runc) behind a `docker` shim,
# and an image with this checkout installed, built without any registry.
#
#   .ci/podman-up.sh            install (if needed), configure, build images, write the shim
#   . "$LLEM_PODMAN_DIR/env.sh" then `docker` is podman and LLEM_CONTAINER_IMAGE names the image
#   .ci/podman-down.sh          remove the shim, the project image and the state directory
#
# Images (all local, full names so podman never asks a registry):
#   localhost/llem-base:bookworm   Debian bookworm minbase + python3 (mmdebstrap from the apt mirror)
#   localhost/llem-deps:<hash>     a venv with the dependencies, from wheels built on the host;
#                                  tagged by a hash of the wheel list (podman's layer cache cannot
#                                  see inside the -v mount), so it is reused while they stay the same
#   localhost/llem-test:latest     the project's own wheel on top, rebuilt every time
# Why runc, cgroupfs and lower ulimits: see the containers notes (crun rejects this host's hybrid
# cgroups; root lacks CAP_SYS_RESOURCE; no systemd). Stay on bookworm: the CPU torch wheel on the
# CI machine is cp311, bookworm's Python.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${LLEM_PODMAN_DIR:-/tmp/llem-podman}"
IMAGE="${LLEM_CONTAINER_IMAGE:-localhost/llem-test:latest}"
BASE="localhost/llem-base:bookworm"
PYTHON="${PYTHON:-python3}"
if [ "$(id -u)" -ne 0 ]; then  # rootless podman needs another setup (subuids, user cgroups)
    echo "podman-up: run as root (rootful podman is what was set up and tested)" >&2
    exit 2
fi
step() { echo "podman-up: $* ($(date +%T))"; }

# The image's Python is bookworm's 3.11 and the wheels are built here: they must match.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "podman-up: $PYTHON is not Python 3.11 (the image is Debian bookworm's 3.11);" \
        "set PYTHON to a 3.11 interpreter" >&2
    exit 2
fi

if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
    || ! command -v mmdebstrap >/dev/null; then
    step "installing podman, runc, mmdebstrap"
    apt-get update -qq
    # With Recommends: podman's network stack (netavark, aardvark-dns) comes that way.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        mmdebstrap >/dev/null
fi

mkdir -p "$DIR/bin" "$DIR/wheels" "$DIR/project"
cat > "$DIR/containers.conf" <<'CONF'
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
CONF
export CONTAINERS_CONF="$DIR/containers.conf"

# The shim: `docker` is podman with this configuration (the Docker runner looks `docker` up on
# its own PATH; a `docker` client talking to `podman system service` misreports exit codes).
PODMAN="$(command -v podman)"
cat > "$DIR/bin/docker" <<SHIM
#!/bin/sh
CONTAINERS_CONF="$DIR/containers.conf" exec "$PODMAN" "\$@"
SHIM
chmod 755 "$DIR/bin/docker"
cat > "$DIR/env.sh" <<ENV
export PATH="$DIR/bin:\$PATH"
export CONTAINERS_CONF="$DIR/containers.conf"
export LLEM_CONTAINER_IMAGE="$IMAGE"
ENV

# 1. Base image from Debian's archive (the mirror apt already uses), once per machine.
if ! podman image exists "$BASE"; then
    MIRROR="${LLEM_DEBIAN_MIRROR:-$(grep -hoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)}"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
    step "building $BASE from $MIRROR"
    # Into a file first: a failed bootstrap must not leave a truncated image behind that
    # later runs would take for the finished one.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$DIR/base.tar" "$MIRROR"
    podman import --quiet "$DIR/base.tar" "$BASE" >/dev/null
    rm -f "$DIR/base.tar"
fi

# 2. Wheels built on the host: the dependencies and this checkout (CPU torch from local disk).
step "building wheels"
rm -rf "$DIR/wheels" "$DIR/project"
mkdir -p "$DIR/wheels" "$DIR/project"
"$PYTHON" -m pip wheel -q -w "$DIR/wheels" -c ci-constraints.txt "torch==2.13.0" ".[pytorch]"
mv "$DIR"/wheels/llenergymeasure-*.whl "$DIR/project/"

# 3. Dependency image, tagged by what goes into it.
cat > "$DIR/deps.Containerfile" <<FILE
FROM $BASE
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-index --no-deps --no-compile --disable-pip-version-check \\
      /wheels/*.whl
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
FILE
HASH="$( { ls "$DIR/wheels" | LC_ALL=C sort; cat "$DIR/deps.Containerfile";
           podman image inspect --format '{{.Id}}' "$BASE"; } | sha256sum | cut -c1-16)"
DEPS="localhost/llem-deps:$HASH"
if ! podman image exists "$DEPS"; then
    step "building $DEPS"
    podman build --quiet --network none -v "$DIR/wheels:/wheels:ro" \
        -f "$DIR/deps.Containerfile" -t "$DEPS" "$DIR" >/dev/null
fi

# 4. Project image: this checkout's wheel on top.
step "building $IMAGE"
cat > "$DIR/project.Containerfile" <<FILE
FROM $DEPS
RUN pip install --no-index --no-deps --disable-pip-version-check /project/*.whl
FILE
# --no-cache: the RUN line is the same every time and podman's layer cache cannot see that the
# wheel in the -v mount changed, so a cached layer would keep the previous checkout.
podman build --quiet --no-cache --network none -v "$DIR/project:/project:ro" \
    -f "$DIR/project.Containerfile" -t "$IMAGE" "$DIR" >/dev/null

podman run --rm --network none "$IMAGE" python -c 'import llenergymeasure' \
    || { echo "podman-up: $IMAGE cannot import llenergymeasure" >&2; exit 1; }
step "ready: $IMAGE (. $DIR/env.sh puts the docker shim first on PATH)"
