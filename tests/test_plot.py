"""fedtune.plot: PNGs from a run's metrics.jsonl, and its errors on bad input."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fedtune.plot import plot_run

REPO = Path(__file__).resolve().parents[1]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A blank 640x400 Agg PNG is ~3 KiB; one with axes, labels and lines is well above 10 KiB.
MIN_PNG_BYTES = 10_000

ROWS = [
    {"round": 0, "eval_loss": 2.5, "eval_accuracy": 0.10},
    {"round": 1, "train_loss": 2.4, "eval_loss": 2.2, "eval_accuracy": 0.20,
     "bytes_up_per_client": 96, "bytes_down_per_client": 8_000_000, "elapsed_s": 1.5, "lr": 1e-4},
    {"round": 2, "train_loss": None, "eval_loss": 2.0, "eval_accuracy": 0.30,
     "bytes_up_per_client": 96, "bytes_down_per_client": 1_024, "elapsed_s": 2.9},
    {"round": 3, "train_loss": 1.9, "bytes_up_per_client": 96, "bytes_down_per_client": 1_024},
]


def write_metrics(run_dir, rows=ROWS, lines=()):
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows) + "".join(line + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text)
    return run_dir


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > MIN_PNG_BYTES


def test_writes_the_three_figures_into_the_run_dir(tmp_path):
    run_dir = write_metrics(tmp_path / "run")

    written = plot_run(run_dir)

    assert written == [run_dir / "eval.png", run_dir / "train_loss.png", run_dir / "bytes.png"]
    for path in written:
        assert_png(path)


def test_writes_into_a_new_out_dir_given_as_str(tmp_path):
    run_dir = write_metrics(tmp_path / "run")
    out_dir = tmp_path / "figures" / "nested"

    written = plot_run(str(run_dir), str(out_dir))

    assert [p.name for p in written] == ["eval.png", "train_loss.png", "bytes.png"]
    assert all(p.parent == out_dir for p in written)
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]


def test_only_eval_metrics_writes_only_eval_png(tmp_path, caplog):
    rows = [{"round": 0, "eval_loss": 2.5}, {"round": 1, "eval_loss": 2.1}]
    run_dir = write_metrics(tmp_path / "run", rows=rows)

    with caplog.at_level(logging.INFO, logger="fedtune.plot"):
        written = plot_run(run_dir)

    assert written == [run_dir / "eval.png"]
    assert_png(run_dir / "eval.png")
    assert not (run_dir / "train_loss.png").exists()
    assert not (run_dir / "bytes.png").exists()
    assert "skip train_loss.png" in caplog.text
    assert "skip bytes.png" in caplog.text


def test_metric_that_is_null_or_nan_everywhere_counts_as_absent(tmp_path):
    # Python's json writes NaN as the bare token NaN, which json.loads reads back.
    run_dir = write_metrics(tmp_path / "run", rows=[{"round": 1, "eval_loss": 2.0, "train_loss": None}],
                            lines=['{"round": 2, "eval_loss": 1.9, "train_loss": NaN}'])

    written = plot_run(run_dir)

    assert written == [run_dir / "eval.png"]


def test_missing_run_dir_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no_such_run"

    with pytest.raises(FileNotFoundError, match="no_such_run"):
        plot_run(missing)


def test_missing_metrics_file_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ('{"round": 3, "eval_loss": 2.0', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"eval_loss": 2.0}', "`round` must be an int"),
        ('{"round": "3"}', "`round` must be an int"),
        ('{"round": 3, "train_loss": "low"}', "`train_loss` must be a number or null"),
    ],
)
def test_malformed_line_raises_value_error_naming_file_and_line(tmp_path, bad_line, reason):
    # Two good rows, then the bad one: line 3.
    run_dir = write_metrics(tmp_path / "run", rows=ROWS[:2], lines=[bad_line])

    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: ") as excinfo:
        plot_run(run_dir)

    assert reason in str(excinfo.value)
    assert not (run_dir / "eval.png").exists()


def test_import_does_not_load_matplotlib():
    code = "import sys, fedtune.plot; print('matplotlib' in sys.modules)"

    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "False"


def test_a_run_with_generation_or_classification_scores_gets_a_scores_figure(tmp_path):
    rows = [{"round": 0, "eval_loss": 2.5, "eval_rougeL": 0.05, "eval_exact_match": 0.0},
            {"round": 1, "eval_loss": 2.2, "eval_rougeL": 0.31, "eval_exact_match": 0.12},
            {"round": 2, "eval_loss": 2.0, "eval_rougeL": None, "eval_exact_match": None},
            {"round": 3, "eval_loss": 1.9, "eval_rougeL": 0.42, "eval_exact_match": 0.2}]
    run_dir = write_metrics(tmp_path / "run", rows)

    written = plot_run(run_dir)

    assert [p.name for p in written] == ["eval.png", "scores.png"]
    assert_png(run_dir / "scores.png")


def test_a_run_without_scores_gets_no_scores_figure(tmp_path):
    run_dir = write_metrics(tmp_path / "run")

    assert "scores.png" not in [p.name for p in plot_run(run_dir)]


def test_a_run_with_federated_evaluation_gets_the_clients_spread(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"round": n, "eval_loss": 2.0 - 0.1 * n, "eval_accuracy": 0.5 + 0.05 * n, "fed_eval_accuracy": 0.4 + 0.05 * n,
             "fed_eval_accuracy_min": 0.2 + 0.05 * n, "fed_eval_accuracy_median": 0.4 + 0.05 * n,
             "fed_eval_accuracy_max": 0.6 + 0.05 * n} for n in range(4)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    written = plot_run(run_dir)

    assert [p.name for p in written] == ["eval.png", "federated.png"]
    assert_png(run_dir / "federated.png")
