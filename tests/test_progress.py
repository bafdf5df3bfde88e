"""Progress lines for long phases: local steps (ZO and LoRA clients) and seed-log replay."""

import logging
import time

from fedtune.config import parse_config
from fedtune.progress import Progress, counting_steps
from tests.zo.test_feature_cache import HEAD_ONLY


def test_counting_steps_counts_each_new_step_once_and_passes_the_result_through(caplog):
    progress = Progress("local steps", 5, "steps", every_s=1e-6)
    calls = []

    def forward(step):
        calls.append(step)
        time.sleep(0.002)
        return step * 10

    counted = counting_steps(forward, progress)
    with caplog.at_level(logging.INFO, logger="fedtune.progress"):
        results = [counted(step) for step in (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)]  # two forwards a ZO step

    assert results == [0, 0, 10, 10, 20, 20, 30, 30, 40, 40] and calls == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert progress.done == 4  # steps 0..3 finished when step 4 began
    assert "local steps: 1/5 steps" in caplog.text and "local steps: 4/5 steps" in caplog.text


def test_a_zo_client_reports_its_local_steps_when_they_take_long(caplog):
    from fedtune.zo.client import ZOClient

    client = ZOClient(parse_config(HEAD_ONLY, ["log.progress_s=1e-6"]))
    client.sync(0, [])
    with caplog.at_level(logging.INFO, logger="fedtune.progress"):
        client.train(1, 0, 2)

    assert "partition 0: local steps: " in caplog.text and f"/{HEAD_ONLY['algorithm']['local_steps']} steps" in caplog.text
