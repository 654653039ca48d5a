"""Real tools for the tests from Debian's packages: found on PATH, or installed with apt-get first (CI starts on a
fresh Debian machine, as root). Never a stand-in: a test that needs the tool fails when it cannot be had."""

from __future__ import annotations

import os
import shutil
import subprocess


def debian_binary(binary: str, package: str) -> str:
    """The path of `binary`, installing Debian's `package` first when it is missing."""
    found = shutil.which(binary)
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{binary} is not installed and apt-get is not available: install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", package]):
        print(f"debian: running {' '.join(argv)}", flush=True)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr}")
    found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"apt-get installed {package}, yet {binary} is not on PATH")
    return found
