"""`nascloud estimate` and `prices` stay fast: no cloud SDK, TensorFlow, matplotlib or paramiko imported."""

import json
import subprocess
import sys

import pytest

HEAVY = ("boto3", "botocore", "google.cloud", "tensorflow", "keras", "autokeras", "matplotlib", "paramiko")

# Run the real CLI entry point, then report which heavy modules ended up in sys.modules.
PROBE = """
import json, sys
from nascloud.cli import main
sys.argv = ["nascloud", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as stop:
    code = stop.code or 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}
               and any(m == h or m.startswith(h + ".") for h in HEAVY))
print("\\nIMPORTED=" + json.dumps([code, heavy]), file=sys.stderr)
"""


def probe(args: list[str], modules: tuple[str, ...] = HEAVY) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {modules!r}\n{PROBE}", json.dumps(args)],
                          capture_output=True, text=True, timeout=60)
    code, heavy = json.loads(done.stderr.strip().splitlines()[-1].split("IMPORTED=", 1)[1])
    return code, heavy, done.stderr


@pytest.mark.parametrize("args", [
    ["estimate", "--gpu", "T4", "--hours", "72", "--budget", "40"],
    ["estimate", "--trials", "20", "--epochs", "5", "--json"],
    ["prices"],
    ["prices", "--json", "--cloud", "gcp"],
])
def test_planning_commands_do_not_import_heavy_modules(args):
    code, heavy, stderr = probe(args)
    assert code == 0, stderr
    assert heavy == [], f"{' '.join(args)} imported {heavy}"


def test_an_estimate_from_flags_builds_no_pydantic_model():
    """Pydantic's model machinery costs ~70 ms (README, Speed): a flags-only estimate needs no job schema, and
    the CLI layer must not build one per option (Typer 0.29 does: a TypeAdapter for every option)."""
    code, built, stderr = probe(["estimate", "--gpu", "T4", "--hours", "72"], modules=("pydantic.main",))
    assert code == 0, stderr
    assert built == [], "estimate --gpu T4 --hours 72 loaded pydantic's models"
    code, built, stderr = probe(["estimate", "examples/digits-local.yaml"], modules=("pydantic.main",))
    assert code == 0 and built == ["pydantic.main"], stderr  # the probe sees it where a job file is read


def test_the_probe_sees_matplotlib_when_a_plot_is_asked_for(tmp_path):
    code, heavy, stderr = probe(["estimate", "--hours", "3", "--gpu", "T4", "--plot", str(tmp_path / "p.png")])
    assert code == 0, stderr
    assert "matplotlib" in heavy and "boto3" not in heavy


def test_the_local_group_engine_knows_nothing_of_the_job_it_runs():
    """The local group is the stand-in for the clouds' engines: it keeps hosts alive and obeys resize. It must
    not read (so cannot import) budgets, checkpoints, ledgers or the agent."""
    code = ("import sys, nascloud.provisioners.local\n"
            "print(sorted(m for m in sys.modules if m.startswith('nascloud')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    modules = json.loads(done.stdout.replace("'", '"'))
    forbidden = [m for m in modules if m.startswith(("nascloud.budget", "nascloud.checkpoints", "nascloud.agent",
                                                     "nascloud.jobbucket", "nascloud.cost"))]
    assert "nascloud.provisioners.local" in modules and forbidden == []
