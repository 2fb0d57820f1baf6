"""The local provider's group engine: a detached supervisor that keeps its size in hosts, replaces a lost one,
records each host's end with its own time, obeys resize and exits at 0. Hosts run a stand-in for the
bootstrap here (a `sleep`, an `exit`, a Python that asks who it is), so no search runs; the real bootstrap
on a local host is tests/test_e2e_local.py's."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

from nascloud.provisioners import State, get_provisioner
from nascloud.provisioners.local import LocalProvisioner, instance_pids
from tests.fixtures.search import make_bundle
from tests.test_e2e_local import wait_for

JOB = "engine-1a2b3c"


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """The job's group specs as launch makes them, at size 0 so that nothing boots until a test says what."""
    from nascloud import launching
    from nascloud.jobbucket import JobBucket

    url = make_bundle(tmp_path_factory.mktemp("engine"), JOB)
    return [dataclasses.replace(s, size=0) for s in launching.group_specs(JobBucket.open(url).bundle())]


def supervisors(folder: Path) -> list[int]:
    """Live supervisor processes of the group folder (a zombie's cmdline reads empty)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "cmdline").read_bytes().split(b"\0")[-3:-1] == [b"supervise", str(folder).encode()]:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def run_group(provider: LocalProvisioner, job_id: str, script: str, size: int = 1) -> None:
    """Give the search group's hosts `script` instead of the bootstrap, then set the group's size."""
    path = provider.root / "groups" / job_id / "search" / "group.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "script": script}))
    provider.resize(job_id, "search", size)


class Engine:
    """A local provider under tmp_path with the job's group created at size 0."""

    def __init__(self, root: Path, specs):
        self.provider = LocalProvisioner(root=root)
        self.specs = specs
        self.folder = root / "groups" / JOB / "search"
        self.provider.create_groups(specs)

    def run(self, script: str, size: int = 1) -> None:
        run_group(self.provider, JOB, script, size)

    def group(self):
        [group] = self.provider.groups(JOB)
        return group

    def hosts(self, state: State) -> list:
        return [h for h in self.group().instances if h.state == state]


@pytest.fixture
def engine(tmp_path, specs):
    made = Engine(tmp_path / "local", specs)
    yield made
    made.provider.resize(JOB, "search", 0)
    wait_for(lambda: not supervisors(made.folder), 30, "the supervisor to exit", 0.05)
    assert all(instance_pids(h.instance_id) == [] for g in made.provider.groups(JOB) for h in g.instances)


def test_creating_the_groups_twice_makes_one_group_any_process_finds(engine):
    engine.provider.create_groups(engine.specs)
    fresh = get_provisioner("local", root=engine.provider.root)  # another process's view, from the same root
    [group] = fresh.groups(JOB)
    assert (group.job_id, group.name, group.size, group.instances) == (JOB, "search", 0, ())
    assert fresh.job_url(group) == engine.specs[0].tags["nascloud-job-url"]  # gc judges it by its bucket
    assert [g.job_id for g in fresh.list_owned()] == [JOB]
    assert fresh.groups("other-000000") == []
    wait_for(lambda: not supervisors(engine.folder), 30, "the size-0 group's supervisor to exit", 0.05)


def test_the_supervisor_replaces_a_preempted_host_and_the_provider_records_its_end(engine):
    # A host whose process left its session is still the host's: the preemption takes it too.
    engine.run("setsid sleep 600 & exec sleep 600")
    first = wait_for(lambda: engine.group().live, 30, "a host", 0.05)[0]
    assert first.state == State.RUNNING and first.launched_at <= time.time()
    wait_for(lambda: len(instance_pids(first.instance_id)) == 2, 30, "the host's two processes", 0.05)

    before = time.time()
    engine.provider.preempt(first)
    after = time.time()
    assert instance_pids(first.instance_id) == []
    [ended] = engine.hosts(State.PREEMPTED)
    assert ended.instance_id == first.instance_id and before <= ended.ended_at <= after

    second = wait_for(lambda: engine.group().live, 30, "the replacement", 0.05)[0]
    assert second.instance_id != first.instance_id and second.launched_at >= ended.ended_at
    assert instance_pids(second.instance_id) and len(engine.group().live) == 1


def test_a_host_whose_bootstrap_exits_reads_terminated_with_its_end(engine):
    engine.run("exit 3")
    ended = wait_for(lambda: engine.hosts(State.TERMINATED), 30, "a host to end", 0.05)[0]
    assert ended.launched_at <= ended.ended_at <= time.time()
    assert instance_pids(ended.instance_id) == []


def test_resize_to_0_ends_every_host_and_the_supervisor_exits(engine):
    engine.run("sleep 600", size=2)
    live = wait_for(lambda: len(engine.group().live) == 2 and engine.group().live, 30, "two hosts", 0.05)
    engine.provider.resize(JOB, "search", 0, reason="the bucket is not writable")
    wait_for(lambda: not supervisors(engine.folder), 30, "the supervisor to exit", 0.05)
    group = engine.group()
    assert (group.size, group.reason, group.live) == (0, "the bucket is not writable", [])
    assert sorted(h.instance_id for h in engine.hosts(State.TERMINATED)) == sorted(h.instance_id for h in live)
    assert all(h.ended_at >= h.launched_at for h in group.instances)
    assert all(instance_pids(h.instance_id) == [] for h in live)


def test_delete_removes_the_folders_only_once_nothing_lives(engine):
    engine.run("sleep 600")
    wait_for(lambda: engine.group().live, 30, "a host", 0.05)
    engine.provider.delete(JOB)
    assert engine.group().live  # a running group is left alone
    engine.provider.resize(JOB, "search", 0)
    wait_for(lambda: not supervisors(engine.folder), 30, "the supervisor to exit", 0.05)
    engine.provider.delete(JOB)
    assert not (engine.provider.root / "groups" / JOB).exists() and engine.provider.groups(JOB) == []
    engine.provider.delete(JOB)  # what is gone is quietly gone
    engine.provider.resize(JOB, "search", 1)  # a missing group is success, and nothing starts
    assert engine.provider.list_owned() == []


def test_a_host_knows_who_it_is_ends_its_group_and_powers_itself_off(engine):
    # What the governor does at the end: whoami, resize to 0, power off (its own processes, itself last).
    engine.run(f"""{sys.executable} -c '
import json
from nascloud.provisioners.local import LocalProvisioner
provider = LocalProvisioner(root="{engine.provider.root}")
me = provider.whoami("{JOB}", "search")
open("whoami.json", "w").write(json.dumps([me.instance_id, me.state.value, me.launched_at, me.spot]))
provider.resize("{JOB}", "search", 0, reason="finished")
provider.power_off()
print("still running after power_off")
'""")
    wait_for(lambda: not supervisors(engine.folder), 30, "the host to power off and the supervisor to exit", 0.05)
    [host] = engine.group().instances
    folder = engine.folder / "hosts" / host.instance_id
    assert json.loads((folder / "whoami.json").read_text()) == [host.instance_id, "running", host.launched_at, True]
    assert host.state == State.TERMINATED and host.ended_at >= host.launched_at
    assert "still running" not in (folder / "console.log").read_text()
    assert engine.group().reason == "finished"


def test_dry_run_describes_the_local_group():
    from nascloud.job import parse_job
    from nascloud.provisioners.local import launch_request

    request = launch_request(JOB, {"price_per_hour": 0.5}, parse_job({"name": "engine"}))
    assert (request["cloud"], request["python"], request["price_per_hour"]) == ("local", sys.executable, 0.5)
    assert request["inbound_ports"] == [] and request["group"]["size"] == 1
