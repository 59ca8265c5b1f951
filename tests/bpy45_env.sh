#!/usr/bin/env bash
# The Blender 4.5 `bpy` venv: tests/bpy_env.sh 4.5 [VENV_DIR] (kept for old callers).
exec "$(dirname "$0")/bpy_env.sh" 4.5 "$@"
