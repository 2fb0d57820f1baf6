"""Shared fixtures. Every server binds 127.0.0.1; no test reaches a real cloud."""

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.search", "tests.fixtures.moto_ec2", "tests.fixtures.gce",
                  "tests.fixtures.aws_iam", "tests.fixtures.gcp_iam"]
