#!/usr/bin/env bash
# Creates or reuses .venv, installs the pinned requirements and the project, builds the ROS 2
# interfaces (mbpl_msgs) into the venv with colcon. Idempotent: each step is skipped when the
# inputs it depends on have not changed (stamps in .venv/.mbpl-stamps).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv"
stamps="$venv/.mbpl-stamps"
py=${PYTHON:-python3}

log() { printf '[bootstrap] %s\n' "$*"; }

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment in .venv ($($py --version))"
  "$py" -m venv "$venv"
fi
mkdir -p "$stamps"

req_hash=$(hash_of requirements.txt)
if [ "$(cat "$stamps/requirements" 2>/dev/null)" != "$req_hash" ]; then
  log "installing pinned requirements (first run takes a few minutes)"
  pip_log="$venv/pip-install.log"
  { "$venv/bin/python" -m pip install --upgrade pip && "$venv/bin/python" -m pip install -r requirements.txt; } \
    > "$pip_log" 2>&1 || { tail -30 "$pip_log"; log "pip install failed (full log: $pip_log)"; exit 1; }
  echo "$req_hash" > "$stamps/requirements"
fi

proj_hash=$(hash_of pyproject.toml)
if [ "$(cat "$stamps/project" 2>/dev/null)" != "$proj_hash" ] \
   || ! "$venv/bin/python" -c 'import mbpl_core, mbpl_sim, mbpl_ros' 2>/dev/null; then
  log "installing the mbpl packages (editable)"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e . > "$venv/pip-editable.log" 2>&1 \
    || { cat "$venv/pip-editable.log"; log "editable install failed"; exit 1; }
  echo "$proj_hash" > "$stamps/project"
fi

# Offscreen rendering for videos of rollouts (optional: everything else works without it).
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing libosmesa6 for offscreen rendering"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null) \
      || log "warning: libosmesa6 could not be installed; rendering will be unavailable"
  else
    log "warning: libosmesa6 missing and not root; rendering will be unavailable"
  fi
fi

if [ -d ros2_ws/src/mbpl_msgs ]; then
  msgs_hash=$(find ros2_ws/src/mbpl_msgs -type f | sort | xargs cat | sha256sum | cut -c1-16)
  if [ "$(cat "$stamps/mbpl_msgs" 2>/dev/null)" != "$msgs_hash" ] \
     || ! "$venv/bin/python" -c 'import mbpl_msgs.msg, mbpl_msgs.srv' 2>/dev/null; then
    log "building ROS 2 interfaces (mbpl_msgs) with colcon"
    (
      export VIRTUAL_ENV="$venv"
      export PATH="$venv/bin:$PATH"
      export AMENT_PREFIX_PATH="$venv"
      export CMAKE_PREFIX_PATH="$venv"
      cd ros2_ws && mkdir -p log
      colcon --log-base "$root/ros2_ws/log" build --merge-install --install-base "$venv" \
        --build-base "$root/ros2_ws/build" --packages-select mbpl_msgs \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$venv/bin/python" \
        > "$root/ros2_ws/log/colcon-build.log" 2>&1 \
        || { tail -40 "$root/ros2_ws/log/colcon-build.log"; log "colcon build failed (full log: ros2_ws/log/colcon-build.log)"; exit 1; }
    )
    "$venv/bin/python" -c 'import mbpl_msgs.msg, mbpl_msgs.srv' \
      || { log "mbpl_msgs built but does not import"; exit 1; }
    echo "$msgs_hash" > "$stamps/mbpl_msgs"
  fi
fi
log "environment ready: $venv"
