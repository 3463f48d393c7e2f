"""The queue table's eval-loss order: a sweep's points best first, jobs never evaluated last."""

from __future__ import annotations

from trainconsole.console.snapshot import JOB_ORDERS, JobRow, by_eval_loss


def test_eval_loss_order_puts_the_best_first_and_the_unevaluated_last() -> None:
    rows = [JobRow("j0010", "a", "normal", "done", 1, eval_loss=2.5, sweep="chat"),
            JobRow("j0002", "b", "normal", "queued", 0),
            JobRow("j0011", "a", "normal", "done", 1, eval_loss=1.5, sweep="chat"),
            JobRow("j0001", "c", "normal", "running", 1),
            JobRow("j0012", "a", "normal", "done", 1, eval_loss=2.5, sweep="chat")]
    assert [r.id for r in sorted(rows, key=by_eval_loss)] == ["j0011", "j0010", "j0012", "j0001", "j0002"]
    assert JOB_ORDERS["eval_loss"] is by_eval_loss and JOB_ORDERS["queue"] is None
