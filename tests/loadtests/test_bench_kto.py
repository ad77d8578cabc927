"""loadtests.bench_kto: the behaviour checker, the generated task and its thumbs, and the quick run."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import bench_kto
from loadtests import ticket_routing as task
from tests.conftest import LiveEngine

BILLING = task.Ticket("I was charged twice for my monthly subscription.", "BILL-7")


def test_only_the_bare_right_code_is_good() -> None:
    assert bench_kto.is_good("BILL-7", BILLING)
    assert bench_kto.is_good("  BILL-7\n", BILLING)  # the engine's answers are stripped anyway
    assert not bench_kto.is_good("SHIP-3", BILLING)
    assert not bench_kto.is_good("The queue is BILL-7.", BILLING)  # right code, not the format asked for
    assert not bench_kto.is_good("BILL-77", BILLING)
    assert not bench_kto.is_good("", BILLING)
    assert bench_kto.good_rate(["BILL-7", "I can help with that!"], [BILLING, BILLING]) == 0.5
    # The form alone: one bare word, whichever code it names.
    assert bench_kto.bare_rate(["BILL-7", "SHIP-3", "M-1", "The queue is BILL-7.", ""]) == 0.6


def test_held_out_tickets_are_disjoint_and_cover_every_queue() -> None:
    train, heldout = bench_kto.split_tickets(6, 10)
    assert len(train) == 6 * len(task.QUEUES) and len(heldout) == 10 * len(task.QUEUES)
    assert not {t.text for t in train} & {t.text for t in heldout}
    assert {t.queue for t in heldout} == set(task.QUEUES)
    assert bench_kto.split_tickets(6, 10) == (train, heldout)  # reproducible
    with pytest.raises(ValueError):
        bench_kto.split_tickets(20, 6)


def test_thumbs_rate_the_model_reply_and_a_right_and_a_wrong_code() -> None:
    train, _ = bench_kto.split_tickets(3, 0)
    replies = ["I'm sorry to hear that, please contact support."] * len(train)
    replies[0] = train[0].queue  # a reply that happened to be right is rated once, thumbs up
    rows = bench_kto.rated_rows(train, replies)
    assert len(rows) == 3 * len(train) - 1
    for ticket in train:
        mine = [r for r in rows if r["prompt"] == ticket.messages()]
        assert [r["completion"] for r in mine if r["label"]] == [ticket.queue]  # no correction, only ratings
        bad = [r["completion"] for r in mine if not r["label"]]
        assert bad and all(not bench_kto.is_good(c, ticket) for c in bad)
        assert any(c in task.QUEUES for c in bad)  # a wrong code, rated down
        assert len(mine) == (2 if ticket is train[0] else 3)
    # the shape trainer.compute.kto takes
    assert all(set(r) == {"prompt", "completion", "label"} and r["prompt"][-1]["role"] == "user" for r in rows)


@pytest.mark.engine
def test_quick_run_on_the_engine(tmp_path: Path, eval_engine: LiveEngine) -> None:
    """Two steps on four tickets: the wiring, not the figure (two steps barely move the model)."""
    args = bench_kto.parse_args(["--quick"])
    args.max_model_len = 2048
    result = bench_kto.bench(eval_engine.client, args, tmp_path)
    assert result["steps"] == 2 and result["train_prompts"] == 4 and result["heldout_prompts"] == 4
    assert 0 < result["rows_good"] < result["rows"]
    assert 0.0 <= result["good_rate_after"] <= 1.0 and result["good_rate_before"] < 0.5  # the base cannot do it
    assert 0.0 <= result["bare_rate_after"] <= 1.0
    assert "| good after |" in bench_kto.table(result) and "| bare code after |" in bench_kto.table(result)
