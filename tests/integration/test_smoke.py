from domain.query import Dimension, Measure, MeasureKind, Query
from tests.conftest import PURPOSE, RunningFederation


def test_query_across_three_cities_is_verified(federation: RunningFederation) -> None:
    with federation.partner() as client:
        answer = client.query(
            Query(
                "mobility",
                PURPOSE,
                (Measure(MeasureKind.COUNT_RECORDS),),
                group_by=(Dimension("mode"),),
            )
        )
    assert [c.status for c in answer.cities] == ["answered"] * 3
    assert answer.signatures_verified == 5
    assert all(c.contributing == ["aurora", "borealis", "cascadia"] for c in answer.cells)
