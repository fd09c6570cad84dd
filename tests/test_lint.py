"""The code passes ruff with the project's configuration (ruff.toml)."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
