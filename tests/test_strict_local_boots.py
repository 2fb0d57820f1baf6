"""The local provider obeys the same breaker as the clouds' groups (issue 20, part 1). Measured before: a
job whose replacement could not import nascloud booted 422 hosts in 90 s, charging 5x its budget, with
`status` still saying running. Now a boot that fails before the governor ends its group with the reason,
and hosts that end at once are replaced only after a growing pause."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from nascloud.jobbucket import JobBucket
from tests.test_e2e_local import wait_for
from tests.test_provisioners_local import JOB, engine, specs, supervisors  # noqa: F401

pytestmark = [pytest.mark.strict_cloud]


def test_a_boot_that_cannot_import_nascloud_ends_the_group_once_with_the_reason(engine, tmp_path):
    """The real bootstrap on a local host, its Python unable to import nascloud: one boot, not a loop."""
    path = engine.folder / "group.json"
    group = json.loads(path.read_text())
    assert f"NASCLOUD_PYTHON={shlex.quote(sys.executable)}" in group["script"]
    group["script"] = group["script"].replace(f"NASCLOUD_PYTHON={shlex.quote(sys.executable)}",
                                              "NASCLOUD_PYTHON=/bin/false")
    path.write_text(json.dumps(group))
    engine.provider.resize(JOB, "search", 1)
    wait_for(lambda: not supervisors(engine.folder), 60, "the group to end itself and its supervisor to exit", 0.05)
    ended = engine.group()
    assert ended.size == 0 and len(ended.instances) == 1, ended
    assert "failed: nascloud does not import with /bin/false" in ended.reason
    (boot,) = JobBucket.open(engine.specs[0].bootstrap_env["NASCLOUD_JOB_URL"]).failed_boots()
    assert (boot.instance_id, boot.reason) == (ended.instances[0].instance_id,
                                               "nascloud does not import with /bin/false")


def test_another_groups_failed_boot_ends_this_group(engine):
    engine.run("sleep 600")
    wait_for(lambda: engine.group().live, 30, "a host", 0.05)
    (engine.folder / "halt").write_text("instance local-0 failed: no GPU\n")
    wait_for(lambda: not supervisors(engine.folder), 30, "the group to end and its supervisor to exit", 0.05)
    group = engine.group()
    assert (group.size, group.live, group.reason) == (0, [], "instance local-0 failed: no GPU")


def test_hosts_that_end_at_once_are_replaced_after_a_growing_pause(engine):
    engine.run("exit 3")
    hosts = wait_for(lambda: len(engine.group().instances) >= 3 and engine.group().instances, 60, "three hosts", 0.05)
    first, second, third = hosts[:3]
    # 2 s, then 4 s, at the least, whatever the machine's load (the supervisor's poll only adds to them)
    assert second.launched_at - first.ended_at >= 2.0 and third.launched_at - second.ended_at >= 4.0, hosts
