"""Where and how the watch loop launches. A zone with no capacity for the offer: the loop launches in the
next cheapest zone of the same region, priced at that zone's catalog price; when no zone has any, it
waits without asking the cloud again until a few minutes have passed. After the preemptions a job
allows, it launches on-demand. Through the real clients against moto (AWS) and the local Compute Engine
server (GCP); the loop is ticked by hand with a controlled clock and never connects to an instance."""

from __future__ import annotations

import pytest

CIDR = "198.51.100.9/32"
SEARCH = {"data": "sklearn:digits", "max_trials": 1, "epochs": 1}


class Loop:
    """A job created as `launch` creates it, and its watch loop on a clock the test moves."""

    def __init__(self, spec, provisioner):
        from nascloud import launching
        from nascloud.orchestrator import Orchestrator, WatchSettings
        from nascloud.state import State

        self.state = State()
        self.job_id = launching.create_job(self.state, spec, launching.choose_offer(spec, None), None, 10)
        self.now = 1_900_000_000.0
        self.orchestrator = Orchestrator(self.state, self.job_id, provisioner, WatchSettings(),
                                         clock=lambda: self.now)
        self.zones = self.state.job(self.job_id).bundle["offer"]["zones"]

    def capacity_events(self) -> list:
        return [e.data["zone"] for e in self.state.events(self.job_id, "capacity")]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def gcp_job(gce, home, **compute):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from nascloud.job import parse_job
    from nascloud.provisioners.gcp import GcpProvisioner

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    client.lookup_bucket("nascloud-capacity") or client.create_bucket("nascloud-capacity")  # the server is shared
    spec = parse_job({"name": "digits-gcp", "search": SEARCH,
                      "compute": {"cloud": "gcp", "gpu": "T4", "region": "us-central1",
                                  "instance_type": "n1-standard-4", "ssh_cidr": CIDR, **compute},
                      "checkpoint": {"bucket": "gs://nascloud-capacity/jobs"}})
    gcp = GcpProvisioner(project=gce.project, home=home, cidr_lookup=lambda: CIDR,
                         service_account="nascloud-job@nascloud-test.iam.gserviceaccount.com")
    return Loop(spec, gcp)


def test_gcp_zone_without_capacity_moves_to_the_next_and_waits_when_none_has_any(gce, gcs_server, home):
    loop = gcp_job(gce, home)
    zones = [z["zone"] for z in loop.zones]
    assert zones == ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]

    gce.exhausted_zones.update(zones)
    for _ in zones:
        assert loop.orchestrator.tick() is None
    assert loop.capacity_events() == zones and gce.count("instances.insert") == 4
    loop.now += 60
    loop.orchestrator.tick()  # every zone short of capacity a minute ago: wait, ask nothing
    assert gce.count("instances.insert") == 4 and not loop.state.instances(loop.job_id)

    gce.exhausted_zones.discard("us-central1-c")
    loop.now += 300  # the retry window has passed: cheapest first again, a and b still short
    for _ in range(3):
        loop.orchestrator.tick()
    (row,) = loop.state.instances(loop.job_id)
    assert row.zone == "us-central1-c" and gce.count("instances.insert") == 7
    offer = loop.state.job(loop.job_id).bundle["offer"]
    assert row.price_per_hour == pytest.approx(loop.zones[2]["price_per_hour"] + offer["extras_per_hour"])
    assert loop.orchestrator.stop() == "stopped"
    assert not gce.firewalls and all(i["status"] == "TERMINATED" for i in gce.instances.values())


def test_aws_pins_the_cheapest_zone_id_and_moves_on_when_it_has_no_capacity(moto_reset, ec2_short_of_capacity,
                                                                           home):
    import boto3

    from nascloud.job import parse_job
    from nascloud.provisioners.aws import AwsProvisioner

    boto3.client("s3").create_bucket(Bucket="nascloud-capacity")
    spec = parse_job({"name": "digits-aws", "search": SEARCH,
                      "compute": {"cloud": "aws", "gpu": "T4", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                  "image": "ami-03cf127a", "ssh_cidr": CIDR},
                      "checkpoint": {"bucket": "s3://nascloud-capacity/jobs"}})
    aws = AwsProvisioner(home=home, region="us-east-1", cidr_lookup=lambda: CIDR, poll_seconds=0.01)
    loop = Loop(spec, aws)
    prices = [z["price_per_hour"] for z in loop.zones]
    assert prices == sorted(prices) and all(z["zone_id"].startswith("use1-az") for z in loop.zones)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    name_of = {z["ZoneId"]: z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    cheapest, second = loop.zones[0], loop.zones[1]
    ec2_short_of_capacity.add(name_of[cheapest["zone_id"]])

    loop.orchestrator.tick()
    assert loop.capacity_events() == [cheapest["zone_id"]] and not loop.state.instances(loop.job_id)
    loop.orchestrator.tick()
    (row,) = loop.state.instances(loop.job_id)
    assert row.zone == name_of[second["zone_id"]]  # the zone ID the catalog prices, as this account names it
    offer = loop.state.job(loop.job_id).bundle["offer"]
    assert row.price_per_hour == pytest.approx(second["price_per_hour"] + offer["extras_per_hour"])
    assert loop.orchestrator.stop() == "stopped"
    states = [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert set(states) <= {"terminated", "shutting-down"}


def test_after_the_allowed_preemptions_the_replacement_is_on_demand_at_its_price(gce, gcs_server, home):
    loop = gcp_job(gce, home, on_demand_after_preemptions=1)
    loop.orchestrator.tick()
    (spot,) = loop.state.instances(loop.job_id)
    gce.preempt(spot.instance_id)
    loop.now += 30
    loop.orchestrator.tick()  # the provider says preempted: recovery recorded
    loop.now += 2
    loop.orchestrator.tick()  # the replacement
    first, second = loop.state.instances(loop.job_id)
    assert (first.spot, first.end_reason, second.spot) == (True, "preempted", False)
    bodies = [b for r, b in gce.bodies if r == "instances.insert"]
    assert bodies[-1]["scheduling"]["provisioningModel"] == "STANDARD"
    offer, zone = loop.state.job(loop.job_id).bundle["offer"], loop.zones[0]
    assert second.price_per_hour == pytest.approx(zone["on_demand_price_per_hour"] + offer["on_demand_extras_per_hour"])
    assert offer["on_demand_extras_per_hour"] > offer["extras_per_hour"]  # GCP bills a spot VM's IPv4 at half
    assert len(loop.state.events(loop.job_id, "fallback")) == 1
    assert loop.orchestrator.stop() == "stopped"
