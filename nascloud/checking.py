"""`nascloud check`: before any money moves, what a launch of the job needs from the cloud, one answer each:
the credentials, the offer and the GPU quota (the provider's own preflight), the bucket reachable and
writable. Nothing is created but one small probe object in the bucket, removed at once."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Optional

from nascloud.errors import NascloudError
from nascloud.job import JobSpec


@dataclass(frozen=True)
class Answer:
    what: str
    ok: bool
    detail: str


def check(spec: JobSpec) -> list[Answer]:
    """Every check, even after one fails, so that one run says all that needs fixing."""
    from nascloud.launching import new_bundle, quote

    found = quote(spec)  # a bucket of the wrong kind or an unknown offer is a usage error, before the cloud
    bundle = new_bundle(found, f"{spec.name}-check", "data/none")
    answers = [_answer("credentials", lambda: _credentials(bundle))]
    answers.append(_answer("offer and GPU quota", lambda: _offer(bundle)) if answers[0].ok else
                   Answer("offer and GPU quota", False, "not checked: it needs the credentials"))
    answers.append(_answer("bucket", lambda: _probe(spec.checkpoint.bucket)))
    return answers


def _credentials(bundle) -> str:
    from nascloud.provisioners import provisioner_for

    provisioner_for(bundle).groups(bundle.job_id)  # the cheapest call that needs working credentials
    return f"{bundle.offer.cloud} accepts them in {bundle.offer.region}"


def _offer(bundle) -> str:
    from nascloud.launching import group_specs
    from nascloud.provisioners import provisioner_for

    provisioner_for(bundle).preflight(group_specs(bundle))
    offer = bundle.offer
    return (f"{offer.instance_type} ({offer.gpu or 'no GPU'}, {'spot' if offer.spot else 'on-demand'}) in "
            f"{offer.region}: the type, its zones and your GPU quota allow the job's group")


def _answer(what: str, run: Callable[[], str]) -> Answer:
    try:
        return Answer(what, True, run())
    except NascloudError as error:
        return Answer(what, False, str(error))


def _probe(bucket: str) -> str:
    """Write, read back and delete one small object where the job's folders will be."""
    from nascloud.checkpoints import job_url, open_store

    name = f"nascloud-check-{secrets.token_hex(3)}"
    store = open_store(job_url(bucket, name))
    store.put_json("probe.json", {"written_by": "nascloud check"})
    read: Optional[dict] = store.get_json("probe.json")
    store.objects.delete("probe.json")
    if read != {"written_by": "nascloud check"}:
        raise NascloudError(f"{bucket}: an object written there read back differently; check the bucket's settings")
    return f"{bucket} is reachable and writable"
