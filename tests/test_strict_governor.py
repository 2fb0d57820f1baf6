"""The governor's own paths to the breaker (issue 20, part 1): nothing before its first network call can
stop it from ending the groups, and the budget timer's halt needs no metadata."""

from __future__ import annotations

import pytest

from tests.test_provisioners_aws import JOB as AWS_JOB, aws, group as aws_group  # noqa: F401
from tests.test_provisioners_gcp import JOB as GCP_JOB, gcp, group as gcp_group, running, until, vm  # noqa: F401

pytestmark = [pytest.mark.strict_cloud]


def test_a_vm_whose_metadata_lacks_the_provisioning_model_reads_preemptible(gcp, gce, monkeypatch):
    """Older images' metadata have `scheduling/preemptible` and no `provisioning-model` (a 404)."""
    from tests.fixtures.hypervisor import MetadataServer, act_as_the_vm

    gcp.create_groups([gcp_group()])
    (instance,) = running(gcp)
    raw = vm(gce, instance)
    server = MetadataServer.gce(raw["id"], raw["name"], instance.zone, "n1-standard-4", False, gce.project)
    del server.values["instance/scheduling/provisioning-model"]
    server.values["instance/scheduling/preemptible"] = "TRUE"
    with server:
        act_as_the_vm(server, monkeypatch)
        from nascloud.provisioners import get_provisioner

        me = get_provisioner("gcp", region="us-central1").whoami(GCP_JOB, "search")
    assert (me.instance_id, me.spot) == (instance.instance_id, True)


def test_the_budget_timer_halts_the_group_with_no_metadata_and_no_bucket(aws, monkeypatch, tmp_path):
    """The timer was given the instance's id: it reads no metadata, and a bucket it cannot use does not
    stop the resize."""
    import boto3

    from nascloud.agent.governor import halt_now

    aws.create_groups([aws_group()])
    env = {"NASCLOUD_CLOUD": "aws", "NASCLOUD_JOB_ID": AWS_JOB, "NASCLOUD_GROUP": "search",
           "NASCLOUD_GROUPS": "search", "NASCLOUD_JOB_URL": f"s3://nascloud-nowhere/jobs/{AWS_JOB}",
           "NASCLOUD_REGION": "us-east-1", "NASCLOUD_ROOT": str(tmp_path),
           "NASCLOUD_AWS_METADATA_URL": "http://127.0.0.1:9",  # nothing listens there
           "NASCLOUD_POWEROFF_COMMAND": f"touch {tmp_path / 'off'}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as stopped:
        halt_now("the budget timer fired: the budget or deadline ran out", "i-0123456789abcdef0")
    assert stopped.value.code == 0 and (tmp_path / "off").exists()
    (described,) = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert described["DesiredCapacity"] == 0
    assert {t["Key"]: t["Value"] for t in described["Tags"]}["nascloud-reason"].startswith("the budget timer fired")


def test_a_region_without_the_deep_learning_ami_parameter_is_refused_at_preflight(aws):
    """moto's SSM has no public parameters: the AMI look-up fails before anything is made, saying what to do."""
    from nascloud.errors import CloudError
    from tests.test_provisioners_aws import job

    with pytest.raises(CloudError, match="the Deep Learning AMI is not published in us-east-1 .*give an AMI id as "
                                         "compute.image"):
        aws.preflight([aws_group(job(image=None))])
    assert aws.list_owned() == []


def test_failed_boots_are_billed_until_resume_books_them_in_the_ledger_and_clears_the_count(tmp_path):
    """A boot that never reached its governor wrote no ledger entry: the budget bills its record (its
    minimum at the group's price), and `resume` moves it to the ledger so the breaker counts anew."""
    import time

    from nascloud.jobbucket import JobBucket, spend
    from tests.fixtures.search import make_bundle

    job = JobBucket.open(make_bundle(tmp_path, "boots-1a2b3c", price_per_hour=36.0))
    now = time.time()
    for n in range(2):
        job.store.put_json(f"boots/search/local-{n}.json", {"instance_id": f"local-{n}", "group": "search",
                                                            "booted_at": now - 100, "failed_at": now - 90,
                                                            "reason": "pip install failed", "future": "kept"})
    before = spend(job, now)
    assert before >= 2 * 36.0 * 60 / 3600  # two billing minimums at $36/h
    job.reopen()
    assert job.failed_boots() == [] and spend(job, now) == before
    assert sorted((e.instance_id, e.end_reason) for e in job.ledger()) == [("local-0", "boot failed"),
                                                                           ("local-1", "boot failed")]


def test_a_gcp_resize_to_0_holds_even_when_noting_the_reason_fails(gcp, gce):
    """The resize is what stops the bill: it is sent before the description patch, whose failure then
    cannot keep the group running (it used to wait on the patch first, and a refused patch left it at 1)."""
    from nascloud.errors import CloudError

    gcp.create_groups([gcp_group()])
    gce.fail_next("regionInstanceGroupManagers.patch", 1, status=400, reason="invalid")
    with pytest.raises(CloudError):
        gcp.resize(GCP_JOB, "search", 0, reason="finished: the search is done")

    def at_zero() -> bool:
        gce.tick()  # the resize is an operation: it takes effect when done, whoever waits on it
        with gce.lock:
            return [g["targetSize"] for g in gce.groups.values() if GCP_JOB in g["name"]] == [0]

    until(at_zero, "the group at 0")
