"""nascloud.pricing: the price catalogs (CSV with a source and date per row), their loader, and the live
refreshers (pricing.refresh; boto3 and google-cloud-billing are imported only there)."""

from nascloud.pricing.catalog import Catalog, load_catalog

__all__ = ["Catalog", "load_catalog"]
