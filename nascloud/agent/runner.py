"""The agent loop on the instance: restore, search, snapshot, report, export.

A trial counts as completed once a snapshot holding it is committed to the bucket. Every stop
(SIGTERM, a cloud notice, a stop request, the budget, the deadline) ends in one final consistent snapshot
and an exit status; a SIGKILL at any moment loses at most the work since the last snapshot. On an
instance the money and the stop requests come from the bucket (nascloud.agent.governance), checked at
every heartbeat, so the cap holds with nobody watching.
"""

from __future__ import annotations

import logging
import os
import signal
import statistics
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from nascloud.agent import data as data_module
from nascloud.agent.notices import Notices, StopRequested, fault_armed, fault_point, pollers, start_polling
from nascloud.agent.seeds import SeedRecord, job_trial_id, project_parent
from nascloud.errors import NascloudError, StaleWriterError
from nascloud.formats import trial_number
from nascloud.hints import command
from nascloud.job import JobSpec

if TYPE_CHECKING:
    from nascloud.checkpoints import SnapshotStore

log = logging.getLogger("nascloud.agent")

EXIT_CODES = {"finished": 0, "stopped": 0, "budget": 3, "deadline": 3, "preempted": 75, "failed": 1}
LAPTOP_INTERVAL_MINUTES = 10.0  # `auto` without an offer (laptop mode): no interruption rate to optimise
STORAGE_SAMPLE_SECONDS = 600.0  # how often the bytes under the job prefix are measured (one LIST)


@dataclass(frozen=True)
class AgentOptions:
    target: str  # a job prefix URL (with bundle/job.json) or a job YAML (laptop mode)
    instance_id: str = "local"
    work_dir: Path = Path("nascloud-work")


@dataclass(frozen=True)
class AgentResult:
    status: str  # finished | stopped | preempted | budget | deadline | failed
    message: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


@dataclass(frozen=True)
class Job:
    job_id: str
    spec: JobSpec
    store: SnapshotStore  # the CheckpointStore on the job prefix
    data_name: Optional[str]  # data/<sha256>.json, the data set's manifest in the bucket; None: read the source here
    cloud: str
    gpu: Optional[str]  # None: a CPU run
    interval_seconds: float
    in_bucket: bool  # launched (a bundle in the bucket: the money is governed) or a job YAML run here


def open_job(target: str) -> Job:
    """The job from its bucket bundle or a job YAML; bad input is refused here, before any compute."""
    from nascloud.checkpoints import job_url, open_store
    from nascloud.job import load_job

    if "://" in target:
        from nascloud.bundle import parse_bundle

        bundle = parse_bundle(open_store(target).get_json("bundle/job.json"), target)
        spec = bundle.spec
        job = Job(bundle.job_id, spec, open_store(target, keep=spec.checkpoint.keep), bundle.data,
                  bundle.offer.cloud, bundle.offer.gpu, bundle.interval_minutes * 60, in_bucket=True)
    else:
        spec = load_job(target)
        interval = spec.checkpoint.interval_minutes
        minutes = LAPTOP_INTERVAL_MINUTES if interval == "auto" else float(interval)
        cloud = spec.compute.cloud
        job = Job(spec.name, spec, open_store(job_url(spec.checkpoint.bucket, spec.name), keep=spec.checkpoint.keep),
                  None, cloud, None if cloud == "local" else spec.compute.gpu, minutes * 60, in_bucket=False)
    if job.data_name is None:  # else the data was checked and packed by launch
        data_module.check_data_source(spec.search)
    return job


def quiet_tensorflow() -> None:
    """Import TensorFlow without its C++ start-up chatter (absl writes to fd 2 before any log level
    applies) and hide Keras' structure warnings: they would bury the agent's own log."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", module=r"keras\..*")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401
    except ImportError as error:
        raise NascloudError(f"cannot import TensorFlow ({error}); install the search extra: "
                            "pip install 'nascloud[search]'") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def require_gpu(offer_gpu: Optional[str]) -> None:
    """A GPU bill for CPU training is the worst outcome: refuse before training anything."""
    if offer_gpu is None:
        return
    from nascloud.agent.search import gpu_names

    if not gpu_names():
        raise NascloudError(
            f"the offer has a {offer_gpu} GPU but TensorFlow sees none; install the search extra "
            "(tensorflow, not tensorflow-cpu) and the NVIDIA driver, or set compute.gpu: null for a CPU run")


class Agent:
    """One run of the agent on one instance. Implements the search hooks (nascloud.agent.search)."""

    def __init__(self, job: Job, options: AgentOptions):
        self.job, self.options = job, options
        self.store = job.store
        self.search = job.spec.search
        self.notices = Notices()
        self.work = Path(options.work_dir)
        self.snapshot_dir = self.work / "snapshot"
        self.project_dir = self.snapshot_dir / "search"
        self.seeds = self.search.seed_list
        self.multi = len(self.seeds) > 1  # one seed keeps its project at snapshot/search
        self.seed_index = 0  # the seed whose search runs now, as an index into self.seeds
        self.seed_record: Optional[SeedRecord] = None  # read from the restored snapshot (several seeds only)
        self.phase = "restoring"
        self.started = time.time()
        self.running: Optional[dict] = None
        self.snapshot_id: Optional[str] = None
        self.last_snapshot = time.monotonic()
        self.searching = False
        self.snapshot_seconds: list[float] = []  # this job's publishes (the job history's δ), kept across agents
        self._stopped = threading.Event()
        self.governance = None
        if job.in_bucket:
            from nascloud.agent.governance import Governance
            from nascloud.jobbucket import JobBucket

            self.governance = Governance(JobBucket(self.store), options.instance_id)
        self._storage_sampled = 0.0

    # -- bucket reports ------------------------------------------------------------------
    def heartbeat(self) -> None:
        self.store.put_json("agent/heartbeat.json", {
            "time": time.time(), "instance_id": self.options.instance_id, "pid": os.getpid(),
            "phase": self.phase, "requests": asdict(self.store.requests)})
        if self.governance is not None:
            self.governance.seen(asdict(self.store.requests))
            if time.time() - self._storage_sampled >= STORAGE_SAMPLE_SECONDS:
                self.governance.sample_storage()
                self._storage_sampled = time.time()

    def progress(self, finished: bool = False) -> None:
        rows = self.rows()
        done = [r for r in rows if r["status"] == "COMPLETED"]
        # Several seeds: which one runs ("seed 2/3" on the screens), the trials counted over all of them.
        seed = ({"seed": {"index": self.seed_index + 1, "of": len(self.seeds), "seed": self.seeds[self.seed_index]}}
                if self.multi else {})
        self.store.put_json("agent/progress.json", seed | {
            "max_trials": self.search.job_trials, "trials_done": len(done),
            "trials_failed": sum(r["status"] in ("FAILED", "INVALID") for r in rows),
            "running": self.running, "best_score": done[0]["score"] if done else None,
            "objective": self.search.objective_name, "trial_durations": [r["duration_seconds"] for r in done],
            "trials": [{k: r[k] for k in ("trial_id", "status", "score", "duration_seconds")} for r in rows],
            "finished": finished, "snapshot_id": self.snapshot_id, "snapshot_seconds": self.snapshot_seconds[-100:],
            "updated_at": time.time()})

    def project(self, index: int) -> Path:
        """The KerasTuner project of the index-th seed."""
        return project_parent(self.snapshot_dir, self.seeds[index]) / "search" if self.multi else self.project_dir

    def job_trial(self, trial_id: str, index: Optional[int] = None) -> str:
        """A seed's trial under its job-wide id (nascloud.agent.seeds); one seed's ids are KerasTuner's."""
        if not self.multi:
            return trial_id
        return job_trial_id(self.seed_index if index is None else index, trial_id, self.search.max_trials,
                            len(self.seeds))

    def rows(self) -> list[dict]:
        """The job's trials, best first; with several seeds, every seed's, under job-wide ids and with their seed."""
        from nascloud.agent.search import rank_trials, trial_rows

        search = self.search
        rows = []
        for index, seed in enumerate(self.seeds):
            if self.project(index).exists():
                found = trial_rows(self.project(index), search.objective_name, search.maximize)
                rows += [r | {"trial_id": self.job_trial(r["trial_id"], index), "seed": seed} if self.multi else r
                         for r in found]
        return rank_trials(rows, search.maximize)

    def exit_status(self, status: str, message: str) -> AgentResult:
        from nascloud.jobbucket import FINAL

        if self.governance is not None and status in FINAL:
            # The final event before the record that ends the job: whoever sees the end (`resume` and `watch`
            # return at it) finds its event in `logs`; the governor's own, later, is then a no-op (once), or
            # writes it where this one could not.
            try:
                self.governance.conclude(status, message)
            except NascloudError as error:
                log.warning("could not write the job's final event: %s", error)
        self.store.put_json("agent/exit.json", {"status": status, "message": message, "time": time.time(),
                                                "instance_id": self.options.instance_id, "pid": os.getpid(),
                                                "requests": asdict(self.store.requests)})
        return AgentResult(status, message)

    def stop_reason(self) -> Optional[tuple[str, str]]:
        """A stop request, the budget or the deadline, from the bucket (the heartbeat thread asks too)."""
        return self.governance.stop_reason() if self.governance is not None else None

    def _heartbeat_loop(self, seconds: float) -> None:
        while not self._stopped.wait(seconds):
            try:
                self.heartbeat()
                reason = self.stop_reason()
            except Exception as error:  # any bucket or network error: the next beat retries; a dead
                log.warning("heartbeat failed: %s", error)  # heartbeat thread would look like a dead agent
                continue
            if reason:
                self.notices.request(*reason)
                return

    # -- search hooks ----------------------------------------------------------------------
    def trial_started(self, trial_id: str, epoch: int) -> None:
        trial_id = self.job_trial(trial_id)
        self.running = {"trial_id": trial_id, "epoch": epoch}
        log.info("trial %s starts at epoch %d", trial_number(trial_id), epoch + 1)  # numbered as every screen
        self.progress()

    def epoch_ended(self, trial_id: str, epoch: int) -> None:
        trial_id = self.job_trial(trial_id)
        self.running = {"trial_id": trial_id, "epoch": epoch + 1}
        if time.monotonic() - self.last_snapshot >= self.job.interval_seconds:
            self.snapshot(f"trial {trial_number(trial_id)} epoch {epoch + 1}")
        self.progress()

    def trial_ended(self, trial_id: str) -> None:
        trial_id = self.job_trial(trial_id)
        self.running = None
        self.snapshot(f"trial {trial_number(trial_id)} end")
        self.progress()

    def snapshot(self, why: str) -> None:
        self.phase = "snapshotting"
        log.info("publishing a snapshot after %s", why)
        if fault_armed("snapshot"):
            self._die_inside_publish()
        if self.seed_record is not None:
            self.seed_record.touch()  # the running seed's time, up to this snapshot, goes into it
        self.snapshot_id = self.store.publish(self.snapshot_dir)
        self.snapshot_seconds.append(round(self.store.last_publish.seconds, 4))
        self.last_snapshot = time.monotonic()
        log.info("snapshot %s committed", self.snapshot_id)
        self.phase = "searching"

    def _die_inside_publish(self) -> None:
        """Test-only (fault injection): SIGKILL after the publish's first upload, before its manifest."""
        objects = self.store.objects
        upload = objects.upload

        def upload_then_die(key: str, path: Path) -> None:
            upload(key, path)
            os.kill(os.getpid(), signal.SIGKILL)

        objects.upload = upload_then_die

    # -- the run ---------------------------------------------------------------------------
    def finished_before(self) -> bool:
        progress = self.store.get_json("agent/progress.json")
        return bool(progress and progress.get("finished")) and self.store.exists("results/leaderboard.json")

    def load_data(self) -> data_module.Splits:
        if self.job.data_name:
            from nascloud import datasets

            folder = datasets.fetch(datasets.bucket_store(self.store.url), self.job.data_name, self.work / "data")
            dataset = data_module.load_packed(folder)
        else:
            dataset = data_module.load_source(self.search)
        # Every seed searches the same split (the first seed's), so their test accuracies compare.
        return data_module.split(dataset, self.seeds[0], self.search.data_fraction)

    def run(self) -> AgentResult:
        if self.finished_before():
            # The exit record still names this instance: the orchestrator waits for it.
            return self.exit_status("finished", "the search finished before; results are in "
                                                f"{self.store.url}/results (nothing refitted)")
        self.heartbeat()  # a sign of life first: the money counts this instance as running
        reason = self.stop_reason()
        if reason:
            return self._stop(StopRequested(*reason))
        self.notices.install()
        beat = threading.Thread(target=self._heartbeat_loop, daemon=True, name="nascloud-heartbeat",
                                args=(float(os.environ.get("NASCLOUD_HEARTBEAT_SECONDS", "30")),))
        beat.start()
        start_polling(self.notices, pollers(self.job.cloud), float(os.environ.get("NASCLOUD_NOTICE_POLL_SECONDS", "5")),
                      self._stopped)
        try:
            return self._search()
        except StopRequested as stop:
            return self._stop(stop)
        except StaleWriterError:
            raise  # another agent owns the job now: its status is not ours to overwrite
        except NascloudError as error:
            self.exit_status("failed", str(error))
            raise
        except (RuntimeError, ValueError, OSError) as error:
            # RuntimeError: KerasTuner's "consecutive failures exceeded"; the rest: a broken set-up.
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            self.exit_status("failed", message)
            raise NascloudError(f"the search failed: {message}") from None
        finally:
            self._stopped.set()

    def _search(self) -> AgentResult:
        fault_point("import", delay=1.0)  # the timer fires while TensorFlow is being imported
        quiet_tensorflow()  # the slow import, before anything is spent
        require_gpu(self.job.gpu)
        from nascloud.agent import search as search_module

        self.snapshot_id = self.store.restore(self.snapshot_dir)
        if self.store.last_restore_warning:
            log.warning("%s", self.store.last_restore_warning)
        log.info("restored snapshot %s", self.snapshot_id or "none (a fresh search)")
        splits = self.load_data()
        self.snapshot_seconds = list((self.store.get_json("agent/progress.json") or {}).get("snapshot_seconds", []))
        self.phase = "searching"
        self.heartbeat()
        # When this instance trains: boot-to-training and recovery times for the job history.
        self.store.put_json(f"agent/training/{self.options.instance_id}.json",
                            {"time": time.time(), "agent_started": self.started})
        if not self.multi:
            search = self.search.model_copy(update={"seed": self.seeds[0]})  # `seeds: [7]` is seed 7
            search_module.set_seeds(search.seed)
            self.notices.hold()  # the tuner writes its project files while it is built
            model = search_module.build_auto_model(search, self.snapshot_dir, self)
            self.searching = True
            self.notices.release()
            search_module.fit(model, search, splits)
            self.snapshot("search end")
            return self._export(splits)
        self.seed_record = SeedRecord(self.snapshot_dir, self.seeds)
        for index, seed in enumerate(self.seeds):
            self.seed_index = index
            if self.seed_record.finished(seed):
                continue  # its search is in the snapshot: never run again
            self._search_seed(seed, splits)
        return self._export(splits)

    def _search_seed(self, seed: int, splits: data_module.Splits) -> None:
        """One seed's search, in its own project (resumed where its snapshot left it), then a snapshot that
        marks it finished."""
        import keras

        from nascloud.agent import search as search_module

        log.info("seed %d/%d (seed %d): trials %s-%s", self.seed_index + 1, len(self.seeds), seed,
                 trial_number(self.job_trial("0")), trial_number(self.job_trial(str(self.search.max_trials - 1))))
        search = self.search.model_copy(update={"seed": seed})
        self.notices.hold()  # the tuner writes its project files while it is built
        self.seed_record.begin(seed)
        keras.backend.clear_session()  # the previous seed's models: free them, and start from the same state
        search_module.set_seeds(seed)
        model = search_module.build_auto_model(search, project_parent(self.snapshot_dir, seed), self)
        self.searching = True
        self.progress()
        self.notices.release()
        search_module.fit(model, search, splits)
        self.notices.hold()  # the record and the snapshot that holds it agree: a stop waits for both
        try:
            self.seed_record.touch(finished=True)
            self.snapshot(f"seed {seed} end")
        finally:
            self.notices.release()

    def _export(self, splits: data_module.Splits) -> AgentResult:
        import autokeras  # noqa: F401  the saved model's custom layers
        import keras

        from nascloud.agent import deploy
        from nascloud.agent.evaluation import baseline, report_on_test

        self.phase = "exporting"
        self.heartbeat()
        best, seeds_board, seed = self._best_model(splits)
        model = keras.models.load_model(best)
        report = report_on_test(model, splits)
        accuracy = report["accuracy"]
        plain = baseline(self.search, splits, report)  # on the same split: did the search beat a plain model?
        log.info("baseline (%s): test accuracy %.4f, balanced accuracy %.4f", plain["kind"], plain["test_accuracy"],
                 plain["balanced_accuracy"])
        rows = self.rows()
        self.store.put_file("results/best_model.keras", best)
        self.store.put_json("results/labels.json", {"labels": splits.labels,
                                                    "input_shape": list(splits.x.shape[1:])})
        deploy.export(self.store, best, splits, accuracy, self.work / "deploy", seed)
        self.store.put_json("results/leaderboard.json", {
            "objective": self.search.objective_name, "best_trial_id": rows[0]["trial_id"] if rows else None,
            "test_accuracy": accuracy, "test_samples": int(len(splits.y_test)), "seed": seed,
            "data_fraction": self.search.data_fraction, "test_report": report, "baseline": plain, "trials": rows}
            | ({"seeds": seeds_board} if seeds_board else {}))
        self.phase = "done"
        self.progress(finished=True)  # last: the marker that stops a rerun from refitting
        self.heartbeat()
        done = sum(r["status"] == "COMPLETED" for r in rows)
        if self.governance is not None:
            self.governance.sample_storage()
        best = f"{rows[0]['score']:.4g}" if rows and rows[0]["score"] is not None else "-"
        return self.exit_status("finished", f"{done} trials completed; best {self.search.objective_name} {best}, "
                                            f"test accuracy {accuracy:.4f}")

    def _best_model(self, splits: data_module.Splits) -> tuple[Path, Optional[dict], int]:
        """The model to export and its seed: the search's best or, with several seeds, the best seed's (by the
        objective), with the seeds' report (nascloud.agent.seeds) beside it."""
        if not self.multi:
            return self.project_dir / "best_model.keras", None, self.seeds[0]
        import keras

        from nascloud.agent.search import accuracy_on_test
        from nascloud.agent.seeds import report

        rows, results = self.rows(), []
        for index, seed in enumerate(self.seeds):
            top = next((r for r in rows if r["seed"] == seed and r["status"] == "COMPLETED"
                        and r["score"] is not None), None)
            saved = self.project(index) / "best_model.keras"
            accuracy = accuracy_on_test(keras.models.load_model(saved), splits) if top and saved.exists() else None
            results.append({"best_score": top and top["score"], "best_trial_id": top and top["trial_id"],
                            "test_accuracy": accuracy, "trials": sum(r["seed"] == seed for r in rows)})
        self.heartbeat()  # this instance seen now: its ledger entry bills up to the export, not a beat before it
        now = time.time()
        ledger, spent = (self.governance.bucket.ledger(), self.governance.spent(now)) if self.governance else ([], 0.0)
        board = report(self.seed_record, results, ledger, spent, now)
        best_seed = rows[0]["seed"] if rows and rows[0]["status"] == "COMPLETED" else self.seeds[0]
        for run in board["runs"]:
            log.info("seed %d: best %s %s, test accuracy %s, %.0f s, $%.4f (own $%.4f)", run["seed"],
                     self.search.objective_name, run["best_score"], run["test_accuracy"], run["seconds"],
                     run["cost_usd"], run["own_usd"])
        board["best_seed"] = best_seed
        return self.project(self.seeds.index(best_seed)) / "best_model.keras", board, best_seed

    def _stop(self, stop: StopRequested) -> AgentResult:
        self.notices.hold()  # a second notice must not interrupt the final snapshot
        if self.searching:
            where = (f"trial {trial_number(self.running['trial_id'])} epoch {self.running['epoch']}"
                     if self.running else "a trial's end")
            self.snapshot(f"{where} ({stop.reason}: {stop.message})")
            self.progress()
        if self.governance is not None:
            self.governance.sample_storage()
        return self.exit_status(stop.reason, stop.message)


def run_agent(options: AgentOptions) -> AgentResult:
    return Agent(open_job(options.target), options).run()


class _EpochClock:
    """Search hooks that only time epochs (calibration needs no snapshots)."""

    def __init__(self) -> None:
        self.notices = Notices()
        self.ends: list[float] = []

    def trial_started(self, trial_id: str, epoch: int) -> None:
        self.ends.append(time.monotonic())

    def epoch_ended(self, trial_id: str, epoch: int) -> None:
        self.ends.append(time.monotonic())

    def trial_ended(self, trial_id: str) -> None:
        pass


CALIBRATION_EPOCHS = 4


def calibrate(spec: JobSpec, directory: Path) -> dict:
    """One short trial (CALIBRATION_EPOCHS) on this machine, timed end to end: the median of the epochs after
    the first is the seconds per epoch (the first includes graph tracing; one epoch of digits is 0.2 s, so a
    single one strays by a third with whatever else the machine runs); the rest of the trial (model build,
    tracing, the tuner's trial end) is the per-trial overhead; TensorFlow's import, the data and the search's
    set-up are the per-job set-up. Returns the record `estimate` reads."""
    from nascloud import history

    began = time.monotonic()
    data_module.check_data_source(spec.search)
    quiet_tensorflow()
    from nascloud.agent import search as search_module

    splits = data_module.split(data_module.load_source(spec.search), spec.search.seed, spec.search.data_fraction)
    clock = _EpochClock()
    search_module.set_seeds(spec.search.seed)
    model = search_module.build_auto_model(spec.search, directory, clock, max_trials=1)
    fit_began = time.monotonic()
    search_module.fit(model, spec.search, splits, epochs=CALIBRATION_EPOCHS)
    fit_seconds = time.monotonic() - fit_began
    if len(clock.ends) < CALIBRATION_EPOCHS + 1:
        raise NascloudError(f"the calibration trial failed before {CALIBRATION_EPOCHS} epochs; run "
                            f"{command('agent', 'JOB.yaml')} to see the trial's error")
    seconds = statistics.median(b - a for a, b in zip(clock.ends[1:], clock.ends[2:]))
    gpus = search_module.gpu_names()
    return {"seconds_per_epoch": seconds, "seconds_per_sample": seconds / len(splits.y_train),
            "samples": int(len(splits.y_train)), "gpu": gpus[0] if gpus else None, "measured_at": time.time(),
            "trial_overhead_seconds": max(0.0, fit_seconds - CALIBRATION_EPOCHS * seconds),
            # the part inside the fit: the first epoch's graph tracing
            "in_trial_overhead_seconds": max(0.0, clock.ends[-1] - clock.ends[0] - CALIBRATION_EPOCHS * seconds),
            "setup_seconds": fit_began - began, "host_load": history.host_load()}
