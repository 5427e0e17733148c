#!/usr/bin/env bash
# Runs the test suite inside .venv with an isolated ROS 2 graph. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/ros_env.sh
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure (the suite must not be empty)"
  exit 1
fi
exit $rc
