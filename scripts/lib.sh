# Sourced by test.sh and pgo-build.sh.

# install_packages PACKAGE...: installs the Debian packages named (the caller lists only
# missing ones), as root or with passwordless sudo; otherwise says what to install and exits.
install_packages() {
    (($#)) || return 0
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        echo "installing: $* (Debian packages)" >&2
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "missing: $* (Debian/Ubuntu: sudo apt-get install $*)" >&2
        exit 1
    fi
}
