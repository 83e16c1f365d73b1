#!/usr/bin/env bash
# The in-Krita tests (tests/krita_plugin/in_krita) against Krita 5.2 as well.
#
# Debian 12 ships Krita 5.1.5, which `python -m pytest` runs. Debian 13 (trixie) ships
# Krita 5.2.9: this script puts it in a chroot (debootstrap, about 1 minute and 600 MB
# the first time, kept in build/krita52/), shares /tmp and this checkout with it, and
# runs the same tests with `krita` and `kritarunner` taken from there. The backend and
# pytest stay outside; Krita reaches the backend on 127.0.0.1 as usual.
#
# Needs root (or sudo) for debootstrap, chroot and bind mounts, unshare (util-linux)
# and deb.debian.org.
# Usage: scripts/krita52_tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
base="$repo/build/krita52"
root="$base/root"
mirror="${KRITA52_MIRROR:-http://deb.debian.org/debian}"

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if [ ! -x "$root/usr/bin/kritarunner" ] || [ ! -d "$root/usr/lib/python3/dist-packages/PyQt5" ]; then
    if ! command -v debootstrap >/dev/null; then
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    fi
    $sudo mkdir -p "$root"
    $sudo debootstrap --variant=minbase trixie "$root" "$mirror" >"$base.debootstrap.log" 2>&1 \
        || { tail -20 "$base.debootstrap.log"; exit 1; }
    $sudo chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends krita python3-pyqt5 >"$base.install.log" 2>&1 \
        || { tail -20 "$base.install.log"; exit 1; }
fi

# The mounts below live in a private mount namespace: they vanish with this script
# however it ends, so no later `rm -rf build` can reach /tmp or the checkout through them.
if [ -z "${KRITA52_NAMESPACE:-}" ]; then
    exec $sudo env PATH="$PATH" KRITA52_NAMESPACE=1 unshare --mount --propagation private "$0" "$@"
fi
sudo=""  # root from here on

# /proc, /dev and /sys for Krita itself; /tmp for pytest's folders, the X socket and
# xvfb-run's auth file; the checkout at the same path, read-only, for the test scripts.
for path in /proc /dev /sys /tmp "$repo"; do
    mkdir -p "$root$path"
    mount --bind "$path" "$root$path"
done
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
