# shellcheck shell=bash
# Shared set-up for scripts/test and scripts/demo; source it from the repository root:
#
#   source scripts/_setup.sh
#   ensure_system_packages BINARY... -- DEBIAN_PACKAGE...
#   ensure_venv
#
# ensure_system_packages: if any BINARY is missing (looked up on PATH and in the
# sbin folders; an absolute path is checked as a file), install all the
# DEBIAN_PACKAGEs with apt-get when running as root; otherwise say what to
# install and exit 1. It never starts a service.
# ensure_venv: create .venv (python3 -m venv; installs python3-venv if needed),
# then `pip install -e '.[test]'`, again only when pyproject.toml changed since
# the last successful install (sha256 kept in .venv/.pyproject.sha256). It
# puts .venv/bin first on PATH.

step() {
    printf '==> %s\n' "$*" >&2
}

have_binary() {
    # An absolute path names a file to check, e.g. a library without a binary (galera-4).
    case "$1" in /*) [ -e "$1" ]; return ;; esac
    command -v "$1" >/dev/null 2>&1 && return 0
    local dir
    for dir in /usr/local/sbin /usr/sbin /sbin; do
        [ -x "$dir/$1" ] && return 0
    done
    return 1
}

_apt_updated=no

apt_install() {
    if [ "$_apt_updated" = no ]; then
        step "apt-get update"
        apt-get -q -o DPkg::Lock::Timeout=300 update
        _apt_updated=yes
    fi
    step "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 \
        install -y --no-install-recommends "$@"
}

ensure_system_packages() {
    local binaries=() packages=() missing=() bin
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        binaries+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    packages=("$@")
    for bin in "${binaries[@]}"; do
        have_binary "$bin" || missing+=("$bin")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing ${missing[*]}; install them with:" >&2
        echo "  sudo apt-get install --no-install-recommends ${packages[*]}" >&2
        exit 1
    fi
    step "missing ${missing[*]}: installing system packages"
    apt_install "${packages[@]}"
    for bin in "${missing[@]}"; do
        have_binary "$bin" || { echo "error: $bin still missing after apt-get install" >&2; exit 1; }
    done
}

ensure_venv() {
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "error: python3 with the venv module is missing; install it with:" >&2
            echo "  sudo apt-get install --no-install-recommends python3 python3-venv" >&2
            exit 1
        fi
        apt_install python3 python3-venv
    fi
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c '' 2>/dev/null; then
        step "python3 -m venv .venv"
        python3 -m venv --clear .venv
    fi
    local want have=""
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    [ -f .venv/.pyproject.sha256 ] && have=$(cat .venv/.pyproject.sha256)
    if [ "$want" != "$have" ]; then
        step "pip install -e '.[test]' (pyproject.toml changed or first install)"
        export PIP_DISABLE_PIP_VERSION_CHECK=1
        .venv/bin/python -m pip install -q --upgrade pip
        # A venv made before the distribution was renamed (recover -> openstack-recover)
        # holds a second editable install of the same package: remove it first.
        .venv/bin/python -m pip uninstall -q -y recover 2>/dev/null || true
        .venv/bin/python -m pip install -q -e '.[test]'
        printf '%s\n' "$want" >.venv/.pyproject.sha256
    fi
    VIRTUAL_ENV="$PWD/.venv"
    PATH="$VIRTUAL_ENV/bin:$PATH"
    export VIRTUAL_ENV PATH
}
