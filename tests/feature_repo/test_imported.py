"""`streamrec apply` on an imported log: the columns the importer leaves empty materialize as nulls."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from serving.recommend import load_catalog
from streamrec import load_settings
from streamrec.config import Settings
from streamrec.features import FeatureClient, _python
from streamrec.shell.cli import cli


def test_a_null_time_reads_back_as_none_as_feast_gives_it() -> None:
    from feast.protos.feast.types.Value_pb2 import Int64List, Value
    from feast.type_map import NULL_TIMESTAMP_INT_VALUE

    assert _python(Value(unix_timestamp_val=int(NULL_TIMESTAMP_INT_VALUE))) is None
    assert _python(Value(unix_timestamp_val=0)) == pd.Timestamp(0, tz="UTC")
    assert _python(Value(int64_list_val=Int64List(val=[1, 2]))) == [1, 2]


@pytest.mark.stack
def test_apply_materializes_an_imported_log_with_its_gaps(stack: Settings, tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("u,i,t,r\n1,10,1700000000,5\n1,11,1700000060,2\n2,10,1700000120,4\n")
    data = tmp_path / "data"
    result = CliRunner().invoke(cli, ["import", "table", str(log), "--user-col", "u", "--item-col", "i",
                                      "--time-col", "t", "--rating-col", "r", "--out", str(data)])
    assert result.exit_code == 0, result.output
    settings = load_settings(data_dir=data, kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
                             redis_url=stack.redis_url, embedded_redis_port=stack.embedded_redis_port)
    client = FeatureClient(settings, project=f"t{uuid.uuid4().hex[:8]}")
    try:
        client.apply()
        client.materialize()
        items = client.item_features(["10", "11"])
        assert list(items["top_category"]) == ["unknown", "unknown"]
        for column in ("stock", "discounted_price", "rating", "rating_count", "arrival_date"):
            assert items[column].isna().all(), column
        user = client.user_features("1")
        assert user["age"] is None and user["gender"] is None and user["preferred_categories"] == []
        assert pd.Timestamp(user["signup_date"]) == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
        # the recommender serves this catalogue from the store alone: the log itself is not needed
        (data / "recommendation_interactions.parquet").unlink()
        catalog = load_catalog(client)
        assert sorted(catalog.ids) == ["10", "11"] and catalog.stock("10") is None
    finally:
        client.close()
