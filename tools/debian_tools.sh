#!/usr/bin/env bash
# The Go tools the distributed mode is checked with, from Debian packages (no image or release
# download: only Debian's package archive is reachable here), idempotently:
#   * the Compose v2 CLI plugin (`docker compose`): not in bookworm, so from trixie's
#     docker-compose 2.x package, into the Docker CLI plugin directory;
#   * promtool, prometheus and prometheus-pushgateway from trixie's packages, into /usr/local/bin
#     (promtool checks and unit-tests deploy/alerts.yml; the tests run a real Pushgateway).
# Only the binaries are taken from the .deb files (dpkg-deb -x), so no Debian service is started
# and the system's apt sources are left alone: trixie's index lives in the cache directory.
# The .deb files stay in the cache too: tools/build_ci_images.sh puts the same binaries in the
# Prometheus and Pushgateway images, so tests and the compose stack run one version.
#
#   tools/debian_tools.sh            # install what is missing (a second run only checks: ~0.1 s)
#   tools/debian_tools.sh --debs     # also make sure the cached .deb files exist; print their dir
#
# env: MLOPS_DEB_CACHE (default /var/cache/mlops-debs), DEBIAN_MIRROR (default http://deb.debian.org/debian),
#      MLOPS_TOOLS_SUITE (default trixie), DOCKER_CLI_PLUGINS (default /usr/local/lib/docker/cli-plugins),
#      MLOPS_TOOLS_BIN (default /usr/local/bin). Needs root for the default directories.
set -euo pipefail

CACHE=${MLOPS_DEB_CACHE:-/var/cache/mlops-debs}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${MLOPS_TOOLS_SUITE:-trixie}
PLUGINS=${DOCKER_CLI_PLUGINS:-/usr/local/lib/docker/cli-plugins}
BIN=${MLOPS_TOOLS_BIN:-/usr/local/bin}
WANT_DEBS=0
[[ "${1:-}" == "--debs" ]] && WANT_DEBS=1

say() { echo "[debian_tools] $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# binary path inside the package -> where it goes
declare -A TARGET=(
    [docker-compose]="usr/libexec/docker/cli-plugins/docker-compose:$PLUGINS/docker-compose"
    [promtool]="usr/bin/promtool:$BIN/promtool"
    [prometheus]="usr/bin/prometheus:$BIN/prometheus"
    [prometheus-pushgateway]="usr/bin/prometheus-pushgateway:$BIN/prometheus-pushgateway"
)
PACKAGES=(docker-compose promtool prometheus prometheus-pushgateway)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dest=${TARGET[$pkg]#*:}
    [[ -x "$dest" ]] || missing+=("$pkg")
done
if ((WANT_DEBS)); then
    for pkg in "${PACKAGES[@]}"; do
        compgen -G "$CACHE/${pkg}_*.deb" >/dev/null || { [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg"); }
    done
fi

if ((${#missing[@]})); then
    # A private apt configuration: trixie's index in the cache dir, the system's sources untouched.
    mkdir -p "$CACHE/lists/partial" "$CACHE/apt-cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main" >"$CACHE/sources.list"
    APT=(-q -o "Dir::Etc::SourceList=$CACHE/sources.list" -o Dir::Etc::SourceParts=/dev/null
         -o "Dir::State::Lists=$CACHE/lists" -o "Dir::Cache=$CACHE/apt-cache" -o Debug::NoLocking=1
         -o APT::Sandbox::User=root)
    need_download=()
    for pkg in "${missing[@]}"; do
        compgen -G "$CACHE/${pkg}_*.deb" >/dev/null || need_download+=("$pkg")
    done
    if ((${#need_download[@]})); then
        say "downloading ${need_download[*]} from $SUITE (log: /tmp/debian_tools-apt.log)"
        { apt-get "${APT[@]}" update && (cd "$CACHE" && apt-get "${APT[@]}" download "${need_download[@]}"); } \
            >/tmp/debian_tools-apt.log 2>&1 \
            || { say "apt-get failed; tail of /tmp/debian_tools-apt.log:"; tail -20 /tmp/debian_tools-apt.log >&2; exit 1; }
    fi
    for pkg in "${missing[@]}"; do
        src=${TARGET[$pkg]%%:*} dest=${TARGET[$pkg]#*:}
        debs=("$CACHE/${pkg}"_*.deb)
        deb=${debs[-1]}
        [[ -x "$dest" ]] && continue
        tmp=$(mktemp -d)
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./$src"
        mkdir -p "$(dirname "$dest")"
        install -m 0755 "$tmp/$src" "$dest.tmp" && mv -f "$dest.tmp" "$dest"
        rm -rf "$tmp"
        say "$pkg: $(basename "$deb") -> $dest"
    done
fi

# fail here, not in the tests, when a binary does not run on this system
docker_plugin_version=$("$PLUGINS/docker-compose" version --short)
say "docker compose $docker_plugin_version, promtool $("$BIN/promtool" --version 2>&1 | awk 'NR==1 {print $3}'),"\
" pushgateway $("$BIN/prometheus-pushgateway" --version 2>&1 | awk 'NR==1 {print $3}') ($(elapsed "$t0")s)"
((WANT_DEBS)) && echo "$CACHE"
exit 0
