"""Temporary (helper's): the e2e AWS tests with both GPU quotas set (preflight now reads the on-demand one too)."""
import pytest
from tests import test_e2e_clouds as e2e
from tests.fixtures.aws_iam import shared_proxy
from tests.fixtures.hypervisor import hypervisor_env  # noqa: F401
from tests.fixtures.moto_ec2 import asg_partial_updates  # noqa: F401


def test_reclaim(moto_reset, ec2_quotas, asg_partial_updates, hypervisor_env, monkeypatch, tmp_path, record_property):
    ec2_quotas["L-DB2E81BA"] = 8.0
    try:
        e2e.test_aws_a_spot_reclaim_mid_search_the_group_replaces_it_and_nothing_is_left(
            moto_reset, ec2_quotas, asg_partial_updates, hypervisor_env, monkeypatch, tmp_path, record_property)
    finally:
        print("REFUSED", shared_proxy(moto_reset).refused)


def test_cap(moto_reset, ec2_quotas, hypervisor_env, monkeypatch, tmp_path):
    ec2_quotas["L-DB2E81BA"] = 8.0
    try:
        e2e.test_aws_the_cap_holds_with_the_laptop_gone(moto_reset, ec2_quotas, hypervisor_env, monkeypatch, tmp_path)
    finally:
        print("REFUSED", shared_proxy(moto_reset).refused)
