#!/usr/bin/env bash
# Builds ip-hash.js into a Switchyard strategy component with jco's QuickJS
# backend (componentize-qjs): the sync ABI (the host runs without the
# component-model async ABI) and every WASI import replaced by a trapping
# stub, so the component imports nothing but the `switchyard:balancer`
# interfaces.
#
# Usage: build.sh [OUT.wasm]
#   OUT defaults to <repo>/target/js-strategy/ip-hash-js.wasm.
# Needs Node.js >= 20 with npm. The pinned tools (package-lock.json) are
# installed with `npm ci` into <repo>/target/js-strategy/tools (or
# $SWITCHYARD_JS_TOOLS), again only when the lock file changes; nothing is
# written next to the sources.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/../.." && pwd)
out=${1:-$root/target/js-strategy/ip-hash-js.wasm}
tools=${SWITCHYARD_JS_TOOLS:-$root/target/js-strategy/tools}

need_node() {
    echo "error: $1" >&2
    echo "The JavaScript strategy needs Node.js 20 or newer with npm:" >&2
    echo "  Debian/Ubuntu: apt-get install nodejs npm (check 'node --version'), or" >&2
    echo "  https://nodejs.org/en/download (any installer that puts node and npm on PATH)." >&2
    exit 127
}
command -v node >/dev/null 2>&1 || need_node "'node' is not on PATH"
command -v npm >/dev/null 2>&1 || need_node "'npm' is not on PATH"
major=$(node -p 'process.versions.node.split(".")[0]')
((major >= 20)) || need_node "node $(node --version) is too old"

mkdir -p "$tools"
# One build at a time per tools directory (flock is Linux-only; elsewhere
# concurrent first builds are simply not serialised).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$tools/.lock"
    flock 9
fi

if ! cmp -s "$here/package-lock.json" "$tools/.installed-lock"; then
    echo "build.sh: installing the pinned jco toolchain into $tools" >&2
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    # `npm install --no-save` with the lock beside package.json installs
    # exactly the locked versions (integrity-checked) like `npm ci`, but
    # tolerates optional platform packages the lock could not record (a
    # registry mirror that lacks them), which `npm ci` rejects.
    (cd "$tools" && npm install --no-save --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$tools/.installed-lock"
fi

mkdir -p "$(dirname -- "$out")"
tmp="$out.$$.tmp"
trap 'rm -f -- "$tmp"' EXIT
"$tools/node_modules/.bin/jco" componentize "$here/ip-hash.js" \
    --wit "$root/wit" \
    --world-name balancer \
    --backend qjs \
    --backend-qjs-disable-async \
    --backend-qjs-stub-wasi \
    --out "$tmp" >&2
# Atomic, so a proxy watching OUT's directory never loads half a file.
mv -f -- "$tmp" "$out"
echo "$out"
