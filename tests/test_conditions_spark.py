"""The agreement suite on Spark: the batch compiler's Ibis expressions, run by PySpark, pick the
same persons as the reference interpreter (issue 4: "on DuckDB and on PySpark")."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conditions_world import ATTR_TYPES, World
from conftest import small_spark
from rapport.conditions import to_ibis
from rapport.conditions.model import Condition
from test_conditions_agree import agree, as_ofs, batch_sets, conditions, worlds

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),  # PySpark on pandas 3
]
PER_WORLD = 2  # Spark plans each tree slowly: 25 worlds x 2 trees

pyspark = pytest.importorskip("pyspark")

if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs a Java runtime", allow_module_level=True)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One small local session: one core, one shuffle partition, no UI, UTC, no code generation
    (for tables of a few rows, compiling Java costs more than it saves)."""
    session = small_spark("rapport-conditions", tmp_path_factory.mktemp("spark-warehouse"))
    yield session
    session.stop()


@settings(
    max_examples=int(os.environ.get("RAPPORT_SPARK_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    world=worlds(),
    conds=st.lists(conditions, min_size=PER_WORLD, max_size=PER_WORLD),
    as_of=as_ofs,
)
def test_spark_agrees(spark: Any, world: World, conds: list[Condition], as_of: datetime) -> None:
    import ibis

    world.to_spark(spark)
    ctx = to_ibis.BatchContext(con=ibis.pyspark.connect(spark), as_of=as_of, attr_types=ATTR_TYPES)
    agree(ctx, world, conds, as_of)


def test_hand_written_cases_on_spark(spark: Any) -> None:
    """The seed example and every hand-written case give the same persons on Spark."""
    import ibis

    from rapport.conditions.model import Compare, Did, Duration, Op, Window
    from test_conditions_ibis import AS_OF, CASES, world

    world().to_spark(spark)
    ctx = to_ibis.BatchContext(con=ibis.pyspark.connect(spark), as_of=AS_OF, attr_types=ATTR_TYPES)
    seed = Did(
        event="book_hotel",
        where=[Compare(field="price", op=Op.gt, value=2000)],
        threshold=30,
        window=Window(last=Duration(amount=30)),
    )
    assert to_ibis.count(seed, ctx) == 1
    conds = [c[1] for c in CASES]
    assert batch_sets(ctx, conds) == [c[2] for c in CASES]
