"""Several suites validated in one GX project share one data-docs site."""

from expectations.runner import validate_table
from tests.data.test_expectations import canonical


def test_one_site_lists_every_table(tmp_path):
    inter, items = canonical()
    validate_table("items", items, "items.csv", tmp_path)
    out = validate_table("interactions", inter, "interactions.csv", tmp_path, {"catalogue": items["item_id"].to_list()})
    assert out.success
    pages = {p.name for p in (out.docs_dir / "validations").iterdir()}
    assert pages == {"items", "interactions"}
