"""Every command block of the README runs as written, against a temporary NASCLOUD_HOME, from a folder
holding the repository's examples/ (so `examples/digits-local.yaml` and its `file://./nascloud-bucket` work).

A block that needs a cloud account or a long run says so on the line before it, and is then not run:

    <!-- readme-test: skip, needs AWS credentials -->

Nothing else is skipped: an unmarked block that fails (a flag that does not exist, a command that needs a
cloud) fails this test. Blocks are the fenced ones marked bash, sh, shell or console."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_e2e_local import running_hosts, wait_for

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?:bash|sh|shell|console)\n(?P<body>.*?)\n```", re.DOTALL)
SKIP = re.compile(r"<!--\s*readme-test:\s*skip,\s*(?P<why>\S.*?)\s*-->")


def blocks() -> list[tuple[int, str, str | None]]:
    """(line, script, why it is not run or None) for each command block."""
    found = []
    for match in FENCE.finditer(README):
        line = README.count("\n", 0, match.start("body")) + 1
        skip = SKIP.search(match.group("before"))
        body = "\n".join(l[2:] if l.startswith("$ ") else l for l in match.group("body").splitlines())
        found.append((line, body, skip.group("why") if skip else None))
    return found


BLOCKS = blocks()


def test_the_readme_has_command_blocks_and_each_skip_says_why():
    assert BLOCKS, "no ```bash blocks found in README.md"
    for line, _, why in BLOCKS:
        assert why is None or len(why) > 5, f"README.md line {line}: a skip marker must say why"


@pytest.fixture
def sandbox(tmp_path):
    """A working folder with the repository's examples, a fresh NASCLOUD_HOME and HOME (a block may install
    shell completion), and `nascloud` on PATH. Whatever a block launched on the local provider ends with the
    test."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    home = tmp_path / "home"
    env = {**os.environ, "NASCLOUD_HOME": str(home), "HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    yield work, env
    from nascloud.provisioners.local import LocalProvisioner

    provisioner = LocalProvisioner(root=home / "local")
    for group in provisioner.list_owned():
        provisioner.resize(group.job_id, group.name, 0)
    wait_for(lambda: not running_hosts(home), 60, "the README's local hosts to end")


RUNNABLE = [(line, script) for line, script, why in BLOCKS if why is None]  # the marked ones say why above


@pytest.mark.parametrize("line, script", RUNNABLE, ids=[f"line-{line}" for line, _ in RUNNABLE])
def test_a_readme_block_runs_as_written(sandbox, line, script):
    work, env = sandbox
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (f"README.md line {line}: exit {done.returncode}\n{script}\n"
                                  f"--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-2000:]}")
