"""Helpers every provisioner shares: the job's SSH keys, the owner tag, the SSH CIDR, the bucket URL
and the bootstrap script. No cloud SDK is imported here."""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Optional
from urllib.parse import urlparse

from nascloud.errors import CloudError, UsageError
from nascloud.paths import nascloud_home

# Where the bootstrap puts nascloud on a cloud instance; the orchestrator runs the agent with this.
CLOUD_ROOT = "/opt/nascloud"
CLOUD_PYTHON = f"{CLOUD_ROOT}/venv/bin/python"


@dataclass(frozen=True)
class LaunchOffer:
    """What launch reads of an offer, whatever shape it came in."""

    cloud: str
    region: Optional[str]
    zone: Optional[str]
    instance_type: str
    gpu: Optional[str]
    spot: bool
    gpu_count: int = 1
    zone_id: Optional[str] = None  # AWS: the account-independent zone ID the catalog prices


def as_offer(offer, spec) -> LaunchOffer:
    """The offer as a catalog record (a dict, as in bundle/job.json) or an object with the same fields;
    what it leaves out comes from the job's compute section."""
    compute = spec.compute
    if isinstance(offer, Mapping):
        get = offer.get
    else:
        def get(key, default=None):
            return getattr(offer, key, default)
    return LaunchOffer(
        cloud=get("cloud") or compute.cloud, region=get("region") or compute.region,
        zone=get("zone") or compute.zone, instance_type=get("instance_type") or compute.instance_type or "",
        gpu=get("gpu", compute.gpu), spot=bool(get("spot", compute.spot)), gpu_count=int(get("gpu_count") or 1),
        zone_id=get("zone_id"))


@dataclass(frozen=True)
class KeyPair:
    private_path: Path  # OpenSSH private key file, mode 0600
    public_line: str  # "ssh-ed25519 AAAA... comment"


def _new_ed25519(comment: str) -> tuple[bytes, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


def ensure_key(path: Path, comment: str) -> KeyPair:
    """The ed25519 key at path (created 0600 if missing), with its public line beside it (.pub)."""
    pub = path.with_name(path.name + ".pub")
    if not (path.exists() and pub.exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        private, public = _new_ed25519(comment)
        tmp = path.with_name(path.name + ".tmp")
        # Created 0600 from the start: the key is never readable by others, not even for a moment.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private)
        os.replace(tmp, path)
        pub.write_text(public + "\n")
    return KeyPair(path, pub.read_text().strip())


def keys_dir(home: Optional[Path], job_id: str) -> Path:
    return Path(home or nascloud_home()) / "keys" / job_id


def job_keys(home: Optional[Path], job_id: str) -> KeyPair:
    """The job's SSH client key on the launching machine (compute.ssh_cidr jobs). Only its public half
    leaves this machine (the bundle, for the instances to authorize). The host key is the instance's own:
    it generates it and publishes the public half to the bucket, so nothing private rides in user data."""
    return ensure_key(keys_dir(home, job_id) / "id_ed25519", f"nascloud-{job_id}")


def remove_job_keys(home: Optional[Path], job_id: str) -> None:
    shutil.rmtree(keys_dir(home, job_id), ignore_errors=True)


def default_owner() -> str:
    """Who launched: NASCLOUD_OWNER or the login name, in the characters GCP labels allow."""
    raw = os.environ.get("NASCLOUD_OWNER") or getpass.getuser()
    return re.sub(r"[^a-z0-9_-]", "-", raw.lower())[:63] or "nascloud"


def lookup_public_cidr() -> str:
    """The caller's public address as /32, from AWS's checkip service (only used when the job file gives
    no compute.ssh_cidr; tests pass their own lookup)."""
    import urllib.request

    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as reply:
            address = reply.read().decode().strip()
    except OSError as error:
        raise CloudError(f"cannot find your public address to open SSH to it ({error}); "
                         "set compute.ssh_cidr in the job file, e.g. 203.0.113.7/32") from None
    return f"{ipaddress.ip_address(address)}/32"


def ssh_cidr(spec, lookup: Callable[[], str]) -> str:
    """compute.ssh_cidr, or the caller's address; never a range that opens SSH to the whole internet."""
    value = spec.compute.ssh_cidr or lookup()
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UsageError(f"compute.ssh_cidr {value!r} is not a CIDR; give one like 203.0.113.7/32") from None
    if network.prefixlen == 0:
        raise UsageError(f"compute.ssh_cidr {value} would open SSH to the whole internet; "
                         "give your own address, e.g. 203.0.113.7/32")
    return str(network)


@dataclass(frozen=True)
class BucketPrefix:
    scheme: str  # s3 | gs | file
    bucket: str
    prefix: str  # the job's prefix inside the bucket, no leading or trailing slash
    url: str  # scheme://bucket/prefix


def job_prefix(spec, job_id: str, scheme: str) -> BucketPrefix:
    """The job's prefix in checkpoint.bucket, which must be on the cloud that runs the instance."""
    parsed = urlparse(spec.checkpoint.bucket)
    if parsed.scheme != scheme or not parsed.netloc:
        raise UsageError(f"checkpoint.bucket {spec.checkpoint.bucket} cannot be reached from a "
                         f"{spec.compute.cloud} instance; use a {scheme}://BUCKET/PREFIX bucket")
    prefix = "/".join(p for p in (parsed.path.strip("/"), job_id) if p)
    return BucketPrefix(scheme, parsed.netloc, prefix, f"{scheme}://{parsed.netloc}/{prefix}")


def bootstrap_script(values: dict[str, str]) -> str:
    """scripts/bootstrap.sh with the job's values set right after the shebang (shell-quoted)."""
    text = resources.files("nascloud.provisioners").joinpath("scripts/bootstrap.sh").read_text()
    shebang, _, body = text.partition("\n")
    lines = [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join([shebang, *lines, body])


def offer_record(offer) -> dict:
    """An offer as the bundle's dict (a pydantic record, a dataclass or a dict)."""
    if isinstance(offer, Mapping):
        return dict(offer)
    if hasattr(offer, "model_dump"):
        return offer.model_dump(mode="json")
    return dict(vars(offer))


def dry_run_group(cloud: str, job_id: str, offer, spec, name: str = "search"):
    """The search group a launch of spec on offer would create, for the dry run (no bundle, no network):
    the offer completed from the job's compute section, the bootstrap values and tags launch would give."""
    from nascloud.provisioners.base import GroupSpec

    record, flat = offer_record(offer), as_offer(offer_record(offer), spec)
    record.update(cloud=cloud, region=flat.region, zone=flat.zone, instance_type=flat.instance_type, gpu=flat.gpu,
                  spot=flat.spot, gpu_count=flat.gpu_count)
    url = job_prefix(spec, job_id, {"aws": "s3", "gcp": "gs"}[cloud]).url
    env = {"NASCLOUD_CLOUD": cloud, "NASCLOUD_JOB_ID": job_id, "NASCLOUD_GROUP": name, "NASCLOUD_JOB_URL": url,
           "NASCLOUD_REGION": flat.region or "", "NASCLOUD_ROOT": CLOUD_ROOT, "NASCLOUD_GPU": flat.gpu or "",
           "NASCLOUD_SSH": "1" if spec.compute.ssh_cidr else ""}
    tags = {"nascloud-job": job_id, "nascloud-owner": default_owner(), "nascloud-job-url": url}
    return GroupSpec(job_id=job_id, name=name, size=1, bootstrap_env=env, offer=record, spec=spec, tags=tags,
                     stop_at=_planned_stop(record, spec))


def _planned_stop(offer: dict, spec) -> Optional[float]:
    """The backstop's time a launch now would set (nascloud.launching.backstop, nothing spent yet)."""
    import time

    from nascloud.budget import backstop_at
    from nascloud.bundle import OfferRecord

    budget, now = spec.budget, time.time()
    if not (budget.usd or budget.max_hours):
        return None
    # An offer given without prices (a test's, a provider's own look-up) bounds only the deadline.
    price = OfferRecord.model_validate(offer).highest_price() if "price_per_hour" in offer else 0.0
    return backstop_at(now, budget.usd, price, now + budget.max_hours * 3600 if budget.max_hours else None)


def power_off() -> None:
    """On a cloud instance: end this machine (its shutdown behaviour terminates it, so billing stops).
    NASCLOUD_POWEROFF_COMMAND replaces `shutdown -h now` where a test plays the machine."""
    import subprocess

    command = os.environ.get("NASCLOUD_POWEROFF_COMMAND") or "shutdown -h now"
    subprocess.run(command, shell=True, check=False)
