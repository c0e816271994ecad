#!/usr/bin/env bash
# Provision the local control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kubectl) into a per-user cache, following the team's testbed recipe (TESTBED.md).
#
# - Honours KUBEBUILDER_ASSETS: if it names a folder with kube-apiserver and etcd, nothing is built.
# - Otherwise builds Kubernetes v1.20.2 from Debian's `kubernetes` source package once, and copies
#   Debian's etcd beside it. Later runs find the cache and return at once.
# - Idempotent and safe when two runs race: the whole build runs under an exclusive flock, and the
#   cache folder only appears (atomic rename) once it is complete.
#
# Prints the folder holding the binaries on its last line of stdout; progress goes to stderr.
set -euo pipefail

K8S_VERSION=1.20.2
# Kubernetes 1.20 vendors github.com/modern-go/reflect2 1.0.1, whose unsafe map iteration
# breaks under Go 1.18+: kube-apiserver panics (nil pointer in reflect2.UnsafeIterate) on every
# update of a custom resource. Debian's Go is 1.19, so the build swaps in Debian's reflect2
# 1.0.2 (same API, fixed for Go 1.18). The suffix names that build so an older cache is not reused.
BUILD_ID="v$K8S_VERSION-reflect2-1.0.2"
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
log() { printf 'provision-k8s: %s\n' "$*" >&2; }

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  if [[ -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
    echo "$KUBEBUILDER_ASSETS"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS does not hold executable kube-apiserver and etcd"
  exit 1
fi

cache_root="${TRO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/trust-rotation-operator}"
dest="$cache_root/k8s-$BUILD_ID"
complete() { [[ -x "$dest/kube-apiserver" && -x "$dest/kube-controller-manager" && -x "$dest/kubectl" && -x "$dest/etcd" ]]; }

if complete; then echo "$dest"; exit 0; fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.provision.lock"
log "waiting for the provisioning lock ($cache_root/.provision.lock)"
flock 9
# Another run may have finished while we waited.
if complete; then echo "$dest"; exit 0; fi

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "needs root for: $* (run as root, or install sudo)"
    return 1
  fi
}

# The build below follows TESTBED.md, written for bookworm: its source package and its Go.
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [[ "$codename" != bookworm ]]; then
  log "building the control plane needs Debian bookworm (this is ${codename:-unknown}); or set KUBEBUILDER_ASSETS to a folder with kube-apiserver, kube-controller-manager, kubectl and etcd"
  exit 1
fi

need_pkgs=()
command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
[[ -x /usr/bin/etcd ]] || need_pkgs+=(etcd-server)
command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
[[ -f "$REFLECT2_SRC/unsafe_map.go" ]] || need_pkgs+=(golang-github-modern-go-reflect2-dev)

# Source packages: one deb822 file, mirror and keyring read from the machine's own Debian list:
# deb822 (`debian.sources`, as container images have it) or one-line (`sources.list`, as the
# installer writes it; a keyring only if its `[signed-by=...]` option names one).
src_list=/etc/apt/sources.list.d/trust-rotation-operator-src.sources
new_src_list=
if [[ ! -f "$src_list" ]]; then
  uri= keyring=
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    base=/etc/apt/sources.list.d/debian.sources
    uri=$(awk '/^URIs:/ {print $2; exit}' "$base")
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$base")
  elif [[ -f /etc/apt/sources.list ]]; then
    base=/etc/apt/sources.list
    line=$(grep -m1 -E '^[[:space:]]*deb[[:space:]]' "$base" || true)
    options=$(sed -nE 's/^[^[]*\[([^]]*)\].*/\1/p' <<<"$line")
    uri=$(sed -E 's/\[[^]]*\]//' <<<"$line" | awk '{print $2}')
    keyring=$(tr ' ' '\n' <<<"$options" | sed -n 's/^signed-by=//p' | head -n1)
  fi
  if [[ -z "$uri" ]]; then
    log "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    exit 1
  fi
  log "enabling Debian source packages ($src_list, mirror $uri from $base)"
  {
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\n' "$uri"
    if [[ -n "$keyring" ]]; then printf 'Signed-By: %s\n' "$keyring"; fi
  } | as_root tee "$src_list" >/dev/null
  new_src_list=1
fi
# A fresh machine may be running its own apt at boot (apt-daily, unattended-upgrades): wait for
# its lock rather than fail.
apt_wait=(-o DPkg::Lock::Timeout=600)
if [[ ${#need_pkgs[@]} -gt 0 || -n "$new_src_list" ]]; then
  log "apt-get update"
  as_root apt-get "${apt_wait[@]}" update -qq >&2
fi
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
  log "installing ${need_pkgs[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq "${need_pkgs[@]}" >&2
  # Debian starts the etcd service it installs; the tests run their own etcd, so on a machine
  # run by systemd the package's is stopped and disabled rather than left running.
  if [[ " ${need_pkgs[*]} " == *" etcd-server "* && -d /run/systemd/system ]]; then
    as_root systemctl disable --now etcd.service >&2 || log "could not stop the etcd service the package started"
  fi
fi

scratch="$cache_root/build-scratch"
# A build killed outright may still be writing into the last scratch folder for a few seconds.
for _ in 1 2 3 4 5 6 7 8 9; do
  rm -rf "$scratch" 2>/dev/null && break
  sleep 3
done
rm -rf "$scratch"
mkdir -p "$scratch"
cd "$scratch"
log "downloading Debian's kubernetes source package"
if ! apt-get source --download-only kubernetes >&2 2>/dev/null; then
  as_root apt-get "${apt_wait[@]}" update -qq >&2
  apt-get source --download-only kubernetes >&2
fi
tar xzf kubernetes_*.orig.tar.gz
cd "kubernetes-$K8S_VERSION"
log "replacing vendored reflect2 1.0.1 with Debian's 1.0.2 (Go 1.18+ map iteration fix)"
vendored=vendor/github.com/modern-go/reflect2
rm -f "$vendored"/*.go "$vendored"/*.s
cp "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s "$vendored"/
log "building kube-apiserver, kube-controller-manager, kubectl (5 to 10 minutes on 2 cores, once)"
# Go prints little while it compiles: a heartbeat shows the build is alive.
build_started=$SECONDS
# (Its sleep is killed with it, so nothing of this script outlives it.) Neither it nor the build
# keeps the provisioning lock (fd 9) open: were this script killed, a build left running would
# otherwise hold every later run waiting for it.
( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do
    sleep 30 & nap=$!
    wait "$nap"
    log "still building ($((SECONDS - build_started))s so far)"
  done ) 9>&- &
heartbeat=$!
staging="$cache_root/.k8s-$BUILD_ID.staging.$$"
# The build runs in a process group of its own, waited for in the background, so that a run
# that stops half way (an error, Ctrl-C, SIGTERM) kills all of it, make and the go commands
# under it, and leaves neither a heartbeat nor a half-copied folder behind. Killed outright
# (SIGKILL), it still takes make with it (pdeathsig); what make had started ends on its own, and
# the next run's removal of the scratch folder below waits for it.
build=
trap 'if [[ -n "$build" ]]; then kill -- -"$build" 2>/dev/null || true; fi
      kill "$heartbeat" 2>/dev/null || true; rm -rf "$staging"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
setsid -w setpriv --pdeathsig KILL env HOME="$scratch" GOCACHE="$scratch/gocache" CGO_ENABLED=0 \
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl" >&2 9>&- &
build=$!
wait "$build"
build=
kill "$heartbeat" 2>/dev/null || true

rm -rf "$staging"
mkdir -p "$staging"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager _output/bin/kubectl "$staging/"
cp /usr/bin/etcd "$staging/etcd"
rm -rf "$dest"
mv "$staging" "$dest"
cd /
rm -rf "$scratch"
log "binaries ready in $dest"
echo "$dest"
