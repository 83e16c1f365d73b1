#!/usr/bin/env bash
# The in-Krita tests (tests/krita_plugin/in_krita) against Krita 5.2 as well.
#
# Debian 12 ships Krita 5.1.5, which `python -m pytest` runs. Debian 13 (trixie) ships
# Krita 5.2.9: this script puts it in a chroot (debootstrap, about 1 minute and 600 MB
# the first time, kept in build/krita52/), shares /tmp and this checkout with it, and
# runs the same tests with `krita` and `kritarunner` taken from there. The backend and
# pytest stay outside; Krita reaches the backend on 127.0.0.1 as usual.
#
# Runs as root (debootstrap, chroot and bind mounts; CI is root), with the project's
# virtual environment active, and needs unshare (util-linux) and deb.debian.org.
# Usage: scripts/krita52_tests.sh [pytest arguments]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
base="$repo/build/krita52"
root="$base/root"
mirror="${KRITA52_MIRROR:-http://deb.debian.org/debian}"

if [ "$(id -u)" -ne 0 ]; then
    echo "krita52_tests: needs root; try: sudo env PATH=\"\$PATH\" $0" >&2
    exit 2
fi

# Everything below runs in a private mount namespace: debootstrap's mounts and ours
# vanish with this script however it ends, so no later `rm -rf build` can reach /dev,
# /tmp or the checkout through them.
if [ -z "${KRITA52_NAMESPACE:-}" ]; then
    exec env KRITA52_NAMESPACE=1 unshare --mount --propagation private \
        "$repo/scripts/krita52_tests.sh" "$@"
fi

# The chroot is built beside its final place and moved there only when complete, so an
# interrupted build is started again from scratch.
if [ ! -e "$base/complete" ]; then
    rm -rf "$root" "$base/partial"
    mkdir -p "$base"
    debootstrap --variant=minbase trixie "$base/partial" "$mirror" \
        >"$base/debootstrap.log" 2>&1 || { tail -20 "$base/debootstrap.log"; exit 1; }
    mount --bind /proc "$base/partial/proc"  # for the packages' install scripts
    chroot "$base/partial" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends krita python3-pyqt5 >"$base/install.log" 2>&1 \
        || { tail -20 "$base/install.log"; exit 1; }
    umount "$base/partial/proc"
    mv "$base/partial" "$root"
    touch "$base/complete"
fi

# /proc, /dev and /sys for Krita itself; /tmp for pytest's folders, the X socket and
# xvfb-run's auth file; the checkout at the same path, read-only, for the test scripts.
for path in /proc /dev /sys /tmp; do
    mkdir -p "$root$path"
    mount --rbind "$path" "$root$path"  # with what is mounted below: /dev/pts, /dev/shm
done
mkdir -p "$root$repo"
mount --bind "$repo" "$root$repo"
mount -o remount,bind,ro "$root$repo"

# krita and kritarunner from the chroot, started in the same folder with the same
# environment; the tests find Krita's data (its plugin importer) next to the binary.
mkdir -p "$base/bin"
for program in krita kritarunner; do
    cat >"$base/bin/$program" <<EOF
#!/bin/sh
exec chroot "$root" /bin/sh -c 'cd "\$0" 2>/dev/null || cd /; exec "\$@"' "\$PWD" /usr/bin/$program "\$@"
EOF
    chmod +x "$base/bin/$program"
done
ln -sfn "$root/usr/share" "$base/share"
echo "krita52_tests: Krita $(chroot "$root" dpkg-query -W -f '${Version}' krita) from Debian trixie"

PATH="$base/bin:$PATH" python -m pytest -q tests/krita_plugin/in_krita -p no:cacheprovider "$@"
