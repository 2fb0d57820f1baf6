"""Boots that fail before the governor runs, on the AWS and GCE test clouds with the hypervisor (issue 20,
part 1). A group replaces a machine that powers off, so a boot that only powered off would boot a new GPU
that fails the same way, without end. Each failure point must end in the breaker: the groups at 0 with the
reason in `status`, the boot recorded (and billed) in the bucket, one boot per failure; a boot that finds
the breaker open ends the groups before anything else; and when the instance's own identity may not
resize its group, the launcher's backstop (AWS: a scheduled action of the group's engine; GCP: the
templates' terminationTime) ends the loop within its money bound.

Each job is launched with no host running, its bucket then damaged the way the failure needs, and only
then are its instances played: every boot below is the real user data on a local host.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime

import pytest

from nascloud.jobbucket import JobBucket
from tests.fixtures.hypervisor import Hypervisor, gce_machines, hypervisor_env, moto_machines  # noqa: F401
from tests.test_e2e_clouds import (HOST_ENV, aws_job, gcp_env, gcp_job, grant_gcp_job,  # noqa: F401
                                   launch_on_the_hypervisor, observe)

pytestmark = [pytest.mark.e2e, pytest.mark.strict_cloud]

# Each wait once, for seconds, not minutes; a failed boot powers off as soon as it has recorded itself.
FAST_FAILURE = {"NASCLOUD_BOOT_TRIES": "1", "NASCLOUD_BOOT_WAIT_SECONDS": "0", "NASCLOUD_BOOT_MINIMUM_SECONDS": "0"}
NO_DEVICE = "#!/bin/bash\necho 'No devices were found'\nexit 6\n"  # what nvidia-smi says on a machine without a GPU


def boot_env(tmp_path, **extra: str) -> dict:
    """The hosts' environment: the local servers, quick waits, and an nvidia-smi that sees no GPU."""
    shims = tmp_path / "image-bin"
    shims.mkdir(exist_ok=True)
    (shims / "nvidia-smi").write_text(NO_DEVICE)
    (shims / "nvidia-smi").chmod(0o755)
    return {**os.environ, **HOST_ENV, **FAST_FAILURE, "PATH": f"{shims}:{os.environ['PATH']}", **extra}


def ended(hosts: Hypervisor, timeout: float = 240) -> None:
    hosts.wait_for(lambda found: bool(found) and all(h.ended_at for h in found.values()), timeout,
                   "every host to end itself")


def assert_halted_once(url: str, hosts: Hypervisor, tmp_path, reason: str) -> dict:
    """One boot, recorded in the bucket with its reason; the group at 0 (no replacement); `status` says why."""
    job = JobBucket.open(url)
    boots = job.failed_boots()
    consoles = "\n".join(hosts.console(i)[-2500:] for i in hosts.hosts)
    assert len(hosts.hosts) == 1 and len(boots) == 1, consoles
    assert reason in boots[0].reason, consoles
    status = observe(url, tmp_path)
    assert status["status"] == "halted" and reason in status["reason"], status
    # The boot that never reached its governor is billed all the same: its minimum at the group's price.
    assert [e["end_reason"] for e in status["instances"]] == ["boot failed"]
    assert status["spent_usd"] >= job.bundle().offer.price_for(None, True) * 60 / 3600
    return status


# --- AWS ----------------------------------------------------------------------------------------------
@pytest.fixture
def aws_launch(moto_reset, ec2_quotas, monkeypatch, tmp_path):
    """launch(spec) -> the job's URL, its groups made and no host running yet."""
    import boto3

    ec2_quotas["L-3819A6DF"] = 8.0
    boto3.client("s3").create_bucket(Bucket="nascloud-boots")
    return lambda spec: launch_on_the_hypervisor(spec, monkeypatch, tmp_path)


def aws_group(url: str) -> dict:
    import boto3

    (group,) = [g for g in boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
                if url.rsplit("/", 1)[1] in g["AutoScalingGroupName"]]
    return group


def s3_objects(url: str, under: str) -> list[str]:
    import boto3

    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    found = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{under}").get("Contents", [])
    return [o["Key"] for o in found]


def test_aws_a_boot_that_finds_no_wheel_ends_the_group_and_says_why(aws_launch, hypervisor_env, tmp_path):
    import boto3

    url = aws_launch(aws_job("s3://nascloud-boots/jobs"))
    (wheel,) = [k for k in s3_objects(url, "bundle/") if k.endswith(".whl")]
    boto3.client("s3").delete_object(Bucket="nascloud-boots", Key=wheel)
    with Hypervisor(hypervisor_env, boot_env(tmp_path), moto_machines(), install=True) as hosts:
        ended(hosts)
        group = aws_group(url)
    assert group["DesiredCapacity"] == 0
    assert any(t["Key"] == "nascloud-reason" and "no nascloud wheel" in t["Value"] for t in group["Tags"]), \
        hosts.console(next(iter(hosts.hosts)))
    assert_halted_once(url, hosts, tmp_path, "no nascloud wheel under")


def test_aws_a_boot_whose_pip_install_fails_ends_the_group(aws_launch, hypervisor_env, tmp_path):
    import boto3

    url = aws_launch(aws_job("s3://nascloud-boots/jobs"))
    (wheel,) = [k for k in s3_objects(url, "bundle/") if k.endswith(".whl")]
    boto3.client("s3").put_object(Bucket="nascloud-boots", Key=wheel, Body=b"not a zip file")
    with Hypervisor(hypervisor_env, boot_env(tmp_path), moto_machines(), install=True) as hosts:
        ended(hosts)
        assert aws_group(url)["DesiredCapacity"] == 0
    assert_halted_once(url, hosts, tmp_path, "pip install")


def test_aws_a_boot_whose_gpu_driver_sees_no_device_ends_the_group(moto_reset, ec2_quotas, hypervisor_env,
                                                                      monkeypatch, tmp_path):
    import boto3

    from nascloud import launching

    ec2_quotas["L-3819A6DF"] = 8.0
    boto3.client("s3").create_bucket(Bucket="nascloud-boots")
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    url = launching.launch(launching.prepare(aws_job("s3://nascloud-boots/jobs"), force=True)).url  # a T4 job
    with Hypervisor(hypervisor_env, boot_env(tmp_path), moto_machines()) as hosts:
        ended(hosts)
        assert aws_group(url)["DesiredCapacity"] == 0
    assert_halted_once(url, hosts, tmp_path, "no working NVIDIA driver for the T4 GPU")


def without_metadata(live, path: str):
    """The servers' machines with one metadata path missing (an image or IMDS answering 404 for it)."""
    def broken(make):
        machine = make()
        machine.metadata.values.pop(path)
        return machine

    return lambda: {i: (lambda make=make: broken(make)) for i, make in live().items()}


def test_aws_a_governor_that_cannot_read_its_metadata_ends_the_group(aws_launch, hypervisor_env, tmp_path):
    url = aws_launch(aws_job("s3://nascloud-boots/jobs"))
    machines = without_metadata(moto_machines(), "placement/availability-zone-id")
    with Hypervisor(hypervisor_env, boot_env(tmp_path), machines) as hosts:
        ended(hosts)
        assert aws_group(url)["DesiredCapacity"] == 0
    assert_halted_once(url, hosts, tmp_path, "the instance's governor failed: cannot read this instance's metadata")


def test_aws_a_boot_that_finds_the_breaker_open_ends_the_groups_before_anything_else(aws_launch, hypervisor_env,
                                                                                   tmp_path):
    import boto3

    url = aws_launch(aws_job("s3://nascloud-boots/jobs"))
    prefix = url.removeprefix("s3://nascloud-boots/")
    for n in range(3):  # three boots of the group failed, and their resizes did not hold
        boto3.client("s3").put_object(Bucket="nascloud-boots", Key=f"{prefix}/boots/search/i-failed{n}.json",
                                      Body=json.dumps({"instance_id": f"i-failed{n}", "group": "search",
                                                       "booted_at": time.time() - 300, "failed_at": time.time() - 240,
                                                       "reason": "pip install failed"}).encode())
    with Hypervisor(hypervisor_env, boot_env(tmp_path), moto_machines()) as hosts:
        ended(hosts)
        assert aws_group(url)["DesiredCapacity"] == 0
    (host,) = hosts.hosts
    console = hosts.console(host)
    assert "the breaker is open: 3 boots of group search failed" in console
    assert "starting the instance's governor" not in console and "GPU" not in console  # nothing else was tried
    assert len(JobBucket.open(url).failed_boots()) == 4
    status = observe(url, tmp_path)
    assert status["status"] == "halted" and "4 boots failed" in status["reason"], status


def test_aws_with_the_resize_refused_the_backstop_ends_the_loop_within_its_bound(
        aws_launch, scheduled_actions, hypervisor_env, monkeypatch, tmp_path):
    """The instance may not resize its group (its policy lost the statement): every boot fails, is refused
    the resize, records itself and powers off after the billing minimum; the group replaces it, until the
    scheduled action the launch set with the launcher's credentials sets the group to 0."""
    import boto3

    from nascloud.budget import backstop_bound_usd
    from nascloud.jobbucket import spend

    price, budget = 36.0, 1.0  # a cent a second: the backstop comes 110 s after launch, plus its grace
    monkeypatch.setenv("NASCLOUD_BACKSTOP_GRACE_SECONDS", "10")
    url = aws_launch(aws_job("s3://nascloud-boots/jobs", usd=budget, price_per_hour=price))
    (wheel,) = [k for k in s3_objects(url, "bundle/") if k.endswith(".whl")]
    boto3.client("s3").delete_object(Bucket="nascloud-boots", Key=wheel)
    iam, role = boto3.client("iam"), f"nascloud-{url.rsplit('/', 1)[1]}"
    policy = iam.get_role_policy(RoleName=role, PolicyName="job")["PolicyDocument"]
    policy["Statement"] = [s for s in policy["Statement"]
                           if "autoscaling:SetDesiredCapacity" not in json.dumps(s.get("Action"))]
    iam.put_role_policy(RoleName=role, PolicyName="job", PolicyDocument=json.dumps(policy))
    launched = time.time()
    # Every boot lives the clouds' billing minimum, as on a real instance: the loop bills the group's price.
    env = boot_env(tmp_path, NASCLOUD_BOOT_MINIMUM_SECONDS="60")
    with Hypervisor(hypervisor_env, env, moto_machines(), install=True) as hosts:
        hosts.wait_for(lambda found: bool(scheduled_actions) and all(h.ended_at for h in found.values()), 400,
                       "the backstop to end the group")
        assert aws_group(url)["DesiredCapacity"] == 0
    consoles = "\n".join(hosts.console(i)[-1500:] for i in hosts.hosts)
    assert "could not set group search to 0 with this instance's identity" in consoles
    boots = JobBucket.open(url).failed_boots()
    fired = scheduled_actions[0][1] - launched
    assert 2 <= len(boots) <= fired // 60 + 1, (fired, consoles)  # a loop, one boot per billing minimum
    spent = spend(JobBucket.open(url), time.time())
    assert spent <= backstop_bound_usd(budget, price, 60, grace_seconds=10), spent
    print(f"backstop after {fired:.0f} s: {len(boots)} boots, ${spent:.2f} of a ${budget:.2f} budget")


# --- GCP ----------------------------------------------------------------------------------------------
@pytest.fixture
def gcp_launch(gcp_env, monkeypatch, tmp_path):
    """launch(spec) -> the job's URL, its group made (the user's grants to the VMs' identity given) and no
    host running yet."""
    gcs_bucket().exists() or gcs_bucket().create()  # the server is shared
    return lambda spec: launch_on_the_hypervisor(spec, monkeypatch, tmp_path, grant=grant_gcp_job)


def gcs_bucket():
    """The test bucket, as the launcher (the project's owner) sees it."""
    from google.cloud import storage

    from nascloud.gcp_auth import gcp_credentials

    return storage.Client(project="test", credentials=gcp_credentials()[0]).bucket("nascloud-boots")


def gcs_wheel(url: str):
    prefix = url.removeprefix("gs://nascloud-boots/")
    (wheel,) = [b for b in gcs_bucket().list_blobs(prefix=f"{prefix}/bundle/") if b.name.endswith(".whl")]
    return wheel


def gce_group(gce, url: str) -> dict:
    """The job's managed group once it is at 0 (a resize is an operation: it takes effect when it is done)."""
    from tests.test_e2e_clouds import wait_for

    def at_zero():
        gce.tick()
        with gce.lock:
            (group,) = [g for g in gce.groups.values() if url.rsplit("/", 1)[1] in g["name"]]
            return dict(group) if group["targetSize"] == 0 else None

    return wait_for(at_zero, 60, "the group to be at 0")


def test_gcp_a_boot_that_finds_no_wheel_ends_the_group_and_says_why(gcp_launch, gcp_env, hypervisor_env, tmp_path):
    url = gcp_launch(gcp_job("gs://nascloud-boots/jobs"))
    gcs_wheel(url).delete()
    with Hypervisor(hypervisor_env, boot_env(tmp_path), gce_machines(gcp_env), install=True) as hosts:
        ended(hosts)
        group = gce_group(gcp_env, url)
    assert "no nascloud wheel" in group["description"], hosts.console(next(iter(hosts.hosts)))
    assert_halted_once(url, hosts, tmp_path, "no nascloud wheel under")


def test_gcp_a_boot_whose_pip_install_fails_ends_the_group(gcp_launch, gcp_env, hypervisor_env, tmp_path):
    url = gcp_launch(gcp_job("gs://nascloud-boots/jobs"))
    gcs_wheel(url).upload_from_string(b"not a zip file")
    with Hypervisor(hypervisor_env, boot_env(tmp_path), gce_machines(gcp_env), install=True) as hosts:
        ended(hosts)
        gce_group(gcp_env, url)
    assert_halted_once(url, hosts, tmp_path, "pip install")


def test_gcp_a_boot_whose_gpu_driver_sees_no_device_ends_the_group(gcp_env, hypervisor_env, monkeypatch, tmp_path):
    from nascloud import launching

    gcs_bucket().exists() or gcs_bucket().create()
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    spec = gcp_job("gs://nascloud-boots/jobs")  # a T4 job
    grant_gcp_job(spec)
    prepared = launching.prepare(spec, force=True)
    url = launching.launch(prepared).url
    with Hypervisor(hypervisor_env, boot_env(tmp_path), gce_machines(gcp_env)) as hosts:
        ended(hosts)
        gce_group(gcp_env, url)
    assert_halted_once(url, hosts, tmp_path, "no working NVIDIA driver for the T4 GPU")


def test_gcp_a_governor_that_cannot_read_its_metadata_ends_the_group(gcp_launch, gcp_env, hypervisor_env, tmp_path):
    url = gcp_launch(gcp_job("gs://nascloud-boots/jobs"))
    machines = without_metadata(gce_machines(gcp_env), "instance/zone")
    with Hypervisor(hypervisor_env, boot_env(tmp_path), machines) as hosts:
        ended(hosts)
        gce_group(gcp_env, url)
    assert_halted_once(url, hosts, tmp_path, "the instance's governor failed: cannot read this VM's metadata")


def test_gcp_a_boot_that_finds_the_breaker_open_ends_the_groups_before_anything_else(gcp_launch, gcp_env,
                                                                                   hypervisor_env, tmp_path):
    url = gcp_launch(gcp_job("gs://nascloud-boots/jobs"))
    prefix = url.removeprefix("gs://nascloud-boots/")
    for n in range(3):
        gcs_bucket().blob(f"{prefix}/boots/search/{n}.json").upload_from_string(json.dumps({
            "instance_id": str(n), "group": "search", "booted_at": time.time() - 300, "failed_at": time.time() - 240,
            "reason": "pip install failed"}))
    with Hypervisor(hypervisor_env, boot_env(tmp_path), gce_machines(gcp_env)) as hosts:
        ended(hosts)
        gce_group(gcp_env, url)
    (host,) = hosts.hosts
    console = hosts.console(host)
    assert "the breaker is open: 3 boots of group search failed" in console
    assert "starting the instance's governor" not in console
    status = observe(url, tmp_path)
    assert status["status"] == "halted" and "4 boots failed" in status["reason"], status


def test_gcp_with_the_resize_refused_the_backstop_ends_the_loop_within_its_bound(gcp_launch, gcp_env, hypervisor_env,
                                                                                  monkeypatch, tmp_path):
    """The VMs' service account may not resize their group (its role lost compute.instanceGroupManagers.update):
    every boot fails, is refused the resize, records itself and powers off after the billing minimum; the group
    replaces it, until the terminationTime the launch put in the group's templates with the launcher's
    credentials: the group deletes its VM then, and every VM it tries to make after is refused."""
    from nascloud.budget import BACKSTOP_SLACK, backstop_bound_usd
    from nascloud.jobbucket import spend
    from nascloud.provisioners.gcp import INSTANCE_ROLE_ID, group_name
    from tests.fixtures.gcp_iam import IAM
    from tests.test_e2e_clouds import wait_for

    price, budget, grace = 36.0, 1.0, 10  # a cent a second: the backstop comes 110 s after launch, plus its grace
    monkeypatch.setenv("NASCLOUD_BACKSTOP_GRACE_SECONDS", str(grace))
    launched = time.time()
    url = gcp_launch(gcp_job("gs://nascloud-boots/jobs", usd=budget, price_per_hour=price))
    backstop_by = time.time() + budget / price * 3600 * (1 + BACKSTOP_SLACK) + grace  # the latest launch could set
    gcs_wheel(url).delete()
    role = f"projects/{gcp_env.project}/roles/{INSTANCE_ROLE_ID}"
    IAM.create_role(role, IAM.custom_roles[role] - {"compute.instanceGroupManagers.update"})
    # Every boot lives the clouds' billing minimum, as on a real VM: the loop bills the group's price.
    env = boot_env(tmp_path, NASCLOUD_BOOT_MINIMUM_SECONDS="60")
    name = group_name(url.rsplit("/", 1)[1], "search")

    def refused():  # the group's VM deleted, and the templates' time limit refusing it another
        gcp_env.tick()
        with gcp_env.lock:
            left = [vm for vm in gcp_env.instances.values() if vm["name"].startswith(name)]
            return not left and sum(n for error, n in gcp_env.groups["us-central1", name].get("_errors", {}).items()
                                    if "terminationTime" in error)

    with Hypervisor(hypervisor_env, env, gce_machines(gcp_env), install=True) as hosts:
        wait_for(refused, backstop_by - time.time() + 60, "the backstop to end the group's VM and refuse it another")
        hosts.wait_for(lambda found: bool(found) and all(h.ended_at for h in found.values()), 30,
                       "the group's last VM to end")
        with gcp_env.lock:
            group = dict(gcp_env.groups["us-central1", name])
            stop_at = datetime.fromisoformat(gcp_env.templates[name]["properties"]["scheduling"]["terminationTime"])
    assert group["targetSize"] == 1  # ended by the template's time, not by a resize
    assert launched < stop_at.timestamp() <= backstop_by
    consoles = "\n".join(hosts.console(i)[-1500:] for i in hosts.hosts)
    assert "could not set group search to 0 with this instance's identity" in consoles
    boots = JobBucket.open(url).failed_boots()
    fired = stop_at.timestamp() - launched
    assert 2 <= len(boots) <= fired // 60 + 1, (fired, consoles)  # a loop, one boot per billing minimum
    bound = backstop_bound_usd(budget, price, 60, grace_seconds=grace)
    spent = spend(JobBucket.open(url), time.time())
    billed = sum(max(h.ended_at - h.started_at, 60) for h in hosts.hosts.values()) * price / 3600  # the hosts' lives
    assert spent <= bound and billed <= bound, (spent, billed, bound)
    print(f"backstop after {fired:.0f} s: {len(boots)} boots, ${spent:.2f} in the ledger (${billed:.2f} by the "
          f"hosts' lives) of a ${budget:.2f} budget, bound ${bound:.2f}")


def test_gcp_a_resume_that_finds_the_group_makes_it_anew_with_the_new_backstop(gcp_env):
    """A template cannot change: create_groups again with another backstop time (what `resume` runs, its job
    stopped and the group at 0) replaces the group and both templates; with the same time it leaves them."""
    import dataclasses

    from nascloud.provisioners import get_provisioner
    from nascloud.provisioners.common import dry_run_group

    gcp = get_provisioner("gcp", region="us-central1", poll_seconds=0.05)
    offer = {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4", "gpu": "T4", "spot": True}
    stopped = dataclasses.replace(dry_run_group("gcp", "digits-gcp-0b5e1d", offer, gcp_job("gs://nascloud-boots/jobs")),
                                  size=0, stop_at=time.time() + 3600)
    name = "nascloud-digits-gcp-0b5e1d-search"

    def made() -> tuple[str, list[str]]:
        with gcp_env.lock:
            return gcp_env.groups["us-central1", name]["id"], [
                gcp_env.templates[t]["properties"]["scheduling"].get("terminationTime") for t in (name, f"{name}-standard")]

    gcp.create_groups([stopped])
    first, times = made()
    gcp.create_groups([stopped])
    assert made() == (first, times)  # the same time: nothing to do
    gcp.create_groups([dataclasses.replace(stopped, stop_at=stopped.stop_at + 600)])
    again, moved = made()
    assert again != first and [datetime.fromisoformat(t).timestamp() for t in moved] == [
        int(stopped.stop_at + 600)] * 2, (times, moved)
