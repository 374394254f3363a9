"""Sample validation and content-derived keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas.core.errors import BadRequest, PayloadTooLarge, ValidationError
from lambdas.core.samples import Sample, item_keys, parse_features, parse_sample, parse_samples, sample_list

NOW = 1_795_000_000_000
ORIGINAL = {
    "created": 1570323309012,
    "temp": 75,
    "rh": 60,
    "wind": 0.6,
    "clo": 1.0,
    "label": "ok",
    "score": -1,
}


def with_(**changes: Any) -> dict[str, Any]:
    sample = dict(ORIGINAL)
    for key, value in changes.items():
        if value is ...:
            sample.pop(key)
        else:
            sample[key] = value
    return sample


def test_parse_features_returns_floats_in_schema_order() -> None:
    assert parse_features({"clo": 1, "wind": 0.6, "rh": 60, "temp": 75}, 0) == (75.0, 60.0, 0.6, 1.0)


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        ({"rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "is required"),
        ({"temp": None, "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "is required"),
        ({"temp": "75", "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "must be a number, got string"),
        ({"temp": True, "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "must be a number, got boolean"),
        ({"temp": [75], "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "must be a number, got array"),
        ({"temp": float("nan"), "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "finite"),
        ({"temp": float("inf"), "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "finite"),
        ({"temp": 10**400, "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "finite"),
        ({"temp": -40.1, "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "outside the accepted range -40 to 140"),
        ({"temp": 140.5, "rh": 60, "wind": 0.6, "clo": 1.0}, "temp", "outside the accepted range"),
        ({"temp": 75, "rh": -1, "wind": 0.6, "clo": 1.0}, "rh", "outside the accepted range 0 to 100"),
        ({"temp": 75, "rh": 100.01, "wind": 0.6, "clo": 1.0}, "rh", "outside the accepted range"),
        ({"temp": 75, "rh": 60, "wind": -0.1, "clo": 1.0}, "wind", "outside the accepted range 0 to 20"),
        ({"temp": 75, "rh": 60, "wind": 25, "clo": 1.0}, "wind", "outside the accepted range"),
        ({"temp": 75, "rh": 60, "wind": 0.6, "clo": -0.5}, "clo", "outside the accepted range 0 to 4"),
        ({"temp": 75, "rh": 60, "wind": 0.6, "clo": 4.5}, "clo", "outside the accepted range"),
    ],
)
def test_parse_features_rejects_bad_values(item: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_features(item, 4)
    assert (caught.value.field, caught.value.index) == (field, 4)
    assert f"sample 4: field '{field}'" in caught.value.message
    assert reason in caught.value.message


@pytest.mark.parametrize("item", [[75, 60, 0.6, 1.0], "temp=75", None, 3])
def test_parse_features_rejects_non_objects(item: object) -> None:
    with pytest.raises(ValidationError, match="sample 2: must be a JSON object"):
        parse_features(item, 2)


def test_parse_sample_accepts_the_original_payload() -> None:
    sample = parse_sample(ORIGINAL, 0, now_ms=NOW)
    assert sample == Sample(75.0, 60.0, 0.6, 1.0, "ok", created=1570323309012, client_id=None, score=-1.0)


def test_parse_sample_optional_fields_may_be_absent_or_null() -> None:
    bare = {"temp": 75, "rh": 60, "wind": 0.6, "clo": 1.0, "label": "warm"}
    assert parse_sample(bare, 0, now_ms=NOW) == parse_sample(
        {**bare, "created": None, "id": None, "score": None}, 0, now_ms=NOW
    )
    assert parse_sample({**bare, "id": "sensor-7:2026.11_a"}, 0, now_ms=NOW).client_id == "sensor-7:2026.11_a"


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"label": ...}, "label", "is required"),
        ({"label": "OK"}, "label", 'must be one of cold, ok, warm, got "OK"'),
        ({"label": "hot"}, "label", "must be one of cold, ok, warm"),
        ({"label": 1}, "label", "got int"),
        ({"created": 1570323309}, "created", "looks like seconds"),
        ({"created": 0}, "created", "before 2000-01-01"),
        ({"created": NOW + 2 * 86_400_000}, "created", "more than a day in the future"),
        ({"created": 1570323309012.5}, "created", "whole epoch milliseconds"),
        ({"created": "1570323309012"}, "created", "must be a number"),
        ({"id": ""}, "id", "1-128 characters"),
        ({"id": "a" * 129}, "id", "1-128 characters"),
        ({"id": "no spaces"}, "id", "1-128 characters"),
        ({"id": "semi;colon"}, "id", "1-128 characters"),
        ({"id": 7}, "id", "must be a string"),
        ({"score": "high"}, "score", "must be a number"),
        ({"score": float("nan")}, "score", "finite"),
        ({"score": 2e9}, "score", "outside"),
        ({"tmp": 75}, "tmp", 'unknown field "tmp"'),
        ({"Label": "ok"}, "Label", "unknown field"),
    ],
)
def test_parse_sample_rejects_bad_fields(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_sample(with_(**changes), 3, now_ms=NOW)
    assert (caught.value.field, caught.value.index) == (field, 3)
    assert "sample 3" in caught.value.message and field in caught.value.message
    assert reason in caught.value.message


def test_parse_sample_accepts_created_up_to_a_day_ahead() -> None:
    assert parse_sample(with_(created=NOW + 86_400_000), 0, now_ms=NOW).created == NOW + 86_400_000
    assert parse_sample(with_(created=1570323309012.0), 0, now_ms=NOW).created == 1570323309012


def test_sample_list_accepts_array_and_samples_object() -> None:
    assert sample_list([ORIGINAL]) == [ORIGINAL]
    assert sample_list({"samples": [ORIGINAL]}) == [ORIGINAL]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "the array is empty"),
        ({"samples": []}, "the array is empty"),
        ({}, 'missing "samples"'),
        ({"samples": [ORIGINAL], "extra": 1}, 'unknown top-level field "extra"'),
        ({"samples": {"0": ORIGINAL}}, '"samples" must be a JSON array, got object'),
        (ORIGINAL | {}, "unknown top-level field"),
        ("samples", "got string"),
        (42, "got int"),
        (None, "got null"),
    ],
)
def test_sample_list_rejects_wrong_shapes(payload: object, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        sample_list(payload)
    assert not isinstance(caught.value, ValidationError)
    assert reason in caught.value.message


def test_parse_samples_reports_the_first_invalid_index() -> None:
    payload = [ORIGINAL, ORIGINAL, with_(rh=101), with_(label="bad")]
    with pytest.raises(ValidationError) as caught:
        parse_samples(payload, now_ms=NOW, max_samples=10)
    assert (caught.value.index, caught.value.field) == (2, "rh")


def test_parse_samples_enforces_the_count_limit_before_validating() -> None:
    with pytest.raises(PayloadTooLarge, match="11 samples in one request; the limit is 10"):
        parse_samples([{"not": "checked"}] * 11, now_ms=NOW, max_samples=10)


def test_parse_samples_rejects_the_same_id_and_content_twice() -> None:
    with pytest.raises(ValidationError, match="sample 2: field 'id' repeats sample 0") as caught:
        parse_samples([with_(id="a"), with_(id="b"), with_(id="a")], now_ms=NOW, max_samples=10)
    assert caught.value.field == "id"


def keys_of(payload: list[dict[str, Any]]) -> list[str]:
    return item_keys(parse_samples(payload, now_ms=NOW, max_samples=100))


def test_item_keys_ignore_formatting_and_number_spelling() -> None:
    reformatted = json.loads(json.dumps([with_(temp=75.0, clo=1, score=-1.0)], indent=3))
    assert keys_of([ORIGINAL]) == keys_of(reformatted)
    assert keys_of([ORIGINAL])[0].startswith("s-") and len(keys_of([ORIGINAL])[0]) == 66


def test_item_keys_identical_samples_in_one_request_are_distinct() -> None:
    first, second = keys_of([ORIGINAL, ORIGINAL])
    assert first != second


def test_item_keys_same_content_in_different_requests_differs() -> None:
    a = keys_of([ORIGINAL, with_(temp=70)])
    b = keys_of([ORIGINAL, with_(temp=71)])
    assert a[0] != b[0]


def test_item_keys_client_id_is_stable_across_requests() -> None:
    a = keys_of([with_(id="c-1"), with_(temp=70)])
    b = keys_of([with_(temp=80), with_(id="c-1")])
    assert a[0] == b[1]


def test_item_keys_client_id_reused_for_other_content_is_a_new_key() -> None:
    assert keys_of([with_(id="c-1")]) != keys_of([with_(id="c-1", label="warm")])


def test_two_clients_never_share_a_key_and_one_client_resending_does() -> None:
    from lambdas.core.samples import import_key, item_keys, parse_samples

    body = [{"temp": 75, "rh": 45, "wind": 0.1, "clo": 0.6, "label": "ok", "id": "reading-1"}]
    samples = parse_samples(body, now_ms=1, max_samples=10)
    alice, again, mallory = (
        item_keys(samples, client="alice"),
        item_keys(samples, client="alice"),
        item_keys(samples, client="mallory"),
    )
    assert alice == again
    assert alice != mallory
    # An imported row with an id has the key the same client's upload gives it.
    assert import_key(samples[0], digest="d" * 64, line=2, client="alice") == alice[0]
