"""Bad input refused at the edge (issue 14): exit 2, one `Error:` line naming the field or flag, no
traceback, before anything is spent. In process (the CLI's own `main`), so the ~100 hostile inputs
at the end stay fast; nothing here reaches a cloud (endpoints and metadata servers point at a
closed local port)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from nascloud.cli import main
from nascloud.errors import UsageError
from tests.fixtures.servers import free_port

INF, NAN = float("inf"), float("nan")


@dataclass
class Outcome:
    code: object  # the exit code, or "uncaught X" when an exception escaped the CLI (a traceback)
    out: str
    err: str

    @property
    def refused_cleanly(self) -> bool:
        lines = self.err.strip().splitlines()
        return (self.code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and not self.out.strip()
                and "Traceback" not in self.err)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    closed = f"127.0.0.1:{free_port()}"
    for name in [k for k in os.environ if k.startswith(("AWS_", "GOOGLE_", "STORAGE_EMULATOR", "NASCLOUD_"))]:
        monkeypatch.delenv(name)
    for name, value in {"NASCLOUD_HOME": str(tmp_path / "home"), "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path),
                        "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed, "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_ENDPOINT_URL": f"http://{closed}", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                        "AWS_CONFIG_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    def run(*args) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["nascloud", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
        except Exception as error:  # what a user would see as a traceback
            code = f"uncaught {type(error).__name__}: {error}"
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return run


def write_job(tmp_path: Path, text: str | None = None, **sections) -> Path:
    """A local job (its bucket a folder under tmp_path) with `sections` merged in, or `text` as is."""
    job = {"name": "digits-x", "compute": {"cloud": "local", "gpu": None},
           "checkpoint": {"bucket": f"file://{tmp_path}/bucket"}}
    for section, fields in sections.items():
        job[section] = {**job.get(section, {}), **fields}
    path = tmp_path / "job.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(job))
    return path


def aws_job(tmp_path: Path, **compute) -> Path:
    return write_job(tmp_path, compute={"cloud": "aws", "gpu": "T4", **compute},
                     checkpoint={"bucket": "s3://nascloud-test/jobs"})


def one_error(outcome: Outcome) -> str:
    assert outcome.refused_cleanly, outcome
    return outcome.err.strip()


# ---- numbers: finite and in a stated range -----------------------------------------------------

@pytest.mark.parametrize("section, field, value, message", [
    ("budget", "usd", INF, "budget.usd: must be a number of dollars in (0, 1,000,000], got inf"),
    ("budget", "usd", NAN, "budget.usd: must be a number of dollars in (0, 1,000,000], got nan"),
    ("budget", "max_hours", INF, "budget.max_hours: must be a number of hours in (0, 8,760], got inf"),
    ("budget", "alerts", [NAN], "budget.alerts.0: must be a fraction of the budget in (0, 1], got nan"),
    ("compute", "price_per_hour", INF, "compute.price_per_hour: must be a number of dollars an hour in [0, 1,000]"),
    ("compute", "interruptions_per_hour", INF, "compute.interruptions_per_hour: must be a rate per hour in [0, 100]"),
    ("checkpoint", "interval_minutes", NAN, "checkpoint.interval_minutes: must be 'auto' or a number of minutes"),
    ("search", "seconds_per_epoch", 1e308, "search.seconds_per_epoch: must be a number of seconds in (0, 604,800]"),
    ("search", "trial_overhead_seconds", INF, "search.trial_overhead_seconds: must be a number of seconds"),
    ("search", "max_trials", 10**12, "search.max_trials: must be a whole number in [1, 10,000], got 1e+12"),
])
def test_a_job_files_number_out_of_range_is_refused_naming_the_field(cli, tmp_path, section, field, value, message):
    error = one_error(cli("estimate", write_job(tmp_path, **{section: {field: value}}), "--json"))
    assert message in error
    assert "--" not in error  # not a flag the user never passed (was: --price-per-hour, --checkpoint-minutes)


@pytest.mark.parametrize("name", ["x", "Digits", "digits_1", "digits-", "a" * 41])
def test_a_job_name_cloud_resources_cannot_carry_is_refused_with_the_rule_in_words(cli, tmp_path, name):
    path = write_job(tmp_path, text=yaml.safe_dump({"name": name}))
    error = one_error(cli("estimate", path, "--json"))
    assert "name: must be 2-40 lowercase letters, digits and hyphens" in error and repr(name) in error
    assert "pattern" not in error  # not the regular expression


@pytest.mark.parametrize("args, message", [
    (["--hours", "1e308"], "--hours must be a number of hours in (0, 100,000], got 1e+308"),
    (["--hours", "inf"], "--hours must be a number of hours in (0, 100,000], got inf"),
    (["--hours", "5", "--budget", "inf"], "--budget must be a number of dollars in (0, 1,000,000], got inf"),
    (["--trials", "1000000000", "--epochs", "3"], "--trials must be a whole number in [1, 10,000], got 1e+09"),
    (["--hours", "5", "--interruptions-per-hour", "1e9"], "--interruptions-per-hour must be a rate per hour"),
])
def test_estimate_flags_are_finite_and_in_range_and_never_print_infinity(cli, args, message):
    outcome = cli("estimate", *args, "--json")
    assert message in one_error(outcome) and "Infinity" not in outcome.out


@pytest.mark.parametrize("flag, value, field", [
    ("--budget", "inf", "budget.usd"), ("--max-hours", "inf", "budget.max_hours"),
    ("--price-per-hour", "nan", "compute.price_per_hour"),
])
def test_launch_flags_are_checked_before_the_dry_run_prints_a_request(cli, tmp_path, flag, value, field):
    assert f"{field}: must be" in one_error(cli("launch", write_job(tmp_path), "--dry-run", flag, value))


def test_check_field_lets_a_view_spot_a_value_stored_before_the_rule(monkeypatch):
    """The helper `status` calls on a job stored by an older version (an inf budget in its bundle)."""
    from nascloud.job import check_field

    assert check_field("budget.usd", 12.5) == 12.5 and check_field("checkpoint.interval_minutes", "auto") == "auto"
    with pytest.raises(UsageError, match=r"^budget\.usd: must be a number of dollars in \(0, 1,000,000\], got inf$"):
        check_field("budget.usd", INF)
    with pytest.raises(UsageError, match=r"^--max-hours must be a number of hours"):
        check_field("budget.max_hours", NAN, "--max-hours")


# ---- compute.ssh_cidr ---------------------------------------------------------------------------

@pytest.mark.parametrize("cidr, why", [
    ("0.0.0.0/0", "would open SSH to the whole internet"), ("::/0", "is IPv6"), ("not-a-cidr", "is not a network"),
    ("0.0.0.0/1", "admits 2,147,483,648 addresses"), ("10.0.0.0/8", "compute.ssh_allow_wide: true"),
    ("2001:db8::1/128", "is IPv6"), ("10.1.2.3/16", "host bits set"), ("256.1.1.1/32", "is not a network"),
])
def test_ssh_cidr_is_a_narrow_ipv4_network(cli, tmp_path, cidr, why):
    error = one_error(cli("launch", aws_job(tmp_path, ssh_cidr=cidr), "--dry-run"))
    assert "compute.ssh_cidr" in error and why in error


@pytest.mark.parametrize("compute, shown", [
    ({"ssh_cidr": "203.0.113.7"}, "203.0.113.7/32"), ({"ssh_cidr": "10.20.0.0/16"}, "10.20.0.0/16"),
    ({"ssh_cidr": "10.0.0.0/8", "ssh_allow_wide": True}, "10.0.0.0/8"),
])
def test_a_narrow_range_or_a_wide_one_insisted_on_reaches_the_request(cli, tmp_path, compute, shown):
    outcome = cli("launch", aws_job(tmp_path, **compute), "--dry-run")
    assert outcome.code == 0, outcome
    assert shown in outcome.out


def test_the_whole_internet_stays_refused_even_when_wide_is_allowed(cli, tmp_path):
    error = one_error(cli("launch", aws_job(tmp_path, ssh_cidr="0.0.0.0/0", ssh_allow_wide=True), "--dry-run"))
    assert "whole internet" in error


# ---- job files that are not job files -----------------------------------------------------------

def test_deeply_nested_yaml_is_one_line(cli, tmp_path):
    job = write_job(tmp_path, "name: digits-x\nsearch: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in one_error(cli("estimate", job))


def test_data_that_is_neither_csv_nor_npz_nor_a_folder_is_refused_at_launch(cli, tmp_path):
    outcome = cli("launch", write_job(tmp_path, search={"data": "/etc/passwd"}))
    assert "search.data /etc/passwd: a file, but neither .csv nor .npz" in one_error(outcome)
    assert not (tmp_path / "bucket").exists()  # nothing launched, no job recorded in its bucket


# ---- checkpoints: URLs, job names, credentials --------------------------------------------------

def test_checkpoints_of_a_folder_that_does_not_exist_exit_2(cli, tmp_path):
    assert "no folder /nonexistent/j" in one_error(cli("checkpoints", "list", "file:///nonexistent/j"))
    assert "no folder /nonexistent/j" in one_error(cli("checkpoints", "pull", "file:///nonexistent/j", tmp_path / "d"))


@pytest.fixture
def known_job(tmp_path):
    """A job this machine launched, as the job cache remembers it; its bucket folder holds its bundle (no data
    set: nothing here runs it)."""
    from nascloud.bundle import Bundle, OfferRecord
    from nascloud.checkpoints import open_store
    from nascloud.job import parse_job
    from nascloud.state import JobCache

    (tmp_path / "home").mkdir(exist_ok=True)
    url = f"file://{tmp_path}/bucket/digits-x-abc123"
    offer = OfferRecord(cloud="local", region="local", instance_type="local", gpu=None, spot=True, price_per_hour=0.0,
                        on_demand_price_per_hour=0.0)
    open_store(url).put_json("bundle/job.json", Bundle(
        job_id="digits-x-abc123", job_url=url, created_at=time.time(), spec=parse_job({"name": "digits-x"}),
        offer=offer, data="data/none.json", interval_minutes=1.0, billing_minimum_seconds=0.0).to_json())
    cache = JobCache(tmp_path / "home" / "jobs.db")
    cache.remember("digits-x-abc123", "digits-x", url, time.time())
    cache.close()
    return "digits-x-abc123"


@pytest.mark.parametrize("ref", ["", "_", "%", "digits_x", "d%"])
def test_a_job_reference_is_taken_literally(cli, known_job, ref):
    one_error(cli("checkpoints", "list", ref))


@pytest.mark.parametrize("ref", ["digits-x-abc123", "digits-x", "digits-x-ab"])
def test_an_exact_id_a_name_or_a_prefix_still_finds_the_job(cli, known_job, ref):
    outcome = cli("checkpoints", "list", ref)
    assert outcome.code == 0 and "no snapshots yet" in outcome.out and known_job in outcome.out


def test_a_malformed_aws_credentials_file_says_malformed(cli, tmp_path, monkeypatch):
    (tmp_path / "credentials").write_text("this is not\n[[[ an ini file\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    error = one_error(cli("checkpoints", "list", "s3://nascloud-test/jobs/j"))
    assert "malformed" in error and str(tmp_path / "credentials") in error


def test_a_malformed_gcp_credentials_file_says_malformed(cli, tmp_path, monkeypatch):
    (tmp_path / "adc.json").write_text('{"type": "servi')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "adc.json"))
    error = one_error(cli("checkpoints", "list", "gs://nascloud-test/jobs/j"))
    assert "malformed" in error and "not a valid json file" in error and "no Google Cloud credentials" not in error


# ---- a cloud's HTML error page -------------------------------------------------------------------

PAGE = ("<!DOCTYPE html>\n<html lang=en>\n<head><title>502 Bad Gateway</title>\n<style>body{margin:0}\n</style>"
        "</head>\n<body>\n<h1>Error: Server Error</h1>\n<p>The server encountered a temporary error.</p>\n"
        + "<div>" + "x" * 3000 + "</div>\n</body>\n</html>\n").encode()


@pytest.fixture
def html_server():
    """An endpoint that answers every request as a load balancer in trouble does: a 502 HTML page."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_clouds_html_error_page_is_cut_to_one_line(html_server):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import billing_v1

    from nascloud.errors import CloudError
    from nascloud.pricing import load_catalog, refresh

    client = billing_v1.CloudCatalogClient(transport="rest", credentials=AnonymousCredentials(),
                                           client_options={"api_endpoint": html_server})
    with pytest.raises(CloudError) as raised:
        refresh.refresh_gcp(list(load_catalog().offers), client=client)
    message = str(raised.value)
    assert "\n" not in message and "<" not in message and "body{" not in message and len(message) < 400
    assert "502 Bad Gateway Error: Server Error" in message


# ---- hostile inputs through every path that spends nothing ---------------------------------------

def _numbers(field: str, values) -> list:
    section, name = field.split(".")
    return [("job", {section: {name: v}}) for v in values]


HOSTILE = {
    "estimate flags": [
        ["--hours", v] for v in ("inf", "-inf", "nan", "1e308", "0", "-1", "1e6", "abc")
    ] + [
        ["--hours", "5", flag, v] for flag in ("--budget", "--price-per-hour", "--interruptions-per-hour",
                                                "--checkpoint-minutes") for v in ("inf", "nan", "-1", "1e308")
    ] + [
        ["--trials", v, "--epochs", "3", "--seconds-per-epoch", "10"] for v in ("0", "-3", "10000000000")
    ] + [
        ["--trials", "3", "--epochs", "3", "--seconds-per-epoch", v] for v in ("inf", "nan", "0", "1e308")
    ] + [["--trials", "3", "--epochs", "3", "--samples", "0"]],
    "job file values (estimate)": (
        _numbers("budget.usd", [INF, -INF, NAN, 1e308, 0, -5, "lots"])
        + _numbers("budget.max_hours", [INF, NAN, 1e9, 0])
        + _numbers("budget.alerts", [[NAN], [INF], [0.5, NAN], [2.0], [-0.5]])
        + _numbers("compute.price_per_hour", [INF, NAN, -1, 1e308])
        + _numbers("compute.interruptions_per_hour", [INF, NAN, -1])
        + _numbers("compute.on_demand_after_preemptions", [INF, -1, 2.5])
        + _numbers("checkpoint.interval_minutes", [INF, NAN, 0, -1, 1e308, "soon"])
        + _numbers("checkpoint.keep", [0, INF, 10**9])
        + _numbers("search.max_trials", [0, INF, NAN, 10**12, 2.5])
        + _numbers("search.epochs", [0, INF, 10**12])
        + _numbers("search.samples", [0, INF, 10**15])
        + _numbers("search.seconds_per_epoch", [INF, NAN, 0, 1e308])
        + _numbers("search.trial_overhead_seconds", [INF, NAN, -1])
        + _numbers("search.data_fraction", [NAN, INF, 0, 2])
        + _numbers("search.seed", [-1, INF, 2**64])
        + [("job", {"search": {"space": space}}) for space in (
            {"dropout": [NAN]}, {"dropout": [INF]}, {"num_blocks": [1, INF]}, {"num_blocks": [1, 10**6]},
            {"kernel_size": [INF]}, {"num_layers": [NAN, 2]})]
        + [("text", "name: digits-x\nsearch: " + "[" * 5000 + "]" * 5000),
           ("text", "name: digits-x\nsearch: " + "{a: " * 3000 + "1" + "}" * 3000),
           ("text", "- just\n- a list\n"), ("text", "name: [unclosed\n"), ("text", "\x00\x01binary"),
           ("text", ""), ("text", "name: Not_A_Name\n")]
    ),
    "launch --dry-run": [
        ["launch", "JOB", "--dry-run", flag, v] for flag in ("--budget", "--max-hours", "--price-per-hour")
        for v in ("inf", "nan", "-1", "1e308")
    ] + [["launch", ("aws", cidr), "--dry-run"] for cidr in (
        "0.0.0.0/0", "::/0", "not-a-cidr", "0.0.0.0/1", "10.0.0.0/8", "2001:db8::/64", "10.1.2.3/16",
        "1.2.3.4/33", "", "203.0.113.7/32; rm -rf /")] + [
        ["launch", ("data", data)] for data in ("/etc/passwd", "/nonexistent", "/dev/null")
    ],
    "job look-ups": [
        ["checkpoints", cmd, ref, *extra] for cmd, extra in (("list", []), ("pull", ["DIR"]))
        for ref in ("", " ", "_", "%", "%%", "d%", "digits_x", "*", "digits-x-abc12_", "'; DROP TABLE known_jobs; --",
                    "../digits-x", "x" * 5000, "digits-x-abc123 ", "\t", "ǆ")
    ],
    "checkpoint URLs": [
        ["checkpoints", cmd, url, *extra] for cmd, extra in (("list", []), ("pull", ["DIR"]))
        for url in ("file:///nonexistent/j", "file:///etc/passwd", "file:///dev/null/x", "file://", "s3://",
                    "s3:///x", "s3://UPPER/x", "s3://a/x", "s3://bucket-x/../x", "s3://bucket-x/a//b", "gs://",
                    "gs://-bad/x", "ftp://x/y", "://", "http://example.com/x", "file://./nowhere/j")
    ],
}


def _run_hostile(cli, tmp_path: Path, case) -> Outcome:
    if isinstance(case, tuple):  # a job file for estimate
        kind, value = case
        job = write_job(tmp_path, value) if kind == "text" else write_job(tmp_path, **value)
        return cli("estimate", job, "--json")
    args = []
    for arg in case:
        if arg == "JOB":
            arg = write_job(tmp_path)
        elif arg == "DIR":
            arg = tmp_path / "pulled"
        elif isinstance(arg, tuple) and arg[0] == "aws":
            arg = aws_job(tmp_path, ssh_cidr=arg[1])
        elif isinstance(arg, tuple):
            arg = write_job(tmp_path, search={"data": arg[1]})
        args.append(arg)
    return cli(*args) if args[0] in ("launch", "checkpoints") else cli("estimate", *args, "--json")


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_inputs_are_refused_cleanly(cli, tmp_path, request, kind):
    """Each input class, counted: how many were tried, how many refused with exit 2 and one line (the
    table in issue 14's closing note: run with -s). The look-ups run beside a real job they must miss."""
    known_job = request.getfixturevalue("known_job") if kind == "job look-ups" else None
    unclean = []
    for case in HOSTILE[kind]:
        outcome = _run_hostile(cli, tmp_path, case)
        if not outcome.refused_cleanly or "Infinity" in outcome.out + outcome.err:
            unclean.append((case if len(repr(case)) < 100 else repr(case)[:100], outcome))
    tried = len(HOSTILE[kind])
    print(f"\n| {kind} | {tried} | {tried - len(unclean)} |")
    assert not unclean, json.dumps([[repr(c), repr(o)[:300]] for c, o in unclean], indent=1)
    assert not (tmp_path / "bucket").exists() or [p.name for p in (tmp_path / "bucket").iterdir()] == [known_job]
