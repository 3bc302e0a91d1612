"""Shared fixtures for the pytest suites: an isolated warehouse and reports folder per test, and a
helper that runs the `ptrader` command line in a subprocess, as a user would."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (runs in CI; skip locally with -m 'not slow')")
    config.addinivalue_line("markers", "gpu: needs CUDA and CuPy; skipped cleanly without them")
    config.addinivalue_line("markers", "llm: talks to a model server (loopback fake or ptrader llm serve); run serially, never in parallel")


@pytest.fixture
def env(tmp_path):
    "Environment with the warehouse and reports pointed into the test's temporary folder."
    e = dict(os.environ)
    e["PTRADER_DB"] = str(tmp_path / "w.duckdb")
    e["PTRADER_REPORTS"] = str(tmp_path / "reports")
    e.pop("PTRADER_AUDIT_DB", None)  # the audit trail goes beside the test's warehouse
    return e


@pytest.fixture
def cli(env):
    "Run `ptrader ARGS...` in a subprocess; returns the CompletedProcess (text mode)."
    def run(*args, timeout=600, **kw):
        cmd = [sys.executable, "-c", "import sys; from ptrader.cli import main; sys.exit(main())", *map(str, args)]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    return run
