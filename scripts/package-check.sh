#!/usr/bin/env bash
# The Debian package, end to end: build it with Debian's tooling (dpkg-buildpackage, in a copy
# of the tree under /tmp), lint it, install it with apt, check what it installed (program, native
# scanner, conffile, state directory, man pages, systemd units, attachment to Squid), run
# `patchcache selftest` against the installed Squid, purge it, and check that nothing is left and
# that /etc/squid is byte for byte as it was.
#
# Run as root on Debian 12: bash scripts/package-check.sh
# Installs the build tools it lacks (apt-get update first) and keeps them; everything else,
# including any package that installing patchcache pulled in (squid on a bare machine), is
# removed again. Idempotent: a run interrupted while the package was installed is cleaned up
# by the next one. Exits non-zero on the first problem.
set -euo pipefail
cd "$(dirname "$0")/.."
src="$(pwd -P)"

# Debian's tools, whatever a user put first on PATH (a pyenv shim, a venv's bin/).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset VIRTUAL_ENV PYTHONPATH
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

PKG=patchcache
BIN=/usr/bin/patchcache
VENV=/usr/lib/patchcache
STATE_DIR=/var/lib/patchcache
SNIPPET=/etc/squid/conf.d/patchcache.conf
UNITS=(patchcache-icap.service patchcache-prefetch.service)
# Present only while this script has the package installed: a later run knows it may purge it.
MARK=/var/lib/patchcache-package-check.installed
SELFTEST_TIMEOUT=${PACKAGE_CHECK_SELFTEST_TIMEOUT:-900}

started=$(date +%s)
say() { echo "package-check: $*" >&2; }
fail() {
    echo "package-check: FAIL: $*" >&2
    exit 1
}
step() { say "[$(($(date +%s) - started))s] $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and purges a package"
[ -r /etc/debian_version ] || fail "not a Debian system"

installed_pkgs() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 ~ /^[ih]i/ {print $2}' | LC_ALL=C sort
}
pkg_known() {
    # installed, half-installed or only configuration files left
    local status
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null || true)
    [ -n "$status" ] && [ "${status:1:1}" != "n" ]
}
snapshot_tree() {
    # Every path with its type, mode, owner and link target, then every file's SHA-256.
    local dir=$1
    if [ ! -e "$dir" ]; then
        echo "absent: $dir"
        return
    fi
    (cd "$dir" && find . -printf '%p %y %m %u:%g %l\n' | LC_ALL=C sort)
    (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}
purge_pkg() {
    apt-get purge -y -qq "$PKG" >"$work/purge.log" 2>&1 || {
        cat "$work/purge.log" >&2
        return 1
    }
    rm -f "$MARK"
}

work=$(mktemp -d /tmp/patchcache-package-check.XXXXXX)
# apt's sandbox user reads the .deb from here.
chmod 0755 "$work"
cleanup() {
    local rc=$?
    if [ -e "$MARK" ] && pkg_known; then
        say "cleaning up: purging the package this run installed"
        apt-get purge -y -qq "$PKG" >/dev/null 2>&1 || say "could not purge $PKG: do it by hand"
        rm -f "$MARK"
        # and what installing it pulled in
        if [ -f "$work/pkgs.before" ]; then
            local pulled
            pulled=$(installed_pkgs | LC_ALL=C comm -13 "$work/pkgs.before" -)
            if [ -n "$pulled" ]; then
                # shellcheck disable=SC2086 # package names, one per word
                apt-get purge -y -qq $pulled >/dev/null 2>&1 || say "could not purge $pulled"
            fi
        fi
    fi
    rm -rf "$work"
    if [ "$rc" -eq 0 ]; then
        say "ok ($(($(date +%s) - started))s)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -------------------------------------------------------------------------- a clean start
if pkg_known; then
    if [ -e "$MARK" ]; then
        step "a package left by an interrupted run: purging it"
        purge_pkg || fail "could not purge the package an earlier run left"
    else
        fail "$PKG is installed (or its configuration is left) and was not installed by this" \
            "script: this check installs and purges its own; purge it first (apt-get purge $PKG)"
    fi
fi
rm -f "$MARK"

# -------------------------------------------------------------------------- build tools
build_tools=(dpkg-dev debhelper dh-virtualenv python3 python3-dev python3-venv gcc lintian)
missing=()
for tool in "${build_tools[@]}"; do
    dpkg -s "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    step "installing build tools: ${missing[*]} (kept afterwards)"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$work/tools.log" 2>&1 || {
        cat "$work/tools.log" >&2
        fail "could not install ${missing[*]}"
    }
fi

# -------------------------------------------------------------------------- build
step "building with dpkg-buildpackage -us -uc -b in a copy under $work"
mkdir "$work/$PKG"
# The tree as it is (tracked and new files, not ignored ones such as .venv or build/).
(cd "$src" && git ls-files -z -co --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$work/$PKG"
if ! (cd "$work/$PKG" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
    grep -v "^WARNING: Location 'file:" "$work/build.log" | tail -n 60 >&2
    fail "dpkg-buildpackage failed (log above)"
fi
debs=("$work"/"${PKG}"_*.deb)
if [ "${#debs[@]}" -ne 1 ] || [ ! -f "${debs[0]}" ]; then
    fail "expected one ${PKG}_*.deb, got: ${debs[*]}"
fi
deb=${debs[0]}
changes=("$work"/"${PKG}"_*.changes)
step "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB)"

# -------------------------------------------------------------------------- lintian
step "lintian (errors fail; warnings and overrides are listed in README 'For packagers')"
lintian_rc=0
lintian --fail-on error --info "${changes[0]}" >"$work/lintian.log" 2>&1 || lintian_rc=$?
grep -v 'running with root privileges is not recommended' "$work/lintian.log" >&2 || true
[ "$lintian_rc" -eq 0 ] || fail "lintian reported errors (exit $lintian_rc)"

# -------------------------------------------------------------------------- before install
step "snapshot of the machine before install"
snapshot_tree /etc/squid >"$work/etc-squid.before"
installed_pkgs >"$work/pkgs.before"
# Which of the package's own paths already exist (directories such as /usr/share/man/man1).
dpkg-deb --fsys-tarfile "$deb" | tar -tf - | sed -e 's|^\./|/|' -e 's|/$||' -e '/^$/d' \
    | LC_ALL=C sort -u >"$work/deb-paths"
while IFS= read -r path; do
    if [ -e "$path" ] || [ -L "$path" ]; then echo "$path"; fi
done <"$work/deb-paths" >"$work/deb-paths.preexisting"
for path in /etc/patchcache "$STATE_DIR" "$VENV" "$SNIPPET" "$BIN"; do
    if [ -e "$path" ] || [ -L "$path" ]; then
        fail "$path exists before install: not a clean machine for this check"
    fi
done
squid_before=no
if command -v squid >/dev/null 2>&1; then
    squid_before=yes
    squid -k parse >"$work/parse.before" 2>&1 ||
        fail "Squid's configuration does not parse before install (squid -k parse)"
fi

# -------------------------------------------------------------------------- install
step "apt-get install $deb"
touch "$MARK"
if ! apt-get install -y -qq "$deb" >"$work/install.log" 2>&1; then
    cat "$work/install.log" >&2
    fail "apt-get install failed"
fi
grep -E '^patchcache: ' "$work/install.log" >&2 || true
[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$PKG")" = "ii " ] || fail "$PKG not installed"

# -------------------------------------------------------------------------- the program
step "checks of the installed package"
version=$("$BIN" --version) || fail "$BIN --version failed"
say "  $version"
expected_version=$(dpkg-query -W -f='${Version}' "$PKG")
[[ "$version" == *"${expected_version%%-*}"* ]] || fail "$BIN says '$version', package is $expected_version"
runuser -u proxy -- "$BIN" --version >/dev/null || fail "user proxy cannot run $BIN"
scan=$("$VENV/bin/python" -c 'import patchcache.icap_service._scan as m; print(m.__file__)') ||
    fail "the native ICAP scanner does not import from $VENV"
[[ "$scan" == "$VENV/"* ]] || fail "native scanner imported from $scan, not from $VENV"
say "  native scanner: $scan"

# -------------------------------------------------------------------------- conffile, state
dpkg-query -W -f='${Conffiles}\n' "$PKG" | grep -q ' /etc/patchcache/rules.toml ' ||
    fail "/etc/patchcache/rules.toml is not a conffile"
"$BIN" check-config --rules /etc/patchcache/rules.toml >/dev/null ||
    fail "the shipped rules.toml does not validate"
# Its commented examples are valid too: uncommented, they still pass check-config.
grep -v -e '^#   ' -e '^#$' -e '^# ' /etc/patchcache/rules.toml | sed 's/^#\([a-z[]\)/\1/' \
    >"$work/rules-uncommented.toml"
"$BIN" check-config --rules "$work/rules-uncommented.toml" >/dev/null ||
    fail "the commented examples in rules.toml do not validate once uncommented"
[ "$(stat -c %U:%G "$STATE_DIR")" = "proxy:proxy" ] || fail "$STATE_DIR is not owned by proxy"

# -------------------------------------------------------------------------- man pages
mapfile -t commands < <("$BIN" --help | sed -n '/^Commands:/,$p' | awk 'NR > 1 && NF {print $1}')
[ "${#commands[@]}" -gt 0 ] || fail "no commands in patchcache --help"
for page in patchcache "${commands[@]/#/patchcache-}"; do
    [ -f "/usr/share/man/man1/$page.1.gz" ] || fail "man page $page(1) missing"
done
say "  man pages: patchcache(1) and ${#commands[@]} commands"

# -------------------------------------------------------------------------- Squid
if [ -f "$SNIPPET" ]; then
    grep -q "^store_id_program $BIN store-id" "$SNIPPET" || fail "$SNIPPET does not run $BIN"
    squid -k parse >"$work/parse.after" 2>&1 || {
        cat "$work/parse.after" >&2
        fail "Squid's configuration does not parse with patchcache attached"
    }
    say "  attached to Squid: $SNIPPET, squid -k parse ok"
    # The helper exactly as Squid runs it, as Squid's user, on the shipped rules and state.
    helper=$(sed -n 's/^store_id_program //p' "$SNIPPET")
    url='http://download.windowsupdate.com/c/msdownload/update/software/secu/2024/01/windows10.0-kb5034122-x64_0123456789abcdef0123456789abcdef01234567.msu'
    # shellcheck disable=SC2086 # the helper's command line, as Squid splits it
    answer=$(printf '0 %s\n' "$url" | runuser -u proxy -- $helper 2>"$work/helper.err") || true
    [[ "$answer" == "0 OK store-id="* ]] || {
        cat "$work/helper.err" >&2
        fail "the store-ID helper answered '$answer'"
    }
    say "  store-ID helper as proxy: ${answer:0:60}..."
else
    fail "$SNIPPET missing: the package attaches to Squid at install (see README)"
fi

# -------------------------------------------------------------------------- systemd units
for unit in "${UNITS[@]}"; do
    file=/lib/systemd/system/$unit
    [ -f "$file" ] || fail "$file missing"
    for directive in User=proxy NoNewPrivileges=yes ProtectSystem=strict \
        ReadWritePaths=$STATE_DIR PrivateTmp=yes Restart=on-failure; do
        grep -qx "$directive" "$file" || fail "$unit lacks $directive"
    done
done
if command -v systemd-analyze >/dev/null 2>&1; then
    (cd /lib/systemd/system && systemd-analyze verify "${UNITS[@]}") >"$work/verify.log" 2>&1 || {
        cat "$work/verify.log" >&2
        fail "systemd-analyze verify failed"
    }
    # Notes about units of other packages are not ours to fix.
    if grep -i 'patchcache' "$work/verify.log" >&2; then
        fail "systemd-analyze verify complains about our units"
    fi
    say "  units: systemd-analyze verify ok"
else
    say "  units: systemd-analyze not available, verify SKIPPED"
fi
if [ -d /run/systemd/system ]; then
    for unit in "${UNITS[@]}"; do
        systemctl is-enabled --quiet "$unit" || fail "$unit not enabled"
        # Started at install: give Restart= a moment before asking.
        for _ in $(seq 1 20); do
            systemctl is-active --quiet "$unit" && break
            sleep 0.5
        done
        systemctl is-active --quiet "$unit" || {
            systemctl status --no-pager "$unit" >&2 || true
            fail "$unit is not running"
        }
    done
    say "  units: enabled and running under systemd"
else
    say "  units: systemd is not PID 1 here: start under systemd SKIPPED; running their" \
        "ExecStart as proxy instead"
    for link in /etc/systemd/system/multi-user.target.wants/"${UNITS[0]}" \
        /etc/systemd/system/multi-user.target.wants/"${UNITS[1]}"; do
        [ -L "$link" ] || fail "$link missing: the unit is not enabled"
    done
    # The ICAP service's command line, on a free port instead of 1344 (this machine may run
    # another ICAP server there).
    icap_cmd=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/patchcache-icap.service)
    icap_cmd=${icap_cmd/--listen 127.0.0.1:1344/--listen 127.0.0.1:0}
    # setpriv, not runuser: it execs, so the signal reaches the service itself, as systemd's.
    : >"$work/icap.err"
    # shellcheck disable=SC2086
    setpriv --reuid=proxy --regid=proxy --init-groups -- $icap_cmd 2>"$work/icap.err" &
    icap_pid=$!
    for _ in $(seq 1 60); do
        grep -q 'listening on' "$work/icap.err" && break
        kill -0 "$icap_pid" 2>/dev/null || break
        sleep 0.5
    done
    grep -q 'listening on' "$work/icap.err" || {
        cat "$work/icap.err" >&2
        kill "$icap_pid" 2>/dev/null || true
        fail "the ICAP unit's command did not listen"
    }
    kill -TERM "$icap_pid"
    wait "$icap_pid" || {
        cat "$work/icap.err" >&2
        fail "the ICAP unit's command did not stop cleanly on SIGTERM"
    }
    prefetch_cmd=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/patchcache-prefetch.service)
    # shellcheck disable=SC2086
    setpriv --reuid=proxy --regid=proxy --init-groups -- $prefetch_cmd 2>"$work/prefetch.err" &
    prefetch_pid=$!
    sleep 3
    kill -0 "$prefetch_pid" 2>/dev/null || {
        cat "$work/prefetch.err" >&2
        fail "the prefetch unit's command exited"
    }
    kill -TERM "$prefetch_pid"
    wait "$prefetch_pid" || {
        cat "$work/prefetch.err" >&2
        fail "the prefetch unit's command did not stop cleanly on SIGTERM"
    }
    say "  units: both commands run as proxy and stop cleanly on SIGTERM"
fi

# -------------------------------------------------------------------------- selftest
step "patchcache selftest against the installed Squid ($(command -v squid))"
timeout "$SELFTEST_TIMEOUT" "$BIN" selftest --squid "$(command -v squid)" \
    --junit "$work/selftest.xml" || fail "patchcache selftest failed"

# -------------------------------------------------------------------------- report
step "patchcache report --format html with Debian's matplotlib"
wu="http://download.windowsupdate.com/d/msdownload/update/software/secu/2026/11"
wu="$wu/windows10.0-kb5040000-x64_0123456789abcdef0123456789abcdef01234567.msu"
{
    echo "1764460800.000    120 127.0.0.1 TCP_MISS/200 1048576 GET $wu - HIER_DIRECT/127.0.0.1 application/octet-stream"
    echo "1764464400.000     80 127.0.0.2 TCP_HIT/200 1048576 GET $wu - HIER_NONE/- application/octet-stream"
} >"$work/access.log"
"$BIN" report --access-log "$work/access.log" --format html --out "$work/report.html" \
    2>"$work/report.err" || { cat "$work/report.err" >&2; fail "patchcache report failed"; }
charts=$(grep -o "<svg" "$work/report.html" | wc -l)
[ "$charts" -eq 3 ] || fail "the HTML report has $charts charts, not 3 (matplotlib not found?)"
say "  report: HTML with $charts charts"

# -------------------------------------------------------------------------- purge
step "apt-get purge $PKG"
dpkg -L "$PKG" | grep -vx "/." | LC_ALL=C sort -u >"$work/dpkg-L"
purge_pkg || fail "apt-get purge failed"
grep -E '^patchcache: ' "$work/purge.log" >&2 || true
! pkg_known || fail "$PKG still known to dpkg after purge"
leftovers=()
while IFS= read -r path; do
    if { [ -e "$path" ] || [ -L "$path" ]; } && ! grep -qxF "$path" "$work/deb-paths.preexisting"; then
        leftovers+=("$path")
    fi
done < <(cat "$work/dpkg-L" "$work/deb-paths" | LC_ALL=C sort -u)
for path in /etc/patchcache "$STATE_DIR" "$VENV" "$SNIPPET" "$BIN" \
    /etc/systemd/system/multi-user.target.wants/"${UNITS[0]}" \
    /etc/systemd/system/multi-user.target.wants/"${UNITS[1]}"; do
    if [ -e "$path" ] || [ -L "$path" ]; then leftovers+=("$path"); fi
done
while IFS= read -r path; do leftovers+=("$path"); done < <(
    find /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
        /etc/squid -name '*patchcache*' 2>/dev/null
)
[ "${#leftovers[@]}" -eq 0 ] || fail "left after purge: ${leftovers[*]}"

# Packages that installing patchcache pulled in (squid on a bare machine) go too.
installed_pkgs >"$work/pkgs.after"
mapfile -t pulled < <(LC_ALL=C comm -13 "$work/pkgs.before" "$work/pkgs.after")
if [ "${#pulled[@]}" -gt 0 ]; then
    step "purging what the install pulled in: ${pulled[*]}"
    apt-get purge -y -qq "${pulled[@]}" >"$work/purge-deps.log" 2>&1 || {
        cat "$work/purge-deps.log" >&2
        fail "could not purge ${pulled[*]}"
    }
    installed_pkgs >"$work/pkgs.after"
fi
cmp -s "$work/pkgs.before" "$work/pkgs.after" || {
    diff "$work/pkgs.before" "$work/pkgs.after" >&2 || true
    fail "the installed packages differ from before"
}
snapshot_tree /etc/squid >"$work/etc-squid.after"
cmp -s "$work/etc-squid.before" "$work/etc-squid.after" || {
    diff "$work/etc-squid.before" "$work/etc-squid.after" >&2 || true
    fail "/etc/squid differs from before install"
}
if [ "$squid_before" = yes ]; then
    squid -k parse >/dev/null 2>&1 || fail "Squid's configuration does not parse after purge"
fi
say "purged: no file left, /etc/squid as before, packages as before"
