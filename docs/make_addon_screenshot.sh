#!/usr/bin/env bash
# Make docs/addon-panel.png: the "Render on Farm" panel in Blender's real UI, after a
# real submit, render and download on a local farm (a bf-server and a bf-node).
#
#   docs/make_addon_screenshot.sh
#
# It is the add-on's UI test (tests/test_addon_ui.py) run with BLENDERFARM_SCREENSHOT
# set: Debian's Blender under Xvfb (software OpenGL), the Properties editor maximized
# on the Output tab, captured with ImageMagick's `import -window root`. Needs the
# project's venv (make venv) and: apt-get install -y blender xvfb imagemagick
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in xvfb-run import blender; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make_addon_screenshot: $tool is missing: apt-get install -y xvfb imagemagick blender" >&2
        exit 1
    fi
done

out="$PWD/docs/addon-panel.png"
raw="$(mktemp --suffix=.png)"
trap 'rm -f "$raw"' EXIT
BLENDERFARM_SCREENSHOT="$raw" .venv/bin/pytest -q -p no:cacheprovider tests/test_addon_ui.py
# Same pixels, smaller file: strip the timestamps and compress harder.
convert "$raw" -strip -define png:compression-level=9 "$out"
echo "$out"
