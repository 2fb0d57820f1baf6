"""Stops the agent honours: SIGTERM, an AWS spot instance-action served on 127.0.0.1, a stop request,
the budget and the deadline; a failed trial is recorded and never confused with a preemption."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures.search import LiveAgent, check_chain, make_bundle, run_agent

AWS_NOTICE_WINDOW = 120  # seconds between the instance-action notice and the instance going away


class FakeImds(BaseHTTPRequestHandler):
    """IMDSv2: a token from PUT /latest/api/token, required on every GET."""

    armed = False
    TOKEN = "token-for-test"

    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._answer(200, self.TOKEN)
        else:
            self._answer(400, "")

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != self.TOKEN:
            self._answer(401, "")
        elif self.path == "/latest/meta-data/spot/instance-action" and type(self).armed:
            self._answer(200, json.dumps({"action": "terminate", "time": "2026-11-28T06:00:00Z"}))
        else:
            self._answer(404, "")

    def _answer(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def imds():
    handler = type("Imds", (FakeImds,), {"armed": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def store_of(url):
    from nascloud.checkpoints import open_store

    return open_store(url)


@pytest.mark.search
def test_sigterm_and_aws_notice_each_end_in_a_final_snapshot_and_the_search_resumes(tmp_path, imds):
    handler, endpoint = imds
    url = make_bundle(tmp_path, "digits-notice-2c2c2c", max_trials=4)
    store = store_of(url)
    logs = []

    agent = LiveAgent(url, tmp_path / "work-0", NASCLOUD_AWS_METADATA_URL=endpoint)
    agent.wait_for(r"publishing a snapshot after trial 2 epoch 1")  # the second trial
    agent.proc.send_signal(signal.SIGTERM)
    run = agent.finish(timeout=AWS_NOTICE_WINDOW)
    logs.append(run.log)
    assert run.code == 75, run.log
    assert "(preempted: received SIGTERM)" in run.log
    assert run.log.rstrip().splitlines()[-2].startswith("nascloud agent: snapshot")  # final snapshot, then exit
    assert store.get_json("agent/exit.json")["status"] == "preempted"

    agent = LiveAgent(url, tmp_path / "work-1", NASCLOUD_AWS_METADATA_URL=endpoint)
    agent.wait_for(r"publishing a snapshot after trial 3 epoch 1")  # the third
    handler.armed = True
    run = agent.finish(timeout=AWS_NOTICE_WINDOW)
    logs.append(run.log)
    handler.armed = False
    assert run.code == 75, run.log
    exit_status = store.get_json("agent/exit.json")
    assert exit_status["status"] == "preempted" and "instance-action terminate" in exit_status["message"]

    # The last run: a trial that fails on its own (the 2nd trial this process builds) is recorded
    # failed and the search goes on.
    run = run_agent(url, tmp_path / "work-2", kill_at="fail-trial:2", NASCLOUD_AWS_METADATA_URL=endpoint)
    logs.append(run.log)
    assert run.code == 0, run.log
    report = check_chain(logs)
    assert report.problems == []
    # The logs number trials as the screens do, from 1 (KerasTuner's ids, in the leaderboard, from 0).
    assert any(trial == "2" and epoch >= 1 for _, trial, epoch in report.resumes)
    assert any(trial == "3" and epoch >= 1 for _, trial, epoch in report.resumes)
    statuses = {row["trial_id"]: row["status"] for row in store.get_json("results/leaderboard.json")["trials"]}
    assert statuses == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED", "3": "FAILED"}
    progress = store.get_json("agent/progress.json")
    assert (progress["trials_done"], progress["trials_failed"], progress["finished"]) == (3, 1, True)


def ledger_entry(instance_id: str, price: float, launched_at: float, ended_at=None) -> dict:
    return {"instance_id": instance_id, "group": "search", "cloud": "local", "instance_type": "local", "zone": None,
            "spot": True, "price_per_hour": price, "launched_at": launched_at, "last_seen": ended_at or launched_at,
            "ended_at": ended_at}


@pytest.mark.parametrize("setup, status, code", [
    # An earlier instance already spent the whole budget (an hour at $5/h of a $5 budget).
    (lambda store, now: store.put_json("ledger/i-earlier.json", ledger_entry("i-earlier", 5.0, now - 7200, now - 3600)),
     "budget", 3),
    # The job was created three hours ago with a two-hour deadline (resume writes budget.json).
    (lambda store, now: store.put_json("budget.json", {"usd": 5, "max_hours": 0.0001, "updated_at": now}),
     "deadline", 3),
    # `nascloud stop` from another machine.
    (lambda store, now: store.put_json("stop.json", {"time": now, "by": "nascloud stop on a laptop"}), "stopped", 0),
])
def test_budget_deadline_and_stop_request_in_the_bucket_stop_before_any_compute(tmp_path, setup, status, code):
    url = make_bundle(tmp_path, "digits-cap-5f5f5f", budget={"usd": 5})
    store = store_of(url)
    setup(store, time.time())
    # A TensorFlow that leaves a mark when imported, first on the path: a stop before any compute never
    # imports it (the import alone takes seconds of a billed instance).
    shim, marker = tmp_path / "shim", tmp_path / "tensorflow-imported"
    (shim / "tensorflow").mkdir(parents=True)
    (shim / "tensorflow" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError\n")
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    run = run_agent(url, tmp_path / "work", PYTHONPATH=path)
    assert run.code == code, run.log
    assert store.get_json("agent/exit.json")["status"] == status
    assert not marker.exists(), run.log
    assert "restored snapshot" not in run.log and store.list() == []  # nothing restored, nothing trained


@pytest.mark.search
def test_the_cap_counts_from_the_instance_launch_and_stops_mid_search_with_a_final_snapshot(tmp_path):
    # This instance launched 61 s ago at $36/h ($0.61 so far) after an earlier one's $0.30: a $1.20 budget
    # runs out about 29 s into the agent's run, mid-search.
    url = make_bundle(tmp_path, "digits-cap-6b6b6b", budget={"usd": 1.2}, max_trials=20, epochs=20)
    store = store_of(url)
    now = time.time()
    store.put_json("ledger/i-earlier.json", ledger_entry("i-earlier", 1.08, now - 3600, now - 2600))
    store.put_json("ledger/i-me.json", ledger_entry("i-me", 36.0, now - 61))
    run = run_agent(url, tmp_path / "work", "--instance-id", "i-me", NASCLOUD_SHUTDOWN_SECONDS="0")
    assert run.code == 3, run.log
    exit_record = store.get_json("agent/exit.json")
    assert exit_record["status"] == "budget" and "of the $1.20 budget" in exit_record["message"]
    assert re.search(r"trial \S+ starts", run.log) and re.search(r"publishing a snapshot after .*\(budget", run.log)
    entry = store.get_json("ledger/i-me.json")
    spent = 0.3 + 36.0 * (entry["last_seen"] - entry["launched_at"]) / 3600
    assert spent <= 1.2 + 36.0 * 2 / 3600  # within two heartbeats of the cap


def test_a_gpu_offer_without_a_gpu_is_refused_before_training(tmp_path):
    url = make_bundle(tmp_path, "digits-gpu-6a6a6a", gpu="T4", cloud="aws")
    run = run_agent(url, tmp_path / "work", NASCLOUD_AWS_METADATA_URL="http://127.0.0.1:9")
    assert run.code == 1
    assert run.log.strip().splitlines()[-1] == (
        "Error: the offer has a T4 GPU but TensorFlow sees none; install the search extra (tensorflow, "
        "not tensorflow-cpu) and the NVIDIA driver, or set compute.gpu: null for a CPU run")
    assert store_of(url).list() == []


class FakeGce(BaseHTTPRequestHandler):
    preempted = "FALSE"

    def do_GET(self):
        ok = self.path == "/computeMetadata/v1/instance/preempted" and self.headers.get("Metadata-Flavor") == "Google"
        data = type(self).preempted.encode() if ok else b""
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_metadata_pollers_read_aws_imdsv2_and_gce(imds):
    from nascloud.agent.notices import aws_instance_action, gce_preempted

    handler, endpoint = imds
    assert aws_instance_action(endpoint) is None
    handler.armed = True
    assert aws_instance_action(endpoint) == "AWS spot instance-action terminate at 2026-11-28T06:00:00Z"
    assert aws_instance_action("http://127.0.0.1:9") is None  # unreachable: no notice, no crash

    gce = type("Gce", (FakeGce,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), gce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/computeMetadata/v1"
    try:
        assert gce_preempted(base) is None
        gce.preempted = "TRUE"
        assert gce_preempted(base) == "GCP instance/preempted is TRUE"
    finally:
        server.shutdown()


def test_the_space_constraints_pin_autokeras_names():
    from nascloud.agent.search import constraints
    from nascloud.job import SearchSection

    hp = constraints(SearchSection(space={"block_type": ["vanilla", "resnet"], "kernel_size": [3, 5],
                                          "num_blocks": [1, 2], "dropout": [0.5]}))
    space = {p.name: p for p in hp.space}
    assert space["image_block/block_type"].values == ["resnet", "vanilla"]
    assert space["image_block/conv_block_1/kernel_size"].values == [3, 5]
    assert space["image_block/conv_block_1/num_blocks"].values == [1, 2]
    assert space["image_block/conv_block_1/dropout"].values == [0.5]
    assert space["image_block/res_net_block_1/pretrained"].value is False
    table = constraints(SearchSection(task="structured_data_classification", space={"num_layers": [2, 3]}))
    assert {p.name: p.values for p in table.space}["structured_data_block/dense_block_1/num_layers"] == [2, 3]


def test_the_space_constraints_use_the_names_autokeras_declares():
    """A constraint takes effect only under the exact name AutoKeras' block declares (else KerasTuner adds
    it as one more, unused, hyperparameter). The blocks are built here as a trial builds them: each in a
    fresh session, so AutoKeras numbers its inner blocks from 1 (res_net_block_1)."""
    import autokeras as ak
    import keras
    import keras_tuner

    from nascloud.agent.search import IMAGE_BLOCK, TABLE_BLOCK, constraints
    from nascloud.job import SearchSection

    def declared(block, shape: tuple) -> set:
        keras.backend.clear_session()
        hp = keras_tuner.HyperParameters()
        block.build(hp, keras.Input(shape))
        return {p.name for p in hp.space}

    def ours(**search) -> set:
        return {p.name for p in constraints(SearchSection(**search)).space}

    for block_type in ("vanilla", "resnet", "xception", "efficient"):
        autokeras_names = declared(ak.ImageBlock(block_type=block_type, name=IMAGE_BLOCK), (8, 8, 1))
        pinned = ours(space={"block_type": [block_type]})
        assert pinned and pinned <= autokeras_names, (block_type, pinned - autokeras_names)
    assert "image_block/block_type" in ours(space={"block_type": ["vanilla", "resnet"]})
    assert "image_block/block_type" in declared(ak.ImageBlock(name=IMAGE_BLOCK), (8, 8, 1))
    table = ours(task="structured_data_classification")
    assert table and table <= declared(ak.StructuredDataBlock(name=TABLE_BLOCK), (3,))
