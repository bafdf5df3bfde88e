"""[log] tensorboard: the event files hold what metrics.jsonl holds, read back with TensorBoard's own reader."""

import json

import pytest

from fedtune import cli
from fedtune.config import parse_config
from fedtune.runs import TENSORBOARD_DIR, RunWriter, progress_line

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

CFG = parse_config({"model": {"config": "micro-llama"}, "log": {"tensorboard": True}})


def _record(n, loss):
    return {"round": n, "train_loss": None if n == 0 else loss + 0.1, "eval_loss": loss, "eval_accuracy": 0.5,
            "eval_rougeL": 0.25 * n, "replies": 3, "sampled": 3, "diverging": "", "round_s": 1.0,
            "elapsed_s": float(n)}


def _events(run_dir):
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_every_number_of_a_round_is_a_scalar_at_its_round_and_the_config_is_text(tmp_path):
    writer = RunWriter(tmp_path, 3)
    writer.track(CFG)
    for n, loss in enumerate([2.0, 1.5, float("nan"), 1.25]):
        writer.write_round(_record(n, loss))
    # no close(): every round was flushed, as a crash would leave it

    acc = _events(tmp_path)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(acc.Tags()["scalars"]) == {"train_loss", "eval_loss", "eval_accuracy", "eval_rougeL", "replies",
                                         "sampled", "round_s", "elapsed_s"}
    for tag in acc.Tags()["scalars"]:
        # metrics.jsonl writes NaN as null; TensorBoard leaves that round out
        expected = [(r["round"], r[tag]) for r in rows if r[tag] is not None]
        assert _scalars(acc, tag) == [(step, pytest.approx(v)) for step, v in expected], tag
    assert acc.Tags()["tensors"] == ["config/text_summary"]  # add_text's tag
    config = acc.Tensors("config/text_summary")
    assert [e.step for e in config] == [0]
    assert b"[eval]" in config[0].tensor_proto.string_val[0] and b"tensorboard = true" in config[0].tensor_proto.string_val[0]


def test_a_resumed_run_replaces_the_rounds_it_redoes_instead_of_duplicating_them(tmp_path):
    first = RunWriter(tmp_path, 5)
    first.track(CFG)
    for n in range(4):  # rounds 0..3 logged, then a crash; the state restored is round 2
        first.write_round(_record(n, 2.0 - 0.1 * n))

    resumed = RunWriter(tmp_path, 5)
    assert resumed.truncate_after(2) == 2
    resumed.track(CFG, resumed=True)
    for n in range(3, 6):
        resumed.write_round(_record(n, 9.0 + n))
    resumed.close()

    acc = _events(tmp_path)
    losses = _scalars(acc, "eval_loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3, 4, 5]
    assert [v for _, v in losses] == pytest.approx([2.0, 1.9, 1.8, 12.0, 13.0, 14.0])
    assert [e.step for e in acc.Tensors("config/text_summary")] == [0]


def test_a_kill_between_a_metrics_line_and_its_tensorboard_flush_loses_no_round(tmp_path):
    first = RunWriter(tmp_path, 5)
    first.track(CFG)
    for n in range(3):
        first.write_round(_record(n, 2.0 - 0.1 * n))
    first.tracker = None  # round 3 reaches metrics.jsonl, then the process dies before TensorBoard has it
    first.write_round(_record(3, 1.7))

    resumed = RunWriter(tmp_path, 5)
    assert resumed.truncate_after(3) == 3  # the state restored is round 3: the run goes on at 4
    resumed.track(CFG, resumed=True)
    for n in range(4, 6):
        resumed.write_round(_record(n, 9.0 + n))
    resumed.close()

    losses = _scalars(_events(tmp_path), "eval_loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3, 4, 5]
    assert [v for _, v in losses] == pytest.approx([2.0, 1.9, 1.8, 1.7, 13.0, 14.0])


def test_the_progress_line_shows_the_scores_and_the_generation_time():
    record = {"round": 2, "eval_loss": 1.5, "eval_accuracy": 0.25, "eval_rougeL": 0.4125, "eval_exact_match": 0.1,
              "eval_generate_seconds": 3.14, "round_s": 5.0, "elapsed_s": 10.0, "eta_s": 0.0}

    assert progress_line(record, 2) == ("round 2/2: eval loss 1.5000 (acc 0.250), rougeL 0.412, EM 0.100, "
                                        "generation 3.1 s, 5.0 s (total 10 s)")
    assert "macro-F1 0.700," in progress_line({**record, "eval_macro_f1": 0.7}, 2)


def test_tensorboard_on_without_the_package_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, small_config):
    monkeypatch.setattr("fedtune.runs.tensorboard_available", lambda: False)
    path = small_config(name="tb")

    status = cli.main(["run", str(path), "--set", "log.tensorboard=true"])

    assert status == 2
    assert "pip install 'fedtune[tracking]'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
