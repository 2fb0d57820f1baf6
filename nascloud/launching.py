"""The use cases (one per command that changes a job): launch, stop, resume, results, drill, rm, gc.

A launch is two calls, so that the command line can show what it will spend and ask in between: `prepare`
checks everything that costs nothing (a bad job file, a bucket that does not suit the provider, a missing
data set, a budget the estimate already exceeds, the provider's preflight), then `launch` writes the bundle
to the bucket and creates the job's groups; after that the instances govern the job themselves. The others
work from any machine on the job's bucket.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from nascloud.errors import CloudError, NascloudError, UsageError
from nascloud.formats import per_hour
from nascloud.hints import command
from nascloud.job import JobSpec, is_placeholder, parseable, placeholder_problem

BUCKET_SCHEMES = {"local": ("file://", "s3://", "gs://"), "aws": ("s3://",), "gcp": ("gs://",)}


def check_bucket_suits(spec: JobSpec) -> None:
    cloud, bucket = spec.compute.cloud, spec.checkpoint.bucket
    allowed = BUCKET_SCHEMES[cloud]
    if not bucket.startswith(allowed):
        raise UsageError(
            f"checkpoint.bucket {bucket!r} cannot be reached from a {cloud} instance; "
            f"use a {' or '.join(allowed)} bucket (e.g. --bucket {allowed[0]}my-bucket/nascloud)")
    from nascloud.checkpoints import parse_url

    # The URL checks every command makes; the examples' placeholder (upper case: no bucket's name) is left for
    # `prepare` to refuse in words, so that a dry run of an example still shows its requests.
    parsed = parse_url(parseable(bucket))
    if parsed.scheme == "file":
        _check_folder_can_hold(Path(parsed.bucket), bucket)


def _check_folder_can_hold(folder: Path, bucket: str) -> None:
    """A file:// bucket is a folder this machine can make: not below a file (file:///etc/passwd/x), nor a device
    (file:///dev/null), nor on a file system that holds no folders of ours (file:///proc/x). Probed by making a
    folder and removing it at once: root passes any mode check, and the path is the user's, so it is exit 2 here
    rather than a storage error once the launch has begun writing."""
    fix = "give a folder for the job's state, e.g. --bucket file://./nascloud-bucket"
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise UsageError(f"checkpoint.bucket {bucket}: {existing} is not a folder; {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nascloud-probe-", dir=existing))
    except OSError as error:
        raise UsageError(f"checkpoint.bucket {bucket}: cannot make a folder in {existing} ({error.strerror}); "
                         f"{fix}") from None


def choose_offer(spec: JobSpec, price_per_hour: Optional[float] = None) -> dict:
    """The offer to run on: what `estimate JOB` ranks first among those launch can run (the job's pins
    honoured), as the bundle's offer record with its price table."""
    from nascloud.estimating import choose
    from nascloud.pricing import load_catalog

    option = choose(spec, price_per_hour)
    record = option.launch_record()
    if option.offer.cloud == "local":
        return record | {"on_demand_extras_per_hour": 0.0}
    # Boot disk and public IPv4 are billed while the instance runs, whatever its price: the ledger adds them.
    record["on_demand_extras_per_hour"] = load_catalog().billing_for(option.offer.cloud, False).instance_extras_per_hour()
    if not spec.compute.zone:  # the zones to fail over to when one has no capacity: cheapest first
        chosen = option.offer
        same = [o for o in load_catalog().select(cloud=chosen.cloud, region=chosen.region, gpu=chosen.gpu,
                                                 instance_type=chosen.instance_type)
                if o.gpu_count == chosen.gpu_count]
        record["zones"] = zone_choices(same, option.spot)
    override = price_per_hour if price_per_hour is not None else spec.compute.price_per_hour
    if override is not None:  # one GPU's price: the offer's price is already that times its GPUs
        record["on_demand_price_per_hour"] = option.price_per_hour
        for zone in record.get("zones", ()):
            zone["price_per_hour"] = zone["on_demand_price_per_hour"] = option.price_per_hour
    return record


def zone_choices(offers: list, spot: bool) -> list[dict]:
    """The same instance type in each zone of its region, with that zone's prices (AWS's by zone ID)."""
    sold = sorted((o for o in offers if o.price(spot) is not None), key=lambda o: (o.price(spot), o.zone))
    return [{"zone": None if o.cloud == "aws" else o.zone, "zone_id": o.zone if o.cloud == "aws" else None,
             "price_per_hour": o.price(spot), "on_demand_price_per_hour": o.on_demand} for o in sold]


def new_job_id(spec: JobSpec) -> str:
    return f"{spec.name}-{secrets.token_hex(3)}"


def build_wheel() -> Path:
    """This exact nascloud version as a wheel, for a cloud instance (a dev version is not on PyPI), alone in a
    temporary folder that the caller removes once it is uploaded."""
    root = Path(__file__).resolve().parent.parent
    out = Path(tempfile.mkdtemp(prefix="nascloud-wheel-"))
    # pip builds in the source tree: what it makes there goes once the wheel is built (what was there stays)
    made = [path for path in (root / "build", root / "nascloud.egg-info") if not path.exists()]
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(root)],
                              capture_output=True, text=True)
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
    wheels = sorted(out.glob("nascloud-*.whl"))
    if done.returncode != 0 or not wheels:
        shutil.rmtree(out, ignore_errors=True)
        raise UsageError(f"cannot build nascloud's wheel from {root} for the instance: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or ['no wheel']}")
    return wheels[0]


def backstop(bucket) -> Optional[float]:
    """When the job's groups end by themselves (nascloud.budget.backstop_at), from the budget left now."""
    from nascloud.budget import BACKSTOP_GRACE_SECONDS, backstop_at
    from nascloud.jobbucket import spend

    bundle, budget, now = bucket.bundle(), bucket.budget(), time.time()
    left = budget["usd"] - spend(bucket, now) if budget.get("usd") else None
    deadline = bundle.created_at + budget["max_hours"] * 3600 if budget.get("max_hours") else None
    grace = float(os.environ.get("NASCLOUD_BACKSTOP_GRACE_SECONDS", BACKSTOP_GRACE_SECONDS))  # tests: seconds
    return backstop_at(now, left, bundle.offer.highest_price() * sum(g.size for g in bundle.groups), deadline,
                       grace)


def group_specs(bundle, stop_at: Optional[float] = None) -> list:
    """What the provider needs to create the job's groups: each group's size, its bootstrap's values and tags,
    and the backstop's time."""
    from nascloud.provisioners import GroupSpec
    from nascloud.provisioners.common import CLOUD_ROOT, default_owner

    cloud = bundle.offer.cloud
    env = {"NASCLOUD_CLOUD": cloud, "NASCLOUD_JOB_ID": bundle.job_id, "NASCLOUD_JOB_URL": bundle.job_url,
           "NASCLOUD_REGION": bundle.offer.region or "", "NASCLOUD_GPU": bundle.offer.gpu or "",
           "NASCLOUD_SSH": "1" if bundle.spec.compute.ssh_cidr else "",
           "NASCLOUD_GROUPS": " ".join(g.name for g in bundle.groups)}
    if cloud != "local":
        env["NASCLOUD_ROOT"] = CLOUD_ROOT  # a local host gets its own folder from its group
    tags = {"nascloud-job": bundle.job_id, "nascloud-owner": default_owner(), "nascloud-job-url": bundle.job_url}
    return [GroupSpec(bundle.job_id, g.name, g.size, {**env, "NASCLOUD_GROUP": g.name}, bundle.offer.model_dump(),
                      bundle.spec, tags, stop_at) for g in bundle.groups]


@dataclass(frozen=True)
class Quote:
    """What a launch would spend, found without credentials or network: the offer and the estimate on it."""

    spec: JobSpec
    offer: dict
    estimate: dict
    interval_minutes: float

    @property
    def over_budget(self) -> bool:
        return bool(self.spec.budget.usd) and self.estimate["cost_usd"]["p50"] > self.spec.budget.usd


def quote(spec: JobSpec, price_per_hour: Optional[float] = None) -> Quote:
    from nascloud.estimating import estimate_for_offer

    check_bucket_suits(spec)
    offer = choose_offer(spec, price_per_hour)
    estimate, interval_minutes = estimate_for_offer(spec, offer)
    if spec.checkpoint.interval_minutes != "auto":
        interval_minutes = spec.checkpoint.interval_minutes
    return Quote(spec, offer, estimate, interval_minutes)


def dry_run(spec: JobSpec, price_per_hour: Optional[float]) -> tuple[Quote, dict]:
    """What the launch would spend, and the exact requests the cloud would receive for the job's groups;
    no credentials, no network."""
    from nascloud.provisioners import launch_request

    found = quote(spec, price_per_hour)
    return found, launch_request(spec, found.offer)


@dataclass
class Prepared:
    """A launch checked, priced and preflighted, with nothing created yet: what `launch` shows (and, on a
    cloud, asks about) before it spends. `launch(prepared)` then creates the job."""

    quote: Quote
    bundle: object  # nascloud.bundle.Bundle, not yet in the bucket
    packed: Path  # the data set's manifest, packed and sealed in scratch
    scratch: tempfile.TemporaryDirectory
    provisioner: object
    warnings: tuple[str, ...] = ()  # about the data set (imbalance, few samples): shown, never a refusal

    @property
    def costs_money(self) -> bool:
        return self.bundle.offer.cloud != "local"


def prepare(spec: JobSpec, price_per_hour: Optional[float] = None, force: bool = False) -> Prepared:
    """Every check that costs nothing (a bad job file, a bucket that does not suit the provider or is the
    examples' placeholder, a missing data set, a budget the estimate already exceeds, the provider's
    preflight of quota, names and the bucket), then the job's bundle, ready to write."""
    from nascloud.agent.data import check_data_source, load_packed, pack_dataset, split
    from nascloud.agent.evaluation import data_warnings
    from nascloud.datasets import object_name
    from nascloud.provisioners import provisioner_for

    if is_placeholder(spec.checkpoint.bucket):
        raise UsageError(placeholder_problem(spec.checkpoint.bucket))
    found = quote(spec, price_per_hour)
    estimate = found.estimate
    if found.over_budget and not force:
        raise UsageError(
            f"the estimate's P50 cost ${estimate['cost_usd']['p50']:.2f} (P90 ${estimate['cost_usd']['p90']:.2f}, "
            f"{estimate['wall_hours']['p50']:.1f} h) already exceeds the budget ${spec.budget.usd:.2f}; "
            "raise --budget, shrink the search, or pass --force")
    check_data_source(spec.search)
    scratch = tempfile.TemporaryDirectory(prefix="nascloud-data-")
    packed = pack_dataset(spec.search, Path(scratch.name))
    # The packed labels and the agent's own split (x stays memory-mapped: no pixel is read).
    warnings = data_warnings(spec.search, split(load_packed(packed.parent), spec.search.seed_list[0],
                                                spec.search.data_fraction))
    bundle = new_bundle(found, new_job_id(spec), object_name(packed))
    check_budget_buys_a_trial(bundle)
    provisioner = provisioner_for(bundle)
    provisioner.preflight(group_specs(bundle))  # quota, names, the bucket: before anything is created
    return Prepared(found, bundle, packed, scratch, provisioner, tuple(warnings))


def new_bundle(found: Quote, job_id: str, data: str, bucket: Optional[str] = None):
    """The bundle of a job about to launch on the quote's offer (data: its data set's object name), in
    checkpoint.bucket or `bucket`."""
    from nascloud.bundle import Bundle, OfferRecord
    from nascloud.checkpoints import job_url as job_prefix_url, parse_url
    from nascloud.paths import nascloud_home
    from nascloud.pricing import load_catalog

    job_url = job_prefix_url(bucket or found.spec.checkpoint.bucket, job_id)
    record = OfferRecord.model_validate({k: v for k, v in found.offer.items() if k in OfferRecord.model_fields})
    catalog = load_catalog()
    return Bundle(job_id=job_id, job_url=job_url, created_at=time.time(), spec=found.spec, offer=record, data=data,
                  interval_minutes=found.interval_minutes, estimate=found.estimate,
                  bucket_rates=catalog.bucket_rates(parse_url(job_url).scheme),
                  billing_minimum_seconds=catalog.billing_for(record.cloud).minimum_hours * 3600,
                  local_root=str((nascloud_home() / "local").resolve()) if record.cloud == "local" else None)


def running_namesakes(spec: JobSpec) -> list[str]:
    """The jobs of this name that this machine launched or watched and that still run: a launch would start
    a second search beside them, billed apart."""
    from nascloud.jobbucket import JobBucket
    from nascloud.observer import SHOWN_FINAL, groups, job_status
    from nascloud.state import JobCache

    running = []
    for known in JobCache().jobs():
        if known.name != spec.name:
            continue
        try:
            bucket = JobBucket.open(known.job_url)
            if (bucket.exit_record() or {}).get("status") in SHOWN_FINAL:
                continue  # ended: no need to ask its provider
            if job_status(bucket, groups(bucket))[0] in ("launching", "running", "stopping"):
                running.append(known.job_id)
        except NascloudError:
            continue  # a bucket gone or unreadable from here: nothing of it to run beside
    return running


def launch(prepared: Prepared):
    """Launch a prepared job: the bundle (job, data set once by content, wheel for clouds, budget record) in
    the bucket and the job's groups. Returns the job's bucket; from here on the instances govern the job,
    and this machine is only an observer."""
    from nascloud.budget import request_charges
    from nascloud.checkpoints import open_store
    from nascloud.datasets import bucket_store, upload as upload_dataset
    from nascloud.jobbucket import JobBucket
    from nascloud.state import JobCache

    bundle, spec, record = prepared.bundle, prepared.bundle.spec, prepared.bundle.offer
    job_id, job_url = bundle.job_id, bundle.job_url
    store, data_store = open_store(job_url), bucket_store(job_url)
    with prepared.scratch:  # the data set beside the bucket's jobs: only the parts it lacks are sent
        upload_dataset(data_store, prepared.packed)
    if record.cloud != "local":
        built = build_wheel()
        try:
            bundle = bundle.model_copy(update={"wheel": f"bundle/{built.name}"})
            store.put_file(bundle.wheel, built)
        finally:
            shutil.rmtree(built.parent, ignore_errors=True)  # the instances take it from the bucket
    if spec.compute.ssh_cidr:  # opt-in SSH: the instances authorize this machine's key (its public half)
        from nascloud.provisioners.common import job_keys

        bundle = bundle.model_copy(update={"ssh_public_key": job_keys(None, job_id).public_line})
    store.put_json("bundle/job.json", bundle.to_json())
    bucket = JobBucket(store)
    bucket.set_budget(spec.budget.usd, spec.budget.max_hours)
    JobCache().remember(job_id, spec.name, job_url, bundle.created_at)
    where = "this machine (local provider)" if record.cloud == "local" else f"{record.cloud} {record.instance_type}"
    bucket.add_event("created", f"job {job_id} created on {where} at {per_hour(record.price_per_hour)}; "
                                f"state in {job_url}")
    # The bundle's and the data set's uploads open the job's bucket charges.
    requests = {k: v + getattr(data_store.requests, k) for k, v in asdict(store.requests).items()}
    bucket.put_charge("launch", request_charges(requests, bundle.bucket_rates), requests)
    prepared.provisioner.create_groups(group_specs(bundle, backstop(bucket)))
    bucket.add_event("groups", f"group {', '.join(g.name for g in bundle.groups)} created; "
                               "the instances govern the job from here")
    return bucket


def stop(bucket, timeout_seconds: float) -> str:
    """Ask the instance to stop (from any machine): it takes its final snapshot, writes its exit record and
    ends its groups. Whatever happens, the groups are at 0 when this returns. Returns the final status."""
    from nascloud.observer import HALTED, groups, job_status, provisioner, tidy

    bucket.request_stop(by=f"nascloud stop on {socket.gethostname()}")
    deadline = time.monotonic() + timeout_seconds
    found = groups(bucket)
    # Until the instance has ended itself (its exit record, final notice and log written, groups at 0), or the
    # timeout: ending its group earlier would cut its last writes short.
    while _live(found) and time.monotonic() < deadline:
        time.sleep(1.0)
        found = groups(bucket)
    status, _ = job_status(bucket, found)
    job_id = bucket.bundle().job_id
    if status not in ("finished", "stopped", "budget", "deadline", "failed"):
        # Nobody answered (no instance, or it never wrote its record): stop it from here.
        bucket.write_exit("stopped", f"stopped by {command('stop', job_id)} (no instance answered in time)", "observer")
        status = "stopped"
    for group in found or ():
        provisioner(bucket).resize(job_id, group.name, 0, reason=f"stopped by {command('stop', job_id)}")
    tidy(bucket, groups(bucket), status if status != HALTED else "stopped")
    return status


def _live(found) -> bool:
    return found is None or any(g.live for g in found)


def resume(bucket, budget_usd: Optional[float], max_hours: Optional[float]) -> None:
    """Continue a job that stopped (by `stop`, at its budget or deadline, or halted): a new budget record, the
    stop request and exit record cleared, the groups back at their size."""
    from nascloud.observer import groups, job_status, provisioner

    status, _ = job_status(bucket, groups(bucket))
    job_id = bucket.bundle().job_id
    if status == "finished":
        raise UsageError(f"job {job_id} has finished; see {command('results', job_id)}")
    if status in ("running", "launching", "stopping") and bucket.progress().get("finished"):
        # Its search is done and its instance is writing the end: a stop and resume would only redo that.
        raise UsageError(f"job {job_id}'s search has finished and its instance is writing the results; "
                         f"{command('watch', job_id)} follows it to the end, then {command('results', job_id)}")
    if status in ("running", "launching", "stopping"):
        raise UsageError(f"job {job_id} is {status}; {command('stop', job_id)} it first or "
                         f"{command('watch', job_id)}")
    record = bucket.budget()
    record = {"usd": record.get("usd") if budget_usd is None else budget_usd,
              "max_hours": record.get("max_hours") if max_hours is None else max_hours}
    check_room_for_a_trial(bucket, record)
    bucket.set_budget(record["usd"], record["max_hours"])
    bucket.reopen()
    bundle = bucket.bundle()
    # The trials done so far: where the job's history splits its runs (nascloud.history.segments).
    bucket.add_event("resumed", "job resumed" + (f" with budget ${budget_usd:.2f}" if budget_usd else ""),
                     {"trials_done": bucket.progress().get("trials_done", 0)})
    prov = provisioner(bucket)
    prov.create_groups(group_specs(bundle, backstop(bucket)))  # those a finished stop deleted; the backstop anew
    for group in bundle.groups:
        prov.resize(bundle.job_id, group.name, group.size)


def check_budget_buys_a_trial(bundle) -> None:
    """Whatever the flags: a budget below the cap's own reserve at the offer's price (its next check and the
    shutdown, at least the billing minimum) starts a job that stops with no trial done. Past that floor, a
    budget the estimate finds short is the P50 check's, which --force overrides: an estimate can be wrong."""
    from nascloud.budget import next_trial_cost
    from nascloud.jobbucket import budget_view

    usd, price = bundle.spec.budget.usd, bundle.offer.price_per_hour
    if usd is None:
        return
    config, progress = budget_view(bundle, {"usd": usd}, {})
    reserve, _ = next_trial_cost(progress, config, price)
    if reserve > usd:
        least, seconds = next_trial_cost(progress, config, price, guess=True)
        trial = seconds - config.tick_seconds - config.shutdown_seconds
        raise UsageError(f"a budget of ${usd:.2f} cannot buy one trial at {per_hour(price)}: the cap keeps "
                         f"${reserve:.2f} in reserve for its next check and the shutdown, and a trial takes about "
                         f"{trial:.0f} s by the estimate; set --budget {math.ceil(least * 100) / 100:.2f} or more")


def check_room_for_a_trial(bucket, budget: dict) -> None:
    """Before anything boots: the budget and deadline leave room for a new instance to train one more trial
    (else it would bill its minimum and stop at once); the error says the least that does."""
    from nascloud.budget import burn_rate, next_trial_cost
    from nascloud.jobbucket import budget_view, spend

    now, bundle = time.time(), bucket.bundle()
    config, progress = budget_view(bundle, budget, bucket.progress())
    usd, seconds = next_trial_cost(progress, config, burn_rate(bucket.billed(now)) or bundle.offer.price_per_hour)
    job_id = bundle.job_id
    if budget.get("usd") is not None and (spent := spend(bucket, now)) + usd > budget["usd"]:
        raise UsageError(f"a budget of ${budget['usd']:.2f} leaves no room for another trial: ${spent:.2f} is spent "
                         f"and the next instance bills about ${usd:.2f} for a trial and its shutdown; "
                         f"{command('resume', job_id, '--budget', f'{math.ceil((spent + usd) * 100) / 100:.2f}')} "
                         "or more")
    if config.deadline_at is not None and now + seconds > config.deadline_at:
        hours = (now + seconds - bundle.created_at) / 3600
        raise UsageError(f"the {budget['max_hours']:g} h deadline (from the launch) leaves no room for another "
                         f"trial; {command('resume', job_id, '--max-hours', f'{math.ceil(hours * 100) / 100:g}')} "
                         "or more")


def holdings(bucket) -> tuple[str, int, int]:
    """(status, objects, bytes): what `rm` would delete, and whether it may (not while the job can run)."""
    from nascloud.observer import SHOWN_FINAL, groups, job_status

    status, _ = job_status(bucket, groups(bucket))
    if status not in SHOWN_FINAL:
        job_id = bucket.bundle().job_id
        raise UsageError(f"job {job_id} is {status}; {command('stop', job_id)} it first, then remove it")
    found = bucket.store.objects.list("")
    return status, len(found), sum(o.size for o in found)


def remove(bucket) -> None:
    """Delete an ended job: what its provider still keeps of it, every object under its prefix, and this
    machine's record of it. The bundle goes last, so an interrupted remove can be run again."""
    from nascloud.checkpoints import parse_url
    from nascloud.observer import provisioner
    from nascloud.state import JobCache

    job_id = bucket.bundle().job_id
    provisioner(bucket).delete(job_id)
    objects = bucket.store.objects
    for info in sorted(objects.list(""), key=lambda o: o.key == "bundle/job.json"):
        objects.delete(info.key)
    url = parse_url(bucket.url)
    if url.scheme == "file":  # a folder keeps its empty sub-folders and lock file: the job's folder goes too
        shutil.rmtree(url.bucket, ignore_errors=True)
    JobCache().forget(job_id)


def results(bucket, folder: Path) -> Optional[dict]:
    """The leaderboard, labels, best model and its deployability report with the .tflite files that
    converted, copied into folder; the leaderboard (its report under "deploy"), or None when the search has
    none yet."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("leaderboard.json", "labels.json", "best_model.keras", "deploy.json", "best_model.tflite",
                 "best_model_int8.tflite"):
        bucket.store.get_file(f"results/{name}", folder / name)
    board, deploy = folder / "leaderboard.json", folder / "deploy.json"
    if not board.exists():
        return None
    return json.loads(board.read_text()) | ({"deploy": json.loads(deploy.read_text())} if deploy.exists() else {})


def drill(bucket, timeout_seconds: float = 1800) -> float:
    """Preempt the group's current instance the way its cloud would and return the seconds until the agent
    trains again on a replacement (read from the bucket: the group does the recovery)."""
    from nascloud.observer import groups, provisioner, revive

    job_id, prov = bucket.bundle().job_id, provisioner(bucket)
    revive(bucket, prov)  # an engine that died would never replace the victim
    live = [i for g in groups(bucket, prov) or () for i in g.live]
    beat = bucket.heartbeat()
    if not live or beat.get("phase") != "searching":
        raise UsageError(f"job {job_id} has no instance training now to preempt (see {command('status', job_id)})")
    victim = live[0]
    started = time.time()
    bucket.add_event("drill", f"fire drill: preempting {victim.instance_id}")
    prov.preempt(victim)
    while time.time() - started < timeout_seconds:
        revive(bucket, prov)
        beat = bucket.heartbeat()
        if (beat.get("instance_id") not in (None, victim.instance_id) and beat.get("phase") == "searching"
                and beat.get("time", 0) > started):
            seconds = time.time() - started
            bucket.add_event("drill", f"fire drill: training again after {seconds:.1f} s on {beat['instance_id']}")
            return seconds
        time.sleep(0.5)
    raise CloudError(f"job {job_id} did not recover within {timeout_seconds:.0f} s; see {command('logs', job_id)}")


def find_garbage(prov, now: Optional[float] = None) -> list[tuple]:
    """Groups nascloud created whose job is over, halted, or silent (no heartbeat for an hour while something
    runs). Never one whose job's agent beats, even if this machine never saw the job: every group carries its
    job's bucket URL, so it is judged by its own bucket."""
    from nascloud.jobbucket import FINAL, JobBucket

    now = now or time.time()
    garbage = []
    for group in prov.list_owned():
        url = prov.job_url(group)
        try:
            bucket = JobBucket.open(url) if url else None
            record = (bucket.exit_record() or {}) if bucket else {}
            beat = bucket.heartbeat() if bucket else {}
        except NascloudError:
            continue  # its bucket cannot be read from here: not ours to judge
        if bucket is None:
            continue
        if record.get("status") in FINAL:
            garbage.append((group, f"its job is {record['status']}"))
        elif group.size == 0:
            garbage.append((group, "it is at size 0"))
        elif group.live and now - beat.get("time", now) > SILENT_SECONDS:
            garbage.append((group, f"its agent has been silent for {(now - beat['time']) / 60:.0f} min"))
    return garbage


SILENT_SECONDS = 3600.0


def collect(prov, garbage: list[tuple]) -> None:
    """End the groups gc found (size 0: their instances go), then delete what they needed."""
    for group, why in garbage:
        prov.resize(group.job_id, group.name, 0, reason=f"collected by {command('gc')}: {why}")
    deadline = time.monotonic() + GONE_SECONDS
    for job_id in sorted({group.job_id for group, _ in garbage}):
        while any(g.live for g in prov.groups(job_id)) and time.monotonic() < deadline:
            time.sleep(0.5)  # the engine ends the instances; what they needed goes once they are gone
        prov.delete(job_id)


GONE_SECONDS = 120.0
