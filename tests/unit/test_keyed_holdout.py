"""The holdout no client can choose: keyed by a secret, formed by trusted clients only, with
revoked clients' samples left out of everything (trainer/data.py; trainer/README.md,
"Holdout and trust")."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import numpy as np
import pytest

from lambdas.core import clients
from trainer import data, gate

KEY = b"k3y-0f-the-h0ld0ut-for-tests-only-0123456789abcdef0123456789abcd"
OTHER_KEY = b"another-key-after-a-rotation-0123456789abcdef0123456789abcdef01"
PERCENT = 10


def item(sample_id: str, client: str | None, label: str = "ok", ingested: int = 1000) -> dict:
    out = {
        "id": {"S": sample_id},
        "temp": {"N": "70"},
        "rh": {"N": "40"},
        "wind": {"N": "0.1"},
        "clo": {"N": "0.5"},
        "label": {"S": label},
        "created": {"N": str(ingested)},
        "ingested": {"N": str(ingested)},
    }
    if client is not None:
        out["client"] = {"S": client}
    return out


def aimed_ids(n: int) -> list[str]:
    """What a client that knows the public hash would send: ids the unkeyed bucket puts in the
    holdout, all of them."""
    candidates = (f"chosen-{i}" for i in itertools.count())
    return list(itertools.islice((i for i in candidates if data.in_holdout(i, PERCENT)), n))


def test_keyed_holdout_ids_aimed_at_the_public_hash_land_in_the_holdout_at_the_base_rate() -> None:
    chosen = aimed_ids(2000)
    assert all(data.in_holdout(i, PERCENT) for i in chosen)  # 100 % without the key
    keyed = sum(data.in_holdout(i, PERCENT, KEY) for i in chosen) / len(chosen)
    # Under the key the aim is lost: Binomial(2000, 0.10) has a standard deviation of 0.67
    # points, so 5 % and 20 % are 7 and 15 deviations away.
    assert 0.05 < keyed < 0.20


def test_keyed_holdout_bucket_is_hmac_sha256_and_the_unkeyed_one_is_unchanged() -> None:
    sample_id = "s-0001"
    keyed = int.from_bytes(hmac.new(KEY, sample_id.encode(), hashlib.sha256).digest()[:8], "big") % 100
    public = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") % 100
    assert data.id_bucket(sample_id, KEY) == keyed
    assert data.id_bucket(sample_id) == public  # laptop runs keep the holdout they had
    ids = [f"s-{i}" for i in range(50)]
    assert data.id_buckets(ids, KEY).tolist() == [data.id_bucket(i, KEY) for i in ids]


def test_keyed_holdout_membership_changes_with_the_key() -> None:
    ids = [f"s-{i}" for i in range(5000)]
    first = {i for i in ids if data.in_holdout(i, PERCENT, KEY)}
    assert first == {i for i in ids if data.in_holdout(i, PERCENT, KEY)}  # fixed for one key
    rotated = {i for i in ids if data.in_holdout(i, PERCENT, OTHER_KEY)}
    assert 400 < len(first) < 600 and 400 < len(rotated) < 600
    # Independent draws: about 10 % of one holdout is in the other (about 50 of 500).
    assert len(first & rotated) < 0.25 * len(first)


def test_keyed_holdout_untrusted_samples_in_holdout_buckets_train_instead() -> None:
    chosen = aimed_ids(400)
    samples = data.to_samples(
        [item(i, "mallory") for i in chosen] + [item(f"a-{n}", "alice") for n in range(1000)]
    )
    trust = {"alice": clients.TRUSTED, "mallory": clients.UNTRUSTED}
    parts = data.split(
        samples, holdout_percent=PERCENT, validation_fraction=0.15, seed=1, trust=trust, key=KEY
    )
    assert not any(i.startswith("chosen-") for i in parts.holdout.ids)
    assert set(chosen) <= set(parts.train.ids) | set(parts.validation.ids)
    assert parts.holdout.ids == [
        f for f in sorted(f"a-{n}" for n in range(1000)) if data.in_holdout(f, PERCENT, KEY)
    ]
    assert parts.clients == {
        "alice": {"trust": "trusted", "samples": 1000, "holdout": len(parts.holdout)},
        "mallory": {"trust": "untrusted", "samples": 400, "holdout": 0},
    }
    assert parts.excluded == {}


def test_keyed_holdout_revoked_clients_are_left_out_of_every_part() -> None:
    samples = data.to_samples(
        [item(f"r-{n}", "revoked-one") for n in range(300)]
        + [item(f"a-{n}", "alice") for n in range(300)]
        + [item(f"u-{n}", None) for n in range(100)]  # written before clients existed
    )
    trust = {"alice": clients.TRUSTED, "revoked-one": clients.REVOKED, clients.UNATTRIBUTED: clients.TRUSTED}
    parts = data.split(
        samples, holdout_percent=PERCENT, validation_fraction=0.15, seed=1, trust=trust, key=KEY
    )
    used = parts.train.ids + parts.validation.ids + parts.holdout.ids
    assert not any(i.startswith("r-") for i in used)
    assert len(used) == 400
    assert parts.excluded == {"revoked-one": 300}
    assert set(parts.clients) == {"alice", clients.UNATTRIBUTED}
    assert parts.clients[clients.UNATTRIBUTED]["samples"] == 100
    kept, excluded = data.exclude_revoked(samples, trust)
    assert len(kept) == 400 and excluded == {"revoked-one": 300}


def test_keyed_holdout_a_client_without_a_record_is_not_trusted() -> None:
    samples = data.to_samples([item(f"x-{n}", "stranger") for n in range(500)])
    parts = data.split(samples, holdout_percent=PERCENT, validation_fraction=0.15, seed=1, trust={}, key=KEY)
    assert len(parts.holdout) == 0 and len(parts.train) + len(parts.validation) == 500
    assert parts.clients == {"stranger": {"trust": "untrusted", "samples": 500, "holdout": 0}}


def test_keyed_holdout_the_recent_window_takes_trusted_samples_only() -> None:
    samples = data.to_samples(
        [item(f"m-{n}", "mallory", ingested=5000 + n) for n in range(1000)]
        + [item(f"a-{n}", "alice", ingested=5000 + n) for n in range(1000)]
    )
    trust = {"alice": clients.TRUSTED, "mallory": clients.UNTRUSTED}
    window = data.RecentWindow(after_ms=4000, percent=10, max_count=2000)
    parts = data.split(
        samples,
        holdout_percent=PERCENT,
        validation_fraction=0.15,
        seed=1,
        recent=window,
        trust=trust,
        key=KEY,
    )
    assert parts.recent is not None and len(parts.recent) > 100
    assert all(i.startswith("a-") for i in parts.recent.ids)
    assert set(parts.recent.ids) == {f"a-{n}" for n in range(1000) if data.id_bucket(f"a-{n}", KEY) < 20}
    mallory_recent_share = [f"m-{n}" for n in range(1000) if data.id_bucket(f"m-{n}", KEY) < 20]
    assert set(mallory_recent_share) <= set(parts.train.ids) | set(parts.validation.ids)


def test_keyed_holdout_without_a_trust_map_every_sample_counts_as_trusted() -> None:
    samples = data.to_samples([item(f"s-{n}", "anyone") for n in range(1000)])
    parts = data.split(samples, holdout_percent=PERCENT, validation_fraction=0.15, seed=1)
    assert parts.holdout.ids == [i for i in samples.ids if data.in_holdout(i, PERCENT)]
    assert parts.clients["anyone"]["trust"] == "trusted"


def test_keyed_holdout_client_codes_are_compact_and_agree_across_segments() -> None:
    # Two scan segments that met the clients in different orders.
    first, second = data._Columns(), data._Columns()
    first.add([item("a-1", "bob"), item("a-2", "alice"), item("a-3", "bob")])
    second.add([item("b-1", None), item("b-2", "alice"), item("b-3", "carol")])
    samples = data._join([first, second])
    assert samples.client is not None and samples.client.dtype == np.int32
    assert samples.client_names == ("alice", "bob", "carol", clients.UNATTRIBUTED)
    by_id = {i: samples.client_names[c] for i, c in zip(samples.ids, samples.client, strict=True)}
    assert by_id == {
        "a-1": "bob",
        "a-2": "alice",
        "a-3": "bob",
        "b-1": "unattributed",
        "b-2": "alice",
        "b-3": "carol",
    }
    sub = samples.subset(np.array([0, 5]))
    assert sub.clients_of() == {"bob": 1, "carol": 1}


def test_keyed_holdout_samples_built_without_clients_are_unattributed() -> None:
    samples = data.Samples(
        ids=["a", "b"], x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), created=np.zeros(2)
    )
    assert samples.clients_of() == {clients.UNATTRIBUTED: 2}


@pytest.mark.parametrize("count, decision", [(19, gate.REJECT), (20, gate.PROMOTE)])
def test_keyed_holdout_too_few_trusted_holdout_samples_reject_the_run(count: int, decision: str) -> None:
    got = gate.decide(
        0.95,
        baseline_version=None,
        baseline_accuracy=None,
        tolerance=0.01,
        min_accuracy=0.6,
        holdout_count=count,
        holdout_min=20,
    )
    assert got.decision == decision
    if decision == gate.REJECT:
        assert got.reason.startswith("holdout too small: 19 trusted holdout samples < GATE_HOLDOUT_MIN 20")
