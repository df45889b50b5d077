#!/usr/bin/env bash
# Dependency floors: build a second environment with every package that
# requirements/floors.txt names at its pinned (lowest supported) version, and
# run the non-slow test suite there. Extra arguments go to pytest.
#
#   tools/check_floors.sh                  # venv in /tmp/sktune-floors
#   FLOORS_VENV=/path/to/venv tools/check_floors.sh -x
#
# The venv is reused when it exists (pip then only checks the pins). It needs
# about 6 GB of disk: PyPI's torch wheel brings its CUDA libraries (about 3 GB
# to download), although the tests run on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FLOORS_VENV:-/tmp/sktune-floors}"
PYTHON="${PYTHON:-python3}"

# Never touch the development environment.
case "$(realpath -m "$VENV")" in
"$(pwd)/.venv" | "$(pwd)/.venv/"*)
    echo "check_floors: FLOORS_VENV must not be the project's .venv" >&2
    exit 2
    ;;
esac

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -c requirements/floors.txt -e ".[all]"

# The pins took: each package named in floors.txt is installed at its pin.
"$VENV/bin/python" - <<'EOF'
import re
import sys
from importlib.metadata import version

wrong = []
for line in open("requirements/floors.txt"):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, pin = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line).groups()
    name = name.split("[")[0]
    got = version(name)
    print(f"{name}=={got}")
    if got.split("+")[0] != pin:
        wrong.append(f"{name}: {got} installed, {pin} pinned")
print(f"python {sys.version.split()[0]}")
if wrong:
    sys.exit("check_floors: " + "; ".join(wrong))
EOF

"$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
