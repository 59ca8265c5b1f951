#!/usr/bin/env bash
# Make the venv of one Blender release's `bpy` module from PyPI, once: .cache/bpyXY-venv.
#
#   tests/bpy_env.sh VERSION [VENV_DIR]     VERSION: 4.5 or 5.0 (any X.Y PyPI has);
#                                           prints the venv's python on its last line
#
# The add-on tests use 4.5, the module-node tests 5.0. A bpy wheel from PyPI is
# ~370 MB. It and its dependencies are kept in pip's cache folder
# (~/.cache/pip/blenderfarm-bpyXY/, or under $PIP_CACHE_DIR), so a deleted venv comes
# back without the network; a clean machine (CI) downloads them there first. (pip's own
# HTTP cache is not relied on: it may be off, or the index may forbid caching.) Needs a
# Python 3.11 (bpy 4.5 and 5.0 are built for CPython 3.11 only): $PYTHON, else
# python3.11, else python3. $BPY_SPEC replaces the requirement (default bpy==X.Y.*).
# Exit 2 on a bad VERSION, 3 when no usable Python is found, 4 when the install fails
# (no network and nothing kept): the tests skip on 3 and 4, saying why.
set -euo pipefail

if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+\.[0-9]+$ ]]; then
    echo "bpy_env: give the bpy version as X.Y (for example: tests/bpy_env.sh 5.0)" >&2
    exit 2
fi
release="$1"
tag="${release//./}"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${2:-$here/.cache/bpy$tag-venv}"
spec="${BPY_SPEC:-bpy==$release.*}"
wheels="${PIP_CACHE_DIR:-$HOME/.cache/pip}/blenderfarm-bpy$tag"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("bpy") is None)' 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi

py=""
for candidate in "${PYTHON:-}" python3.11 python3; do
    if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        py="$candidate"
        break
    fi
done
if [ -z "$py" ]; then
    echo "bpy_env: no Python 3.11 found (set PYTHON=/path/to/python3.11)" >&2
    exit 3
fi

rm -rf "$venv"
mkdir -p "$(dirname "$venv")" "$wheels"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
install() { "${pip[@]}" install --quiet --no-index --find-links "$wheels" "$spec" >&2; }
# From the kept wheels if they are there; else download them first, then the same.
if ! install 2>/dev/null; then
    if ! "${pip[@]}" download --quiet --dest "$wheels" "$spec" >&2 || ! install; then
        rm -rf "$venv"  # half-made: it must not pass the check above next time
        echo "bpy_env: could not install $spec (no network and no wheels in $wheels?)" >&2
        exit 4
    fi
fi
echo "$venv/bin/python"
