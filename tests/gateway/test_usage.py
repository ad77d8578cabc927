"""Metering (gateway.usage) on a real database; its routes: test_usage_api.py.

Interactions are inserted directly with explicit `created_at`, so every sum, count,
percentile and cost below is known in advance.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapters import promotion, registry
from adapters.store import AdapterStore
from adapters.validation import BaseModelSpec
from core.config import Settings
from core.db import Database
from core.errors import TailorError
from core.ids import new_id
from core.models import Feedback
from gateway import prices
from gateway import usage as u
from gateway.tenants import create_tenant
from tests.adapters.test_validation import tiny_config, write_adapter
from tests.dbutil import add_interaction

BASE = "tiny-base"
D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)


def at(day: date, hour: int = 12, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=timezone.utc)


def add(
    db: Database,
    tenant_id: str,
    when: datetime,
    *,
    model: str = BASE,
    version_id: str | None = None,
    status: int = 200,
    prompt: int | None = 0,
    completion: int | None = 0,
    latency: float | None = 1.0,
    ttft: float | None = None,
    stream: bool = False,
    batch_id: str | None = None,
) -> str:
    return add_interaction(
        db,
        tenant_id,
        batch_id=batch_id,
        model=model,
        adapter_version_id=version_id,
        stream=stream,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=latency,
        ttft_ms=ttft,
        status_code=status,
        created_at=when,
    )


def rate(
    db: Database,
    tenant_id: str,
    iid: str,
    version_id: str | None,
    rating: str,
    *,
    correction: str | None = None,
    after_s: int = 0,
) -> None:
    # Explicit, distinct times: the newest opinion of an interaction is the one that counts.
    when = datetime.now(timezone.utc) + timedelta(seconds=after_s)
    with db.session() as s:
        s.add(
            Feedback(
                id=new_id("fb"),
                tenant_id=tenant_id,
                interaction_id=iid,
                adapter_version_id=version_id,
                model="support",
                rating=rating,
                correction=correction,
                created_at=when,
            )
        )


@dataclass
class World:
    """Two tenants, three adapter versions and a known set of interactions.

    acme, D1: base x4 ok (10/20/30/40 ms; 100 prompt + 50 completion each), one 500,
              one 499 (100 prompt, counted as tokens but not as an error);
              support v1 x2 streamed (100/200 ms, TTFT 10/30; 1000 + 500 each).
    acme, D2: support v2 (canary) x1 (300 ms; 2000 + 1000) and one 404 on it;
              base x1 at 00:00:00.000000 (first instant of the day).
    acme, outside the range: D1 minus 1 µs and D3 + 1 day (never counted for D1..D3).
    beta, D1: helper v1 x1 (1000 + 1000), and D3 at 23:59:59.999999: base x1 (10 + 10).
    """

    db: Database
    acme: str
    beta: str
    v1: str  # acme support v1 (active)
    v2: str  # acme support v2 (canary)
    h1: str  # beta helper v1
    ids: dict[str, list[str]]


def build(db: Database, tmp: Path) -> World:
    base_dir = tmp / "tiny-llama"
    base_dir.mkdir(exist_ok=True)
    (base_dir / "config.json").write_text(json.dumps(tiny_config()))
    limits = registry.ValidationLimits(base=BaseModelSpec.from_config_dir(base_dir), max_rank=16, max_bytes=10_000_000)
    store = AdapterStore(str(tmp / "store"), tmp / "cache")
    src = write_adapter(tmp / "lora")
    acme, beta = create_tenant(db, "acme").id, create_tenant(db, "beta").id

    def reg(tenant: str, name: str, activate: bool = True) -> str:
        return registry.register_dir(
            db,
            store,
            limits,
            tenant_id=tenant,
            name=name,
            source_dir=src,
            base_model_name=BASE,
            activate=activate,
            actor="test",
        ).id

    v1, v2, h1 = reg(acme, "support"), reg(acme, "support", activate=False), reg(beta, "helper")
    promotion.start_canary(db, acme, "support", 2, 0.25, actor="test")
    ids: dict[str, list[str]] = {"v1": [], "v2": []}
    for ms in (40, 10, 30, 20):
        add(db, acme, at(D1), prompt=100, completion=50, latency=ms)
    add(db, acme, at(D1), status=500, prompt=None, completion=None, latency=5)
    add(db, acme, at(D1), status=499, prompt=100, completion=None, latency=7000)
    for ms, ttft in ((100, 10), (200, 30)):
        ids["v1"].append(
            add(
                db,
                acme,
                at(D1, 13),
                model="support",
                version_id=v1,
                prompt=1000,
                completion=500,
                latency=ms,
                ttft=ttft,
                stream=True,
            )
        )
    ids["v2"].append(add(db, acme, at(D2), model="support", version_id=v2, prompt=2000, completion=1000, latency=300))
    add(db, acme, at(D2), model="support", version_id=v2, status=404, latency=2)
    add(db, acme, at(D2, 0))
    add(db, acme, at(D1, 0) - timedelta(microseconds=1), prompt=999)
    add(db, acme, at(D3 + timedelta(days=1), 0), prompt=999)
    add(db, beta, at(D1), model="helper", version_id=h1, prompt=1000, completion=1000)
    add(db, beta, at(D3, 23, 59, 59, 999_999), prompt=10, completion=10)
    return World(db, acme, beta, v1, v2, h1, ids)


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return build(db, tmp_path)


PRICES = prices.PriceBook(
    prices=prices.parse_prices(
        {
            BASE: {"prompt": 0.1, "completion": 0.2},
            "adapter": {"prompt": 0.5, "completion": 1.0},
            "acme/support": {"prompt": 1.0, "completion": 2.0},
        }
    ),
    base_model=BASE,
)


def rows_by(rows: list[u.UsageRow]) -> dict[tuple[str, str | None, str | None, int | None], u.UsageRow]:
    out = {(r.tenant, r.day, r.model, r.adapter_version): r for r in rows}
    assert len(out) == len(rows), "group keys must be unique"
    return out


# --- usage() ------------------------------------------------------------------------------


def test_default_grouping_sums_counts_and_percentiles(world: World) -> None:
    rows = u.usage(world.db, tenant_id=world.acme, since=D1, until=D3, prices=PRICES)
    got = rows_by(rows)
    assert list(got) == [
        ("acme", "2024-03-01", "support", 1),  # sorted by tenant, day, model name, version
        ("acme", "2024-03-01", BASE, None),
        ("acme", "2024-03-02", "support", 2),
        ("acme", "2024-03-02", BASE, None),
    ]
    base = got[("acme", "2024-03-01", BASE, None)]
    assert (base.requests, base.errors, base.client_closed) == (6, 1, 1)
    assert (base.prompt_tokens, base.completion_tokens) == (500, 200)
    # Answered requests only: 10/20/30/40 (the 500 and the 499 are left out).
    assert base.p50_latency_ms == pytest.approx(25.0)
    assert base.p95_latency_ms == pytest.approx(38.5)
    assert base.p50_ttft_ms is None  # no streams
    assert base.cost == pytest.approx(500 * 0.1 / 1000 + 200 * 0.2 / 1000)

    v1 = got[("acme", "2024-03-01", "support", 1)]
    assert (v1.requests, v1.errors, v1.client_closed, v1.prompt_tokens, v1.completion_tokens) == (2, 0, 0, 2000, 1000)
    assert (v1.p50_latency_ms, v1.p95_latency_ms, v1.p50_ttft_ms) == (150.0, pytest.approx(195.0), 20.0)
    assert v1.cost == pytest.approx(2000 * 1.0 / 1000 + 1000 * 2.0 / 1000)  # the tenant/adapter override

    v2 = got[("acme", "2024-03-02", "support", 2)]
    assert (v2.requests, v2.errors, v2.p50_latency_ms, v2.p95_latency_ms) == (2, 1, 300.0, 300.0)
    # The request at 00:00:00 belongs to its own day, not the one before.
    assert got[("acme", "2024-03-02", BASE, None)].requests == 1


def test_range_edges_are_utc_days_inclusive(world: World) -> None:
    one_day = u.usage(world.db, tenant_id=world.acme, since=D1, until=D1, group_by=())
    assert [(r.requests, r.prompt_tokens) for r in one_day] == [(8, 2500)]  # not the µs before D1
    beta = u.usage(world.db, tenant_id=world.beta, since=D3, until=D3, group_by=("day",))
    assert [(r.day, r.requests) for r in beta] == [("2024-03-03", 1)]  # the last µs of D3 counts
    assert u.usage(world.db, tenant_id=world.acme, since=D3, until=D3) == []


def test_group_by_variants(world: World) -> None:
    flat = u.usage(world.db, tenant_id=world.acme, since=D1, until=D3, group_by=(), prices=PRICES)
    assert len(flat) == 1
    row = flat[0]
    assert (row.day, row.model, row.adapter_version) == (None, None, None)
    assert (row.requests, row.errors, row.client_closed) == (11, 2, 1)
    assert (row.prompt_tokens, row.completion_tokens) == (4500, 2200)
    # Cost is priced per model and version before the rows are merged.
    assert row.cost == pytest.approx(0.05 + 0.04 + 2.0 + 2.0 + 2.0 + 2.0)
    # Percentiles over every answered request of the group: 10,20,30,40,100,200,300,1(00:00).
    assert row.p50_latency_ms == pytest.approx(35.0)
    assert row.p50_ttft_ms == 20.0

    by_model = rows_by(u.usage(world.db, tenant_id=world.acme, since=D1, until=D3, group_by=("model",)))
    assert {k: r.requests for k, r in by_model.items()} == {
        ("acme", None, BASE, None): 7,
        ("acme", None, "support", None): 4,
    }

    by_day = rows_by(u.usage(world.db, tenant_id=world.acme, since=D1, until=D3, group_by=["day"]))
    assert {k: r.requests for k, r in by_day.items()} == {
        ("acme", "2024-03-01", None, None): 8,
        ("acme", "2024-03-02", None, None): 3,
    }

    # "version" implies "model": version numbers only mean something per adapter.
    assert u.parse_group_by("version") == ("model", "version")
    assert u.parse_group_by("version, day") == ("day", "model", "version")
    by_version = rows_by(u.usage(world.db, tenant_id=world.acme, since=D1, until=D3, group_by=("version",)))
    assert {k: r.requests for k, r in by_version.items()} == {
        ("acme", None, BASE, None): 7,
        ("acme", None, "support", 1): 2,
        ("acme", None, "support", 2): 2,
    }

    err = _refused(lambda: u.parse_group_by("day,tenant"), "group_by")
    assert "tenant" in err.message


def test_all_tenants_when_tenant_id_is_none(world: World) -> None:
    rows = u.usage(world.db, tenant_id=None, since=D1, until=D3, group_by=("model",), prices=PRICES)
    got = rows_by(rows)
    assert set(got) == {
        ("acme", None, BASE, None),
        ("acme", None, "support", None),
        ("beta", None, BASE, None),
        ("beta", None, "helper", None),
    }
    helper = got[("beta", None, "helper", None)]
    assert helper.cost == pytest.approx(1000 * 0.5 / 1000 + 1000 * 1.0 / 1000)  # the "adapter" default
    t = u.totals(rows)
    assert (t.requests, t.errors, t.client_closed) == (13, 2, 1)
    assert (t.prompt_tokens, t.completion_tokens) == (4500 + 1010, 2200 + 1010)
    assert t.cost == pytest.approx(sum(r.cost for r in rows))


def test_prices_fallbacks_and_validation() -> None:
    book = prices.PriceBook(prices=prices.parse_prices({BASE: {"prompt": 0.1, "completion": 0.2}}), base_model=BASE)
    assert book.price("acme", BASE, None) == prices.Price(0.1, 0.2)
    # No "adapter" price: adapters cost what the base model they run on costs.
    assert book.price("acme", "support", "support") == prices.Price(0.1, 0.2)
    assert book.price("acme", "unknown-model", None) == prices.FREE
    assert prices.PriceBook().price("acme", BASE, None).cost(1000, 1000) == 0.0
    assert prices.parse_prices({"m": {"prompt": 1}}) == {"m": prices.Price(1.0, 0.0)}
    with pytest.raises(ValueError, match="promt"):
        prices.parse_prices({"m": {"promt": 1}})
    with pytest.raises(ValueError, match=">= 0"):
        prices.parse_prices({"m": {"prompt": -1}})


def test_prices_from_settings(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, prices={"adapter": {"prompt": 0.12, "completion": 0.24}})
    book = prices.prices_from_settings(s)
    assert book.base_model == s.base_model_name
    assert book.price("t", "a", "a") == prices.Price(0.12, 0.24)
    assert book.batch_factor == 0.5  # OpenAI's batch discount, by default
    assert book.cost("t", "a", "a", "batch", 1000, 1000) == pytest.approx(0.18)
    assert book.cost("t", "a", "a", "interactive", 1000, 1000) == pytest.approx(0.36)
    assert prices.prices_from_settings(Settings(data_dir=tmp_path, batch_price_factor=1)).batch_factor == 1.0
    assert prices.prices_from_settings(Settings(data_dir=tmp_path)).prices == {}  # nothing configured: free
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="batch_price_factor"):
            Settings(data_dir=tmp_path, batch_price_factor=bad)


def test_batch_requests_are_their_own_tier_at_the_batch_price(world: World) -> None:
    half = prices.PriceBook(prices=PRICES.prices, base_model=BASE, batch_factor=0.5)
    for ms in (900, 1100):  # slower, as batch requests yield to interactive ones
        add(world.db, world.acme, at(D1, 14), prompt=1000, completion=500, latency=ms, batch_id="batch_1")
    add(world.db, world.acme, at(D1, 14), status=429, prompt=None, completion=None, latency=1, batch_id="batch_1")

    got = {(r.model, r.tier): r for r in u.usage(world.db, tenant_id=world.acme, since=D1, until=D1, prices=half)}
    assert set(got) == {(BASE, "interactive"), (BASE, "batch"), ("support", "interactive")}
    batch, live = got[(BASE, "batch")], got[(BASE, "interactive")]
    assert (batch.requests, batch.errors, batch.prompt_tokens, batch.completion_tokens) == (3, 1, 2000, 1000)
    assert batch.cost == pytest.approx(0.5 * (2000 * 0.1 + 1000 * 0.2) / 1000)
    assert (batch.p50_latency_ms, batch.p95_latency_ms) == (1000.0, pytest.approx(1090.0))
    # The interactive tier's latency and cost are what they were without the batch.
    assert (live.requests, live.p50_latency_ms, live.p95_latency_ms) == (6, pytest.approx(25.0), pytest.approx(38.5))
    assert live.cost == pytest.approx(500 * 0.1 / 1000 + 200 * 0.2 / 1000)

    # Merged over tiers, the cost is still each tier at its own price.
    (flat,) = u.usage(world.db, tenant_id=world.acme, since=D1, until=D1, group_by=(), prices=half)
    assert flat.tier is None and flat.requests == 11
    assert flat.cost == pytest.approx(batch.cost + live.cost + got[("support", "interactive")].cost)
    by_tier = u.usage(world.db, tenant_id=world.acme, since=D1, until=D1, group_by="tier", prices=half)
    assert [(r.tier, r.requests) for r in by_tier] == [("batch", 3), ("interactive", 8)]
    # Another tenant's usage holds none of it.
    assert all(r.tier == "interactive" for r in u.usage(world.db, tenant_id=world.beta, since=D1, until=D3))


def test_pinned_model_names_price_as_their_adapter(world: World) -> None:
    add(world.db, world.acme, at(D3), model="support@v1", version_id=world.v1, prompt=1000, completion=0)
    rows = u.usage(world.db, tenant_id=world.acme, since=D3, until=D3, prices=PRICES)
    assert [(r.model, r.adapter_version, r.cost) for r in rows] == [("support@v1", 1, pytest.approx(1.0))]


def test_an_adapter_pays_the_price_of_the_base_its_version_was_registered_for(world: World, tmp_path: Path) -> None:
    base_dir = tmp_path / "small"
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(tiny_config()))
    small = registry.register_dir(
        world.db,
        AdapterStore(str(tmp_path / "store"), tmp_path / "cache"),
        registry.ValidationLimits(base=BaseModelSpec.from_config_dir(base_dir), max_rank=16, max_bytes=10_000_000),
        tenant_id=world.acme,
        name="lite",
        source_dir=write_adapter(tmp_path / "lora"),
        base_model_name="small",
        actor="test",
    ).id
    add(world.db, world.acme, at(D3), model="lite", version_id=small, prompt=1000, completion=1000)
    add(world.db, world.acme, at(D3), model="support@v1", version_id=world.v1, prompt=1000, completion=1000)
    entries = {BASE: {"path": str(tmp_path / "big")}, "small": {"path": str(base_dir)}}
    settings = Settings(data_dir=tmp_path, base_models=entries, prices={BASE: {"prompt": 1}, "small": {"prompt": 0.1}})
    rows = u.usage(world.db, tenant_id=world.acme, since=D3, until=D3, prices=prices.prices_from_settings(settings))
    assert {r.model: r.cost for r in rows} == {"lite": pytest.approx(0.1), "support@v1": pytest.approx(1.0)}
    # A version recording a base no longer configured pays the default base's price.
    assert prices.prices_from_settings(settings).price(world.acme, "old", "old", "gone") == prices.Price(1.0, 0.0)


def _refused(call, param: str) -> TailorError:  # type: ignore[no-untyped-def]
    with pytest.raises(TailorError) as err:
        call()
    assert err.value.status == 400, err.value
    assert err.value.param == param, err.value
    return err.value


def test_range_is_bounded(world: World) -> None:
    since = date(2024, 1, 1)
    assert u.usage(world.db, tenant_id=None, since=since, until=since + timedelta(days=365)) != []  # 366 days
    err = _refused(lambda: u.usage(world.db, tenant_id=None, since=since, until=since + timedelta(days=366)), "since")
    assert "367 days" in err.message
    _refused(lambda: u.usage(world.db, tenant_id=None, since=D2, until=D1), "until")


def test_percentile() -> None:
    assert u.percentile([], 0.5) is None
    assert u.percentile([7.0], 0.95) == 7.0
    assert u.percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert u.percentile([float(i) for i in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_csv_round_trip(world: World) -> None:
    rows = u.usage(world.db, tenant_id=None, since=D1, until=D3, prices=PRICES)
    text = u.to_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(u.CSV_FIELDS)
    assert len(parsed) == len(rows)

    def back(d: dict[str, str]) -> u.UsageRow:
        def opt(v: str, kind: type) -> object:
            return None if v == "" else kind(v)

        return u.UsageRow(
            tenant=d["tenant"],
            day=opt(d["day"], str),  # type: ignore[arg-type]
            model=opt(d["model"], str),  # type: ignore[arg-type]
            adapter_version=opt(d["adapter_version"], int),  # type: ignore[arg-type]
            tier=opt(d["tier"], str),  # type: ignore[arg-type]
            requests=int(d["requests"]),
            errors=int(d["errors"]),
            client_closed=int(d["client_closed"]),
            prompt_tokens=int(d["prompt_tokens"]),
            completion_tokens=int(d["completion_tokens"]),
            p50_latency_ms=opt(d["p50_latency_ms"], float),  # type: ignore[arg-type]
            p95_latency_ms=opt(d["p95_latency_ms"], float),  # type: ignore[arg-type]
            p50_ttft_ms=opt(d["p50_ttft_ms"], float),  # type: ignore[arg-type]
            cost=float(d["cost"]),
        )

    assert [back(d) for d in parsed] == rows
    assert u.to_csv([]) == ",".join(u.CSV_FIELDS) + "\r\n"


def test_version_stats_compare_active_and_canary_with_feedback(world: World) -> None:
    v1a, v1b = world.ids["v1"]
    rate(world.db, world.acme, v1a, world.v1, "good")
    rate(world.db, world.acme, v1b, world.v1, "good")
    rate(world.db, world.acme, v1b, world.v1, "bad", correction="better", after_s=1)  # the newest counts
    rate(world.db, world.acme, world.ids["v2"][0], world.v2, "good")
    stats = u.version_stats(world.db, world.acme, "support")
    assert [(s.version, s.state, s.active, s.canary) for s in stats] == [
        (1, "active", True, False),
        (2, "canary", False, True),
    ]
    s1, s2 = stats
    assert (s1.requests, s1.errors, s1.client_closed) == (2, 0, 0)
    assert (s1.p50_latency_ms, s1.p95_latency_ms) == (150.0, pytest.approx(195.0))
    assert (s1.judged, s1.share_good, s1.correction_rate) == (2, 0.5, 0.5)
    assert (s2.requests, s2.errors, s2.p50_latency_ms) == (2, 1, 300.0)
    assert (s2.judged, s2.share_good, s2.correction_rate) == (1, 1.0, 0.0)

    only_d2 = u.version_stats(world.db, world.acme, "support", since=D2, until=D2)
    assert [(s.version, s.requests) for s in only_d2] == [(1, 0), (2, 2)]
    assert only_d2[0].judged == 0 and only_d2[0].share_good is None  # feedback was given "now", not on D2

    for tenant, name in ((world.acme, "nope"), (world.acme, "helper"), (world.beta, "support")):
        with pytest.raises(TailorError) as err:
            u.version_stats(world.db, tenant, name)
        assert (err.value.status, err.value.code) == (404, "model_not_found")
