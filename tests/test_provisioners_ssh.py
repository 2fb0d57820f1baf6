"""SSH to a cloud instance goes where the provisioner's ssh_address says (an emulator's invented public
address is never contacted) and accepts only the host key launch generated and handed to the bootstrap."""

from __future__ import annotations

import getpass
import os
import signal
from dataclasses import replace

import pytest

from nascloud import remote
from nascloud.provisioners import get_provisioner
from nascloud.provisioners.common import job_keys
from nascloud.provisioners.local import find_sshd, start_sshd
from tests import test_provisioners_aws as aws_case
from tests import test_provisioners_gcp as gcp_case
from tests.fixtures.servers import requires_sshd


@requires_sshd
@pytest.mark.parametrize("case, server", [(aws_case, "moto_reset"), (gcp_case, "gce")])
def test_ssh_reaches_the_instance_at_the_overridden_address_with_the_pinned_host_key(case, server, request, tmp_path):
    running = request.getfixturevalue(server)
    hosts = {}
    options = {"project": running.project} if server == "gce" else {}
    provisioner = get_provisioner(case.Offer.cloud, home=tmp_path / "home", cidr_lookup=case.no_lookup,
                                  ssh_user=getpass.getuser(), ssh_address=lambda i: hosts[i.instance_id], **options)
    instance = provisioner.launch(case.JOB, case.Offer(), case.job())
    # Play the booted instance: an sshd presenting the host key launch generated (the bootstrap installs it)
    # and admitting only the job's key.
    client, host = job_keys(tmp_path / "home", case.JOB)
    pid, port = start_sshd(find_sshd(), tmp_path / "sshd", host, client.public_line, instance.instance_id)
    try:
        hosts[instance.instance_id] = ("127.0.0.1", port)
        conn = remote.connect(provisioner.ssh_target(instance), instance)
        assert conn.run("echo $NASCLOUD_LOCAL_INSTANCE") == (0, instance.instance_id + "\n")
        conn.close()
        other = replace(instance, job_id="another-job-000000")  # pins another job's host key
        with pytest.raises(remote.HostKeyError):
            remote.connect(provisioner.ssh_target(other), other, attempts=1)
    finally:
        os.kill(pid, signal.SIGKILL)
