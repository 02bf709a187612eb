"""The sanitizer switch of setup.py (FASTCONV_SANITIZE): the deliberately wrong op of
csrc/sanitize/planted_bug.cpp is in sanitized builds only, and a bad switch value is refused.

The normal test run checks that the planted bug never reaches a normal build; scripts/sanitize.sh
runs this file against its sanitized build, where the op must be present (the script then calls it
in a subprocess and requires AddressSanitizer's report: calling it here would end pytest).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastconv
from fastconv import _build_info

# the planted op's presence in the sanitized build: run by the sanitizer
pytestmark = pytest.mark.sanitize

REPO = Path(__file__).resolve().parents[1]


def _registered_ops():
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("fastconv::")}


def test_planted_op_only_in_sanitized_builds():
    sanitize = getattr(_build_info, "sanitize", False)  # absent in builds older than the switch
    assert sanitize in (True, False)
    assert ("_planted_oob_write" in _registered_ops()) == sanitize
    assert ("_planted_oob_write" in fastconv.build_info()["ops"]) == sanitize


def test_bad_switch_value_is_refused(tmp_path):
    # a copy of setup.py: whatever it did, it could only write next to the copy
    shutil.copy(REPO / "setup.py", tmp_path)
    env = dict(os.environ, FASTCONV_SANITIZE="yes")
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    out = (proc.stdout + proc.stderr).strip()
    assert out == "FASTCONV_SANITIZE must be 1 (sanitized build) or 0 (normal build), got 'yes'.", out
    assert not (tmp_path / "fastconv").exists()
