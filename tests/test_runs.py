"""The per-round progress line: what a user watching a long run sees."""

from fedtune.runs import format_duration, progress_line


def test_progress_line_has_the_round_numbers_bytes_and_an_eta():
    record = {"round": 3, "train_loss": 2.5, "eval_loss": 2.25, "eval_accuracy": 0.125,
              "bytes_up_per_client": 1536, "bytes_down_per_client": 100, "replies": 9, "sampled": 10,
              "round_s": 5.04, "elapsed_s": 75.2, "eta_s": 4000.0}

    line = progress_line(record, 20)

    assert line == ("round 3/20: train loss 2.5000, eval loss 2.2500 (acc 0.125), up 1.5 KiB/client, "
                    "down 100 B/client, 9/10 replied, 5.0 s (total 1m15s, ETA 1h06m)")


def test_a_dp_run_shows_the_budget_spent_so_far():
    record = {"round": 2, "replies": 3, "sampled": 3, "dp_epsilon": 7.7043, "dp_delta": 1e-5, "round_s": 1.0,
              "elapsed_s": 2.0, "eta_s": 0.0}

    assert progress_line(record, 2) == "round 2/2: 3/3 replied, epsilon 7.7 at delta 1e-05, 1.0 s (total 2 s)"
    assert "epsilon inf," in progress_line({**record, "dp_epsilon": None}, 2)  # noise_multiplier = 0


def test_a_secagg_round_says_whether_a_sum_formed_and_who_dropped_where():
    record = {"round": 1, "replies": 3, "sampled": 4, "secagg_sum": True, "secagg_dropped_setup": 1,
              "secagg_dropped_share_keys": 0, "secagg_dropped_collect": 0, "secagg_dropped_unmask": 0,
              "round_s": 1.0, "elapsed_s": 2.0, "eta_s": 0.0}
    halted = {**record, "replies": 0, "secagg_sum": False, "secagg_dropped_setup": 0, "secagg_dropped_share_keys": 2,
              "secagg_dropped_unmask": 1}

    assert progress_line(record, 1) == "round 1/1: 3/4 replied, SecAgg+ sum (dropped 1 at setup), 1.0 s (total 2 s)"
    assert progress_line({**record, "secagg_dropped_setup": 0}, 1) == "round 1/1: 3/4 replied, SecAgg+ sum, 1.0 s (total 2 s)"
    assert progress_line(halted, 1) == ("round 1/1: 0/4 replied, SecAgg+ HALTED, no sum (dropped 2 at share-keys, "
                                        "1 at unmask), 1.0 s (total 2 s)")


def test_the_last_round_has_no_eta():
    line = progress_line({"round": 20, "round_s": 1.0, "elapsed_s": 30.0, "eta_s": 0.0}, 20)
    assert line == "round 20/20: 1.0 s (total 30 s)"


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59, 60, 3599, 3600, 86399)] == [
        "0 s", "59 s", "1m00s", "59m59s", "1h00m", "23h59m"]


def _round(n, eval_loss, train_loss=1.0, replies=3):
    return {"round": n, "train_loss": train_loss, "eval_loss": eval_loss, "eval_accuracy": 0.5,
            "replies": replies, "sampled": 3, "round_s": 1.0, "elapsed_s": float(n)}


def test_a_run_whose_eval_loss_rises_three_evaluations_in_a_row_is_flagged(tmp_path, caplog):
    import json
    import logging

    from fedtune.runs import RunWriter

    writer = RunWriter(tmp_path, 10, diverge_after=3)
    losses = [2.0, 1.8, 1.9, 2.0, 2.1]  # rises after round 1: rounds 2, 3, 4 are each above the last

    with caplog.at_level(logging.INFO, logger="fedtune.runs"):
        for n, loss in enumerate(losses):
            writer.write_round(_round(n, loss))

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("diverging") for r in records] == [None, None, None, None,
                                                     "eval loss rose 3 evaluations in a row"]
    assert "DIVERGING (eval loss rose 3 evaluations in a row)" in caplog.text


def test_a_non_finite_loss_is_flagged_but_a_round_nobody_answered_is_not(tmp_path):
    import json

    from fedtune.runs import RunWriter

    writer = RunWriter(tmp_path, 10)

    writer.write_round(_round(1, 1.0, train_loss=float("nan"), replies=0))  # no replies: no train loss
    writer.write_round(_round(2, float("nan")))
    writer.write_round(_round(3, 1.0, train_loss=float("inf")))

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("diverging") for r in records] == [None, "eval loss is not finite", "train loss is not finite"]


def test_a_crashed_runs_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    """What `fedtune run` reads after its simulation: a server killed mid-line leaves a torn
    last line, which must read as "stopped before round N", not a JSON traceback."""
    import logging

    from fedtune.runs import read_records

    assert read_records(tmp_path) == []  # no metrics.jsonl yet
    (tmp_path / "metrics.jsonl").write_text('{"round": 0, "eval_loss": 2.5}\n\n{"round": 1, "eval_lo')
    with caplog.at_level(logging.WARNING, logger="fedtune.runs"):
        assert read_records(tmp_path) == [{"round": 0, "eval_loss": 2.5}]
    assert "dropping a torn line" in caplog.text
