"""Whether the installed Fast DDS can do DDS security (SROS2): ``mbpl security check``.

SROS2 needs the DDS security plugins built into ``libfastdds``: authentication (``builtin.PKI-DH``),
access control (``builtin.Access-Permissions``) and cryptography (``builtin.AES-GCM-GMAC``). A
library built without them (as the one in the project's wheels is) holds none of these plugin names,
so scanning its bytes for them answers the question without loading it. Without them the graph's
protection is the run token (README, "On a real robot").
"""

from __future__ import annotations

import sys
from pathlib import Path

PLUGINS = {"authentication": b"builtin.PKI-DH", "access_control": b"builtin.Access-Permissions",
           "cryptography": b"builtin.AES-GCM-GMAC"}


def find_fastdds(prefixes: tuple[str, ...] | None = None) -> Path | None:
    """The first ``libfastdds.so*`` under <prefix>/lib (default: this interpreter's environment)."""
    for prefix in prefixes or (sys.prefix,):
        found = sorted(Path(prefix, "lib").glob("libfastdds.so*"))
        if found:
            return found[0]
    return None


def security_plugins(library: str | Path) -> dict[str, bool]:
    """{plugin: present} for the DDS security plugins of a Fast DDS library file."""
    data = Path(library).read_bytes()
    return {name: marker in data for name, marker in PLUGINS.items()}


def check(out: object = None) -> int:
    """Print what the installed Fast DDS supports; 0 if SROS2 can be enabled, 1 if not."""
    write = (out or sys.stdout).write  # type: ignore[attr-defined]
    library = find_fastdds()
    if library is None:
        write("no libfastdds.so in this environment: install ROS 2 with Fast DDS, then check again\n")
        return 1
    found = security_plugins(library)
    for name, present in found.items():
        write(f"{name:15s} {'present' if present else 'ABSENT'}   ({PLUGINS[name].decode()})\n")
    if all(found.values()):
        write(f"{library}: SROS2 can be enabled (README: 'On a real robot')\n")
        return 0
    write(f"{library}: built without the DDS security plugins; SROS2 cannot be enabled from it. The "
          "sampler's run token still binds the graph to one run.\n")
    return 1
