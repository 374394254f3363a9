"""The local API Gateway's key check against a fake API Gateway API: what it reads, and when."""

from __future__ import annotations

from typing import Any

from localcloud.apigw import FORBIDDEN, MISS_READS, ApiKeys, Key


class FakeApiGateway:
    """One enabled key in one plan; counts the full reads (GetApiKeys pages)."""

    def __init__(self) -> None:
        self.reads = 0
        self.keys = [{"id": "k1", "value": "good-key-value-0123456789", "name": "a", "enabled": True}]

    def get_paginator(self, name: str) -> Any:
        fake = self

        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                if name == "get_api_keys":
                    fake.reads += 1
                    return [{"items": fake.keys}]
                if name == "get_usage_plans":
                    return [{"items": [{"id": "p1", "name": "clients"}]}]
                return [{"items": [{"id": "k1"}]}]

        return Pages()


def test_made_up_keys_cost_one_read_per_cache_period_not_one_each() -> None:
    fake, now = FakeApiGateway(), [0.0]
    keys = ApiKeys(lambda: fake, ttl_s=1.0, clock=lambda: now[0])
    assert isinstance(keys.check("good-key-value-0123456789"), Key)
    for i in range(50):
        assert keys.check(f"made-up-{i % 3}") == FORBIDDEN
    assert fake.reads == 4  # the first, then one for each of the 3 values
    for i in range(50):
        assert keys.check(f"random-{i}") == FORBIDDEN
    assert fake.reads == 1 + MISS_READS  # capped per cache period
    now[0] = 1.5
    fake.keys.append({"id": "k2", "value": "made-up-1", "name": "b", "enabled": True})
    assert keys.check("made-up-1") == FORBIDDEN  # a key in no plan stays refused
    assert isinstance(keys.check("good-key-value-0123456789"), Key)
