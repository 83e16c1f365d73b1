#!/usr/bin/env bash
# The in-Krita tests (tests/krita_plugin/in_krita) against newer Kritas than the host's.
#
# Debian 12 ships Krita 5.1.5, which `python -m pytest` runs. Newer Debian suites carry
# the newer Kritas: trixie 5.2.9, sid 5.3.4 (Qt5), experimental 6.0.4 (Qt6, PyQt6). For
# each suite named, this script puts that Krita in a chroot (debootstrap, about a minute
# and 2 GB the first time, kept in build/krita-<suite>/), shares /tmp and this checkout
# with it, and runs the same tests with `krita` and `kritarunner` taken from there. The
# backend and pytest stay outside; Krita reaches the backend on 127.0.0.1 as usual.
#
# Packages come from the Debian mirror this machine's own apt sources name (or
# $KRITA_CHROOT_MIRROR). Runs as root (debootstrap, chroot and bind mounts; CI is
# root), with the project's virtual environment active, and needs unshare (util-linux).
# Usage: scripts/krita_chroot_tests.sh SUITE... [-- pytest arguments]
#   e.g. scripts/krita_chroot_tests.sh trixie sid experimental
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

suites=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
        trixie | sid | experimental) suites+=("$1") ;;
        *) echo "krita_chroot_tests: unknown suite '$1' (trixie, sid or experimental)" >&2; exit 2 ;;
    esac
    shift
done
[ "${1:-}" = "--" ] && shift
if [ ${#suites[@]} -eq 0 ]; then
    echo "usage: $0 SUITE... [-- pytest arguments]   (SUITE: trixie, sid, experimental)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "krita_chroot_tests: needs root; try: sudo env PATH=\"\$PATH\" $0 ${suites[*]}" >&2
    exit 2
fi

# Everything below runs in a private mount namespace: debootstrap's mounts and ours
# vanish with this script however it ends, so no later `rm -rf build` can reach /dev,
# /tmp or the checkout through them.
if [ -z "${KRITA_CHROOT_NAMESPACE:-}" ]; then
    exec env KRITA_CHROOT_NAMESPACE=1 unshare --mount --propagation private \
        "$repo/scripts/krita_chroot_tests.sh" "${suites[@]}" -- "$@"
fi

# The Debian mirror of this machine's apt sources: the first URI of a source whose
# suites include this machine's own release (one-line or deb822 format).
debian_mirror() {
    if [ -n "${KRITA_CHROOT_MIRROR:-}" ]; then
        echo "$KRITA_CHROOT_MIRROR"
        return
    fi
    local codename
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    local files=() file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] && files+=("$file")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v release="$codename" '
        # one-line format: deb [options] URI SUITE COMPONENT...
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == release) { print $i; exit }
        }
        # deb822 format: a stanza of "Key: value" lines
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (j = 2; j <= NF; j++) if ($j == release && uri != "") { print uri; exit } }
        /^$/ { uri = "" }
    ' "${files[@]}" 2>/dev/null
}
mirror="$(debian_mirror)"
if [ -z "$mirror" ]; then
    echo "krita_chroot_tests: no Debian mirror in /etc/apt/sources*; set KRITA_CHROOT_MIRROR" >&2
    exit 2
fi
# The mirror may serve a snapshot whose Release files have expired.
apt_options=(-o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false)

# Builds build/krita-<suite>/root once: debootstrap, then Krita and the PyQt its Krita
# embeds. Experimental is not a whole suite: it is sid with Krita taken from
# experimental. The chroot is built beside its final place and moved there only when
# complete, so an interrupted build is started again from scratch.
build_chroot() {
    local suite="$1" base="$repo/build/krita-$suite"
    local root="$base/root" partial="$base/partial"
    [ -e "$base/complete" ] && return
    rm -rf "$root" "$partial"
    mkdir -p "$base"
    local bootstrap_suite="$suite" packages=(krita python3-pyqt5) target=()
    if [ "$suite" = experimental ]; then
        bootstrap_suite=sid
        packages=(krita python3-pyqt6)
        target=(-t experimental)
    fi
    debootstrap --variant=minbase "$bootstrap_suite" "$partial" "$mirror" \
        >"$base/debootstrap.log" 2>&1 || { tail -20 "$base/debootstrap.log"; return 1; }
    if [ "$suite" = experimental ]; then
        echo "deb $mirror experimental main" >"$partial/etc/apt/sources.list.d/experimental.list"
        chroot "$partial" apt-get "${apt_options[@]}" update -qq >"$base/update.log" 2>&1 \
            || { tail -20 "$base/update.log"; return 1; }
    fi
    mount --bind /proc "$partial/proc"  # for the packages' install scripts
    chroot "$partial" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" \
        install -y -qq "${target[@]}" "${packages[@]}" >"$base/install.log" 2>&1 \
        || { umount "$partial/proc"; tail -20 "$base/install.log"; return 1; }
    umount "$partial/proc"
    mv "$partial" "$root"
    touch "$base/complete"
}

# Runs the in-Krita tests with the chroot's Krita: /proc, /dev and /sys for Krita itself;
# /tmp for pytest's folders, the X socket and xvfb-run's auth file; the checkout at the
# same path, read-only, for the test scripts. krita and kritarunner are wrappers that
# start the chroot's programs in the same folder with the same environment; the tests
# find Krita's data (its plugin importer) next to the binary.
run_tests() {
    local suite="$1" base="$repo/build/krita-$suite"
    shift
    local root="$base/root"
    for path in /proc /dev /sys /tmp; do
        mkdir -p "$root$path"
        mount --rbind "$path" "$root$path"  # with what is mounted below: /dev/pts, /dev/shm
    done
    mkdir -p "$root$repo"
    mount --bind "$repo" "$root$repo"
    mount -o remount,bind,ro "$root$repo"
    mkdir -p "$base/bin"
    for program in krita kritarunner; do
        cat >"$base/bin/$program" <<EOF
#!/bin/sh
exec chroot "$root" /bin/sh -c 'cd "\$0" 2>/dev/null || cd /; exec "\$@"' "\$PWD" /usr/bin/$program "\$@"
EOF
        chmod +x "$base/bin/$program"
    done
    ln -sfn "$root/usr/share" "$base/share"
    local version
    version="$(chroot "$root" dpkg-query -W -f '${Version}' krita)"
    echo "krita_chroot_tests: Krita $version from Debian $suite"
    local status=0
    PATH="$base/bin:$PATH" python -m pytest -q tests/krita_plugin/in_krita -p no:cacheprovider \
        "$@" || status=$?
    umount -R "$root/tmp" "$root/proc" "$root/dev" "$root/sys" "$root$repo" 2>/dev/null || true
    return "$status"
}

failed=()
for suite in "${suites[@]}"; do
    started=$SECONDS
    if ! build_chroot "$suite"; then
        echo "krita_chroot_tests: could not build the $suite chroot" >&2
        failed+=("$suite")
        continue
    fi
    run_tests "$suite" "$@" || failed+=("$suite")
    echo "krita_chroot_tests: $suite done in $((SECONDS - started)) s"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "krita_chroot_tests: failed on ${failed[*]}" >&2
    exit 1
fi
