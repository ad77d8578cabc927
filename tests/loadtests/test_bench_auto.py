"""loadtests.bench_auto (and bench_student, which trains on the same tasks): its generated tasks
and its table, without training (the runs are the benchmark's)."""

from __future__ import annotations

from loadtests import bench_auto, bench_student


def test_tasks_are_reproducible_and_held_out_prompts_are_new() -> None:
    for spec in (*bench_auto.TASKS, *bench_auto.QUICK_TASKS, *bench_student.TASKS, *bench_student.QUICK_TASKS):
        train, heldout = spec.generate(20, seed=0)
        assert (len(train), len(heldout)) == (spec.n_train, 20)
        assert spec.generate(20, seed=0) == (train, heldout)
        prompts = {e.prompt[-1]["content"] for e in train}
        assert len(prompts) == len(train) and not prompts & {e.prompt[-1]["content"] for e in heldout}


def test_tasks_vary_labels_and_answer_length() -> None:
    routing = bench_auto.TASKS[1].generate(0)[0]
    assert {e.answer for e in routing} == set(list(bench_auto.QUEUES)[:15])  # every label appears in 150 examples
    sentence = bench_auto.TASKS[3].generate(0)[0][0]
    assert sentence.answer.startswith("Booked: ") and len(sentence.answer.split()) >= 8
    row = sentence.row()
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_order_tickets_answer_the_number_they_mention() -> None:
    spec = bench_auto.TaskSpec("orders", "order", 30)
    train, heldout = spec.generate(10)
    for e in (*train, *heldout):
        assert [m["role"] for m in e.prompt] == ["user"]  # the bare ticket, as a distilled student gets it
        assert len(e.answer) == 5 and e.answer.isdigit() and e.answer in e.prompt[-1]["content"]
    assert spec.max_new_tokens == 8 and bench_auto.TASKS[3].max_new_tokens == 32


def test_table_line() -> None:
    line = bench_auto.Outcome("t", "auto", 160, 60, 45, "no_improvement", 8, 12.3, 0.375).line()
    assert line == "| t | auto | 160 | 60 | 45 | no_improvement | 8 | 12 | 0.38 |"
    assert line.count("|") == bench_auto.HEADER.splitlines()[0].count("|")
