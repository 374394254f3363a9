"""The local alarm evaluator's metric math: the subset the idle backstop uses, and strictness."""

from __future__ import annotations

import pytest

from localcloud import alarms

DEAD = "IF(FILL(beats, 0) == 0 AND cpu < 5, 1, 0)"


@pytest.mark.parametrize(
    ("beats", "cpu", "expected"),
    [
        (None, 1.0, 1.0),  # no beat, idle: dead
        (3.0, 1.0, 0.0),  # beating while idle (waiting on I/O): alive
        (None, 80.0, 0.0),  # no beat but busy: alive
        (None, None, None),  # booting: no datapoint at all, missing stays missing
    ],
)
def test_alarm_math_dead_expression_only_breaches_without_beats_and_cpu(beats, cpu, expected) -> None:
    assert alarms.evaluate_expression(DEAD, {"beats": beats, "cpu": cpu}) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("-4 / 2", -2.0),
        ("1 / 0", None),
        ("2 >= 2 && 1 != 1", 0.0),
        ("0 OR 3 > 2", 1.0),
        ("NOT 0", 1.0),
        ("!1", 0.0),
        ("IF(0, 5)", None),
        ("IF(1, 5)", 5.0),
        ("FILL(m, 7)", 7.0),
        ("m + 1", None),
        ("if(fill(m, 0) <= 0, 1, 2)", 1.0),
    ],
)
def test_alarm_math_operators_and_missing_values(expression: str, expected: float | None) -> None:
    assert alarms.evaluate_expression(expression, {"m": None}) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("RATE(m)", "unsupported function RATE"),
        ("FILL(m)", "unsupported function FILL/1"),
        ("nope + 1", "unknown metric id 'nope'"),
        ("1 +", "expected more"),
        ("(1", r"expected \)"),
        ("1 2", "unexpected '2'"),
        ("m ? 1", "cannot parse"),
        ("SEARCH('{AWS/EC2}', 'Average', 60)", "cannot parse"),
    ],
)
def test_alarm_math_refuses_what_it_does_not_understand(expression: str, message: str) -> None:
    with pytest.raises(alarms.ExpressionError, match=message):
        alarms.evaluate_expression(expression, {"m": 1.0})


def metric(query_id: str, period: int = 3) -> dict[str, object]:
    return {
        "Id": query_id,
        "MetricStat": {"Metric": {"Namespace": "N", "MetricName": query_id}, "Period": period, "Stat": "Sum"},
        "ReturnData": False,
    }


def test_alarm_math_queries_evaluate_per_period_and_return_the_returned_expression() -> None:
    queries = [metric("beats"), metric("cpu"), {"Id": "dead", "Expression": DEAD, "ReturnData": True}]
    series = {"beats": [None, None, 2.0, None], "cpu": [None, 1.0, 1.0, 1.0]}
    assert alarms.evaluate_queries(queries, series) == [None, 1.0, 0.0, 1.0]
    alarm = {"AlarmName": "a", "Metrics": queries, "EvaluationPeriods": 2, "Threshold": 1.0}
    alarm |= {"ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "notBreaching"}
    assert alarms.evaluate(alarm, [1.0, 1.0]) == "ALARM"
    assert alarms.evaluate(alarm, [None, None]) == "OK"  # a booting instance is not dead
    assert alarms.math_period(alarm) == 3


def test_alarm_math_queries_need_one_returned_query_and_one_period() -> None:
    with pytest.raises(alarms.ExpressionError, match="exactly one query with ReturnData"):
        alarms.evaluate_queries([metric("a"), metric("b")], {"a": [1.0], "b": [1.0]})
    mixed = {"AlarmName": "a", "Metrics": [metric("a", 3), metric("b", 60)]}
    with pytest.raises(alarms.ExpressionError, match="share one period"):
        alarms.math_period(mixed)
