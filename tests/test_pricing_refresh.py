"""The live refreshers through the real clients: boto3 against moto (EC2 spot price history), and
google-cloud-billing's REST transport against a local server speaking the Cloud Billing Catalog API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nascloud.errors import CloudError
from nascloud.pricing import load_catalog
from nascloud.pricing.catalog import PACKAGED
from nascloud.pricing import refresh


@pytest.fixture(scope="module")
def base():
    return list(load_catalog(PACKAGED).offers)


def price_list_entry(instance_type, usd):
    """One entry as the Pricing API returns it: a JSON string per product."""
    return json.dumps({
        "product": {"attributes": {"instanceType": instance_type, "location": "US East (N. Virginia)"}},
        "terms": {"OnDemand": {"ABC.JRTCKXETXF": {"priceDimensions": {"ABC.JRTCKXETXF.6YS6EN2CT7": {
            "unit": "Hrs", "pricePerUnit": {"USD": f"{usd:.10f}"}}}}}},
    })


def test_parse_price_list():
    assert refresh.parse_price_list([price_list_entry("g4dn.xlarge", 0.526),
                                     price_list_entry("g5.xlarge", 1.006)]) == {"g4dn.xlarge": 0.526, "g5.xlarge": 1.006}


def test_aws_spot_prices_from_moto_become_a_loadable_catalog(moto_reset, base, tmp_path):
    offers = refresh.aws_spot_offers(base, "us-east-1", {"g4dn.xlarge": 0.55}, as_of="2026-11-28")
    t4 = [o for o in offers if o.instance_type == "g4dn.xlarge"]
    assert t4 and all(o.zone.startswith("use1-az") for o in t4)  # zone names mapped to zone IDs
    assert {o.on_demand for o in t4} == {0.55} and all(o.spot == 0.00001 for o in t4)  # moto's spot price
    g5 = next(o for o in offers if o.instance_type == "g5.xlarge")
    assert g5.on_demand == 1.006 and g5.source.startswith("catalog on-demand")
    refresh.write_offers(offers, tmp_path / "aws.csv")
    mine = load_catalog(tmp_path)
    assert len(mine.offers) == len(offers) and mine.offers[0].as_of == "2026-11-28"


def sku(description, usd, regions=("us-central1",), usage="OnDemand", group="GPU"):
    units, nanos = int(usd), round((usd - int(usd)) * 1e9)
    return {"name": f"services/6F81-5844-456A/skus/{abs(hash(description)) % 10**8}", "skuId": "X",
            "description": description, "serviceRegions": list(regions),
            "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                         "resourceGroup": group, "usageType": usage},
            "pricingInfo": [{"pricingExpression": {"usageUnit": "h", "tieredRates": [
                {"startUsageAmount": 0, "unitPrice": {"currencyCode": "USD", "units": str(units), "nanos": nanos}}]}}]}


SKUS = [
    sku("Nvidia Tesla T4 GPU running in Americas", 0.35),
    sku("Nvidia Tesla T4 GPU attached to Spot Preemptible VMs running in Americas", 0.1915, usage="Preemptible"),
    sku("Commitment v1: Nvidia Tesla T4 GPU running in Americas", 0.22, usage="Commit1Yr"),
    sku("N1 Predefined Instance Core running in Americas", 0.031611, group="CPU"),
    sku("N1 Predefined Instance Ram running in Americas", 0.004237, group="RAM"),
    sku("Spot Preemptible N1 Predefined Instance Core running in Americas", 0.01, usage="Preemptible", group="CPU"),
    sku("Spot Preemptible N1 Predefined Instance Ram running in Americas", 0.0015, usage="Preemptible", group="RAM"),
    sku("Nvidia Tesla T4 GPU running in Frankfurt", 0.41, regions=("europe-west3",)),
]


@pytest.fixture
def billing_server():
    """Serves GET /v1/services/6F81-5844-456A/skus in two pages, as the Cloud Billing Catalog API does."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if not self.path.startswith("/v1/services/6F81-5844-456A/skus"):
                self.send_error(404)
                return
            second = "pageToken=p2" in self.path
            body = json.dumps({"skus": SKUS[4:] if second else SKUS[:4], "nextPageToken": "" if second else "p2"})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def billing_client(endpoint):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import billing_v1

    return billing_v1.CloudCatalogClient(transport="rest", client_options=ClientOptions(api_endpoint=endpoint),
                                         credentials=AnonymousCredentials())


def test_gcp_offers_are_machine_plus_accelerator_from_the_billing_catalog(billing_server, base, tmp_path):
    offers = refresh.refresh_gcp(base, client=billing_client(billing_server))
    t4 = [o for o in offers if o.gpu == "T4"]
    assert {o.zone for o in t4} == {"us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"}
    # n1-standard-4: 4 vCPU × 0.031611 + 15 GiB × 0.004237 = 0.19 (rounded) + T4 0.35
    assert t4[0].on_demand == pytest.approx(4 * 0.031611 + 15 * 0.004237 + 0.35)
    assert t4[0].spot == pytest.approx(4 * 0.01 + 15 * 0.0015 + 0.1915)
    assert {o.gpu for o in offers} == {"T4"}  # no SKUs served for the others: left out, not guessed
    refresh.write_offers(offers, tmp_path / "gcp.csv")
    assert load_catalog(tmp_path).select(gpu="T4")[0].accelerator_type == "nvidia-tesla-t4"


def test_gcp_refresh_failure_is_a_cloud_error(base):
    with pytest.raises(CloudError, match="GCP price refresh failed"):
        refresh.refresh_gcp(base, client=billing_client("http://127.0.0.1:9"))
