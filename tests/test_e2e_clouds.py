"""On AWS (moto in server mode: EC2, Auto Scaling, IAM, S3) and GCP (the local Compute Engine server with
its managed groups; fake-gcs-server), through the real clients: the clouds' own engines keep the job's
group at its size, and the test hypervisor plays their machines, running each instance's real user data
or startup script (the bootstrap, then the governor and the agent) as a local host. The reclaim runs also
prove the on-demand fallback (compute.on_demand_after_preemptions: 1): the replacement's governor switches
its own group to on-demand at boot.

Nothing of the launching side runs after launch returns: the search, the replacement after a reclaim,
the end of the billing are the instances' and the groups' doing. One observer command afterwards (from a
fresh NASCLOUD_HOME, by the bucket URL) deletes what costs nothing, and then nothing is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from nascloud.job import parse_job
from nascloud.provisioners import get_provisioner
from nascloud.provisioners.common import dry_run_group
from tests.fixtures.gce import assert_nothing_left_gce
from tests.fixtures.hypervisor import Hypervisor, gce_machines, hypervisor_env, moto_machines  # noqa: F401
from tests.fixtures.moto_ec2 import asg_partial_updates, assert_nothing_left_aws, preempt_ec2  # noqa: F401

pytestmark = [pytest.mark.e2e]

SEARCH = {"data": "sklearn:digits", "max_trials": 2, "epochs": 4,
          "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "dropout": [0.0, 0.25]}}
# A reclaim lands in the first trial; its epochs leave the agent seconds to act on the notice even on a
# loaded machine (at 4 epochs a whole search took 12 s and once ended before the notice was read).
RECLAIM_SEARCH = {"epochs": 16}
ACCOUNT = "nascloud-job@nascloud-test.iam.gserviceaccount.com"
# What each host's processes see besides the local servers' endpoints (already in this process's env).
HOST_ENV = {"NASCLOUD_HEARTBEAT_SECONDS": "1", "NASCLOUD_NOTICE_POLL_SECONDS": "0.5",
            "NASCLOUD_SHUTDOWN_SECONDS": "5", "TF_CPP_MIN_LOG_LEVEL": "3"}


def aws_job(bucket: str, search: Optional[dict] = None, usd: float = 20, **compute):
    return parse_job({"name": "digits-aws", "search": {**SEARCH, **(search or {})},
                      "compute": {"cloud": "aws", "gpu": "T4", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                  "image": "ami-03cf127a", **compute},
                      "checkpoint": {"bucket": bucket, "interval_minutes": 0.01}, "budget": {"usd": usd}})


def gcp_job(bucket: str, search: Optional[dict] = None, usd: float = 20, **compute):
    return parse_job({"name": "digits-gcp", "search": {**SEARCH, **(search or {})},
                      "compute": {"cloud": "gcp", "gpu": "T4", "region": "us-central1",
                                  "instance_type": "n1-standard-4", **compute},
                      "checkpoint": {"bucket": bucket, "interval_minutes": 0.01}, "budget": {"usd": usd}})


@pytest.fixture
def gcp_env(gce, gcp_iam, monkeypatch):
    """GCP with IAM enforced: the launcher is the project's owner; each VM calls as ACCOUNT, which holds what
    the README has the user grant it for the job's name (grant_gcp_job)."""
    monkeypatch.setenv("NASCLOUD_GCP_PROJECT", gce.project)
    monkeypatch.setenv("NASCLOUD_GCP_SERVICE_ACCOUNT", ACCOUNT)
    return gce


def grant_gcp_job(spec) -> None:
    """The user's grants for every run of the job's name, given before its first launch for the region and
    zones `launch --dry-run` prints (tests/fixtures/gcp_iam.py)."""
    from nascloud import launching
    from tests.fixtures.gcp_iam import IAM, grant_job

    _, request = launching.dry_run(spec, None)
    zones = [z["zone"].removeprefix("zones/")
             for z in request["regionInstanceGroupManagers.insert"]["distributionPolicy"]["zones"]]
    grant_job(IAM, request["project"], ACCOUNT, spec.name, spec.checkpoint.bucket, request["region"], zones)


def host_env() -> dict:
    return {**os.environ, **HOST_ENV}


def test_aws_an_instance_that_cannot_use_its_bucket_ends_its_group_with_the_reason(moto_reset, hypervisor_env):
    aws = get_provisioner("aws", region="us-east-1", poll_seconds=0.05)
    job_id = "digits-aws-0badb0"
    group = dry_run_group("aws", job_id, {"cloud": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                          "gpu": None, "spot": True}, aws_job("s3://nascloud-nowhere/jobs"))
    with Hypervisor(hypervisor_env, host_env(), moto_machines()) as hosts:
        aws.create_groups([group])
        hosts.wait_for(lambda found: any(h.ended_at for h in found.values()), 120, "the host to end itself")
        (found,) = aws.groups(job_id)
        (host,) = hosts.hosts.values()
    assert found.size == 0 and not found.live, hosts.console(host.machine.instance_id)
    assert "cannot use the job's bucket s3://nascloud-nowhere/jobs/digits-aws-0badb0" in found.reason
    assert len(found.instances) == 1  # halted, not replaced: no crash loop of boots
    aws.delete(job_id)
    assert_nothing_left_aws(job_id)


def test_gcp_an_instance_that_cannot_use_its_bucket_ends_its_group_with_the_reason(gcp_env, hypervisor_env):
    from tests.fixtures.gcp_iam import IAM, grant_job

    gcp = get_provisioner("gcp", region="us-central1", poll_seconds=0.05)
    job_id = "digits-gcp-0badb0"
    group = dry_run_group("gcp", job_id, {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4",
                                          "gpu": None, "spot": True}, gcp_job("gs://nascloud-nowhere/jobs"))
    grant_job(IAM, gcp_env.project, ACCOUNT, "digits-gcp", "gs://nascloud-nowhere/jobs", "us-central1",
              ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"])
    with Hypervisor(hypervisor_env, host_env(), gce_machines(gcp_env)) as hosts:
        gcp.create_groups([group])
        hosts.wait_for(lambda found: any(h.ended_at for h in found.values()), 120, "the host to end itself")
        (found,) = gcp.groups(job_id)
        (host,) = hosts.hosts.values()
    assert found.size == 0 and not found.live, hosts.console(host.machine.instance_id)
    assert "cannot use the job's bucket gs://nascloud-nowhere/jobs/digits-gcp-0badb0" in found.reason
    gcp.delete(job_id)
    assert_nothing_left_gce(gcp_env, job_id)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2, hosts: Hypervisor = None):
    """Poll predicate; with hosts, give up at once when every host has ended (nothing can change it now)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if hosts and hosts.hosts and not hosts.live():
            last = max(hosts.hosts.values(), key=lambda h: h.started_at)
            raise AssertionError(f"every host ended while waiting for {what}; the last one's console:\n"
                                 f"{hosts.console(last.machine.instance_id)[-3000:]}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def launch_on_the_hypervisor(spec, monkeypatch, tmp_path, grant=None) -> str:
    """`launch` as the user's machine runs it, returning once the groups exist. The machines the hypervisor
    plays have no GPU: the offer (priced as the catalog's GPU instance) says so, or the agent would refuse.
    grant(spec): what the user grants the instances' identity for the job's name, before anything of this
    run exists (its job id is made by prepare)."""
    from nascloud import launching

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    # The launch's budget check reserves what the instances' shutdown takes: the test hosts' 5 s, not a cloud's.
    monkeypatch.setenv("NASCLOUD_SHUTDOWN_SECONDS", HOST_ENV["NASCLOUD_SHUTDOWN_SECONDS"])
    chosen = launching.choose_offer
    monkeypatch.setattr(launching, "choose_offer", lambda *args: {**chosen(*args), "gpu": None})
    if grant:
        grant(spec)
    return launching.launch(launching.prepare(spec, force=True)).url


def reclaim_mid_search_and_finish(url: str, hosts: Hypervisor, reclaim) -> dict:
    """Reclaim the live instance during a trial's epochs the way the clouds do (a notice in the metadata,
    then the machine goes); the group's replacement must finish the search. Returns the timings from the
    reclaim: to the replacement's host starting and to its agent training again, and its boot's split."""
    from nascloud.jobbucket import JobBucket

    job = JobBucket.open(url)

    def first_trial_training() -> bool:
        """An epoch of the first trial is done: the rest of it and the whole second trial are still to run."""
        progress = job.progress()
        return progress.get("trials_done") == 0 and (progress.get("running") or {}).get("epoch", 0) >= 1

    wait_for(first_trial_training, 600, "the first trial's first epoch", interval=0.2, hosts=hosts)
    (first,) = hosts.live()
    me = first.machine.instance_id
    first.machine.metadata.notice()

    def noticed() -> bool:
        """The agent took its snapshot and stopped, and the governor uploaded its log (what the chain
        check reads: a log cut short by the reclaim would hide the snapshot the replacement restores)."""
        record, sid = job.exit_record() or {}, job.progress().get("snapshot_id")
        found = job.store.objects.get(f"logs/{me}.log")
        return (record.get("status"), record.get("instance_id")) == ("preempted", me) and bool(found) and \
            f"snapshot {sid} committed" in found[0].decode()

    wait_for(noticed, 120, "the agent to act on the notice", hosts=hosts)
    reclaimed_at = time.time()
    reclaim(me)
    hosts.wait_for(lambda found: len([h for h in found.values() if h.ended_at is None]) == 1 and first.ended_at,
                   120, "the group's replacement")
    (second,) = hosts.live()

    def training_again() -> dict:
        beat = job.heartbeat() or {}
        return beat if (beat.get("instance_id"), beat.get("phase")) == (second.machine.instance_id, "searching") else {}

    beat = wait_for(training_again, 600, "the replacement's agent to train again", interval=0.2, hosts=hosts)
    heartbeat_at = time.time()
    entry = job.entry(second.machine.instance_id)
    final = wait_for(lambda: (job.exit_record() or {}).get("status") in ("finished", "failed", "budget") and
                     job.exit_record(), 900, "the job to end", interval=1)
    assert final["status"] == "finished", (final, hosts.console(second.machine.instance_id)[-3000:])
    hosts.wait_for(lambda found: all(h.ended_at for h in found.values()), 120, "the last host to power off")
    # Boot to training, split as the ledger and the heartbeat tell it (the install is the test's own venv
    # here: benchmarks/bench_boot_cache.py measures it with and without the bucket's wheelhouse).
    return {"replacement_host_s": round(second.started_at - reclaimed_at, 2),
            "training_again_s": round(heartbeat_at - reclaimed_at, 2),
            "launch_to_booted_s": round(entry.booted_at - entry.launched_at, 2),
            "booted_to_searching_s": round(beat["time"] - entry.booted_at, 2)}


def observe(url: str, tmp_path: Path) -> dict:
    """One observer command from a machine that never saw the job: `status` by the bucket URL (it also
    deletes what costs nothing once the job is over)."""
    import json

    shown = subprocess.run([sys.executable, "-m", "nascloud", "status", url, "--json"], capture_output=True,
                           text=True, timeout=120, env={**os.environ, "NASCLOUD_HOME": str(tmp_path / "elsewhere")})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)


def check_the_search(url: str, status: dict) -> None:
    from nascloud.jobbucket import JobBucket
    from tests.fixtures.search import check_chain

    assert status["status"] == "finished" and status["progress"]["trials_done"] == SEARCH["max_trials"]
    assert [e["end_reason"] for e in status["instances"]] == ["preempted", "finished"], status["instances"]
    assert [(g["size"], g["live"]) for g in status["groups"] or []] in ([], [(0, 0)])
    job = JobBucket.open(url)
    logs = [job.store.objects.get(f"logs/{e.instance_id}.log") for e in job.ledger()]
    assert all(logs), [e.instance_id for e, found in zip(job.ledger(), logs) if not found]  # uploaded as it ran
    report = check_chain([found[0].decode() for found in logs], truncated_ok=True)
    assert report.problems == [] and len(report.completed) == SEARCH["max_trials"], report  # each trial once


def switched_to_on_demand(url: str) -> bool:
    """The replacement said, once, that the job's next instances are on-demand."""
    from nascloud.jobbucket import JobBucket

    return [e.kind for e in JobBucket.open(url).events()].count("on-demand") == 1


def test_aws_a_spot_reclaim_mid_search_the_group_replaces_it_and_nothing_is_left(
        moto_reset, ec2_quotas, asg_partial_updates, hypervisor_env, monkeypatch, tmp_path, record_property):
    import boto3

    ec2_quotas["L-3819A6DF"] = 8.0  # G spot vCPUs: preflight reads the account's quota
    ec2_quotas["L-DB2E81BA"] = 8.0  # and G on-demand vCPUs: the job may fall back to on-demand
    boto3.client("s3").create_bucket(Bucket="nascloud-e2e")
    with Hypervisor(hypervisor_env, host_env(), moto_machines()) as hosts:
        url = launch_on_the_hypervisor(aws_job("s3://nascloud-e2e/jobs", search=RECLAIM_SEARCH,
                                               on_demand_after_preemptions=1),
                                       monkeypatch, tmp_path)
        timings = reclaim_mid_search_and_finish(url, hosts, preempt_ec2)
    (group,) = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    assert switched_to_on_demand(url)
    status = observe(url, tmp_path)
    check_the_search(url, status)
    job_id = url.rsplit("/", 1)[1]
    assert sorted(assert_nothing_left_aws(job_id)) == sorted(e["instance_id"] for e in status["instances"])
    record_property("timings", timings)
    print("aws", timings)


def test_gcp_a_preemption_mid_search_the_group_recreates_the_vm_and_nothing_is_left(
        gcp_env, hypervisor_env, monkeypatch, tmp_path, record_property):
    from google.cloud import storage

    from nascloud.gcp_auth import gcp_credentials

    client = storage.Client(project="test", credentials=gcp_credentials()[0])  # the launcher's (the owner)
    client.lookup_bucket("nascloud-e2e") or client.create_bucket("nascloud-e2e")  # the server is shared

    def preempt(instance_id: str) -> None:
        with gcp_env.lock:
            name = next(vm["name"] for vm in gcp_env.instances.values() if vm["id"] == instance_id)
        gcp_env.preempt(name)

    with Hypervisor(hypervisor_env, host_env(), gce_machines(gcp_env)) as hosts:
        url = launch_on_the_hypervisor(gcp_job("gs://nascloud-e2e/jobs", search=RECLAIM_SEARCH,
                                               on_demand_after_preemptions=1),
                                       monkeypatch, tmp_path, grant=grant_gcp_job)
        timings = reclaim_mid_search_and_finish(url, hosts, preempt)
    with gcp_env.lock:
        (group,) = [g for g in gcp_env.groups.values() if url.rsplit("/", 1)[1] in g["name"]]
        assert group["instanceTemplate"].endswith("-search-standard")
    assert switched_to_on_demand(url)
    status = observe(url, tmp_path)
    check_the_search(url, status)
    assert_nothing_left_gce(gcp_env, url.rsplit("/", 1)[1])
    record_property("timings", timings)
    print("gcp", timings)


def test_aws_the_cap_holds_with_the_laptop_gone(moto_reset, ec2_quotas, hypervisor_env, monkeypatch, tmp_path):
    """As on local: at a rehearsal price the budget runs out mid-search; the instance takes its final
    snapshot, sets its group to 0 and powers off, with nothing of the launching side running."""
    import boto3

    from nascloud.jobbucket import JobBucket, spend

    price, budget = 36.0, 0.90  # a cent a second; the search needs several times that
    ec2_quotas["L-3819A6DF"] = 8.0
    boto3.client("s3").create_bucket(Bucket="nascloud-e2e")
    spec = aws_job("s3://nascloud-e2e/jobs", search={"max_trials": 5, "epochs": 150}, usd=budget,
                   price_per_hour=price)
    with Hypervisor(hypervisor_env, host_env(), moto_machines()) as hosts:
        url = launch_on_the_hypervisor(spec, monkeypatch, tmp_path)
        job = JobBucket.open(url)
        at_cap = wait_for(lambda: (job.exit_record() or {}).get("status") in ("finished", "failed", "budget") and
                          job.exit_record(), 600, "the cap", interval=1, hosts=hosts)
        assert at_cap["status"] == "budget", at_cap
        hosts.wait_for(lambda found: found and all(h.ended_at for h in found.values()), 120, "the host to power off")
    (group,) = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    assert group["DesiredCapacity"] == 0
    ledger = job.ledger()
    assert len(ledger) == 1 and all(e.ended_at is not None for e in ledger), ledger
    spent = spend(job, time.time())
    assert spent <= budget + price * 60 / 3600, spent  # within one billing minimum of the budget
    kept = job.progress()
    assert not kept.get("finished") and kept.get("snapshot_id"), kept  # a final snapshot: resumable
    status = observe(url, tmp_path)
    assert status["status"] == "budget"
    assert_nothing_left_aws(url.rsplit("/", 1)[1])
    print(f"aws cap: spent ${spent:.3f} of ${budget:.2f}")
