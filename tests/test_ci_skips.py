"""Under CI=true a test that would skip for a missing server or tool fails instead (tests/fixtures/servers.py),
so CI cannot go green without running it; on a developer's machine the same test skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The three ways the suite skips: a skipif mark (requires_sshd), pytest.skip in a fixture (hypervisor_env)
# and a module-level importorskip.
NEEDS_MISSING_TOOLS = '''
import shutil

import pytest

requires_tool = pytest.mark.skipif(shutil.which("no-such-tool-xyz") is None, reason="no-such-tool-xyz is not installed")


@pytest.fixture
def server():
    pytest.skip("no-such-server is not installed")


@requires_tool
def test_with_a_tool():
    pass


def test_with_a_server(server):
    pass
'''
NEEDS_A_MISSING_MODULE = 'import pytest\n\npytest.importorskip("no_such_module_xyz")\n\n\ndef test_it():\n    pass\n'


def run_pytest(test_file: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.fixtures.servers",
                           "-rfs", str(test_file)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def missing(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "test_needs_tools.py").write_text(NEEDS_MISSING_TOOLS)
    (tmp_path / "test_needs_module.py").write_text(NEEDS_A_MISSING_MODULE)
    return tmp_path / "test_needs_tools.py", tmp_path / "test_needs_module.py"


def test_a_developer_machine_skips_what_it_cannot_run(missing):
    done = run_pytest(missing[0].parent, ci=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 skipped" in done.stdout and "error" not in done.stdout, done.stdout


def test_under_ci_every_such_skip_is_a_failure_naming_what_is_missing(missing):
    tools, module = missing
    done = run_pytest(tools, ci="true")  # both skip in the tests' setup: each is an error there
    assert done.returncode == 1 and "2 errors" in done.stdout and "skipped" not in done.stdout, done.stdout
    assert "no-such-tool-xyz is not installed" in done.stdout and "no-such-server is not installed" in done.stdout
    collected = run_pytest(module, ci="true")  # a module that cannot be collected interrupts the run
    assert collected.returncode == 2 and "1 error" in collected.stdout, collected.stdout
    assert "CI=true" in collected.stdout and "no_such_module_xyz" in collected.stdout
