"""On AWS (moto in server mode: EC2, Auto Scaling, IAM, S3) and GCP (the local Compute Engine server with
its managed groups; fake-gcs-server), through the real clients: the clouds' own engines keep the job's
group at its size, and the test hypervisor plays their machines, running each instance's real user data
or startup script (the bootstrap, then the governor and the agent) as a local host.

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

import pytest

from nascloud.job import parse_job
from nascloud.provisioners import get_provisioner
from nascloud.provisioners.common import dry_run_group
from tests.fixtures.gce import assert_nothing_left_gce
from tests.fixtures.hypervisor import Hypervisor, gce_machines, hypervisor_env, moto_machines  # noqa: F401
from tests.fixtures.moto_ec2 import assert_nothing_left_aws, preempt_ec2

pytestmark = [pytest.mark.e2e]

SEARCH = {"data": "sklearn:digits", "max_trials": 2, "epochs": 4,
          "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "dropout": [0.0, 0.25]}}
ACCOUNT = "nascloud-job@nascloud-test.iam.gserviceaccount.com"
# What each host's processes see besides the local servers' endpoints (already in this process's env).
HOST_ENV = {"NASCLOUD_HEARTBEAT_SECONDS": "1", "NASCLOUD_NOTICE_POLL_SECONDS": "0.5",
            "NASCLOUD_SHUTDOWN_SECONDS": "5", "TF_CPP_MIN_LOG_LEVEL": "3"}


def aws_job(bucket: str, **search):
    return parse_job({"name": "digits-aws", "search": {**SEARCH, **search},
                      "compute": {"cloud": "aws", "gpu": "T4", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                  "image": "ami-03cf127a"},
                      "checkpoint": {"bucket": bucket, "interval_minutes": 0.01}, "budget": {"usd": 20}})


def gcp_job(bucket: str, **search):
    return parse_job({"name": "digits-gcp", "search": {**SEARCH, **search},
                      "compute": {"cloud": "gcp", "gpu": "T4", "region": "us-central1",
                                  "instance_type": "n1-standard-4"},
                      "checkpoint": {"bucket": bucket, "interval_minutes": 0.01}, "budget": {"usd": 20}})


@pytest.fixture
def gcp_env(gce, gcs_server, monkeypatch):
    monkeypatch.setenv("NASCLOUD_GCP_PROJECT", gce.project)
    monkeypatch.setenv("NASCLOUD_GCP_SERVICE_ACCOUNT", ACCOUNT)
    return gce


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
    gcp = get_provisioner("gcp", region="us-central1", poll_seconds=0.05)
    job_id = "digits-gcp-0badb0"
    group = dry_run_group("gcp", job_id, {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4",
                                          "gpu": None, "spot": True}, gcp_job("gs://nascloud-nowhere/jobs"))
    with Hypervisor(hypervisor_env, host_env(), gce_machines(gcp_env)) as hosts:
        gcp.create_groups([group])
        hosts.wait_for(lambda found: any(h.ended_at for h in found.values()), 120, "the host to end itself")
        (found,) = gcp.groups(job_id)
        (host,) = hosts.hosts.values()
    assert found.size == 0 and not found.live, hosts.console(host.machine.instance_id)
    assert "cannot use the job's bucket gs://nascloud-nowhere/jobs/digits-gcp-0badb0" in found.reason
    gcp.delete(job_id)
    assert_nothing_left_gce(gcp_env, job_id)
