"""Issue 20, part 3: what a real account does that the fakes did not. The first calls of a launch or of the
governor's resize are throttled, as AWS and Compute Engine throttle them; a new instance profile is not usable
for seconds. Each is retried with a bounded backoff, and a throttling that outlasts the cap fails in one line."""

from __future__ import annotations

import pytest

from nascloud.provisioners import get_provisioner
from tests.test_provisioners_gcp import ACCOUNT, JOB as GCP_JOB, NAME as GCP_NAME, group as gcp_group, running

pytestmark = pytest.mark.strict_cloud


@pytest.fixture
def gcp(gce, tmp_path):
    return get_provisioner("gcp", region="us-central1", project=gce.project, home=tmp_path / "home",
                           service_account=ACCOUNT, poll_seconds=0.05)


# --- GCP ---------------------------------------------------------------------------------------------------
def test_a_gcp_launch_succeeds_despite_throttled_inserts_lookups_and_waits(gcp, gce):
    gce.fail_next("regionInstanceGroupManagers.insert", 2)  # 429, as Google's APIs answer
    gce.fail_next("instanceTemplates.insert", 1, status=403)  # Compute Engine's own: 403 rateLimitExceeded
    gce.fail_next("regions.get", 1)
    gce.fail_next(r"^POST .*/operations/[^/]+/wait$", 2)
    gcp.create_groups([gcp_group()])
    assert list(gce.groups) == [("us-central1", GCP_NAME)]
    assert gce.count("regionInstanceGroupManagers.insert") == 3  # two refused, the third made the group
    assert all(left == 0 for _, left, _, _ in gce.faults)  # every throttle was met and retried through
    running(gcp)


def test_a_gcp_governor_resize_succeeds_despite_throttling(gcp, gce):
    gcp.create_groups([gcp_group()])
    gce.fail_next("regionInstanceGroupManagers.patch", 1, status=403)
    gce.fail_next("regionInstanceGroupManagers.resize", 3)
    gcp.resize(GCP_JOB, "search", 0, reason="finished")  # the governor's end of the job
    with gce.lock:
        assert gce.groups["us-central1", GCP_NAME]["targetSize"] == 0
        assert gce.groups["us-central1", GCP_NAME]["description"] == "finished"
    assert gce.count("regionInstanceGroupManagers.resize") == 4
