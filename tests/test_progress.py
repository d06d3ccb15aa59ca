"""Progress on the command line: bars on a terminal, plain lines in a log file or a pipe."""

from __future__ import annotations

import io
import subprocess
import sys

from engine.progress import LineProgress, ProgressEvent, TqdmProgress, console_progress


def test_lines_at_each_tenth_and_once_at_the_end():
    out = io.StringIO()
    lines = LineProgress(stream=out)
    for step in range(0, 101):
        lines(ProgressEvent(stage="train", step=step, total=100, metrics={"loss": 1 / (step + 1)}))
    lines(ProgressEvent(stage="train", step=100, total=100))  # a repeated final report
    lines(ProgressEvent(stage="sample", step=3, total=3, message="done"))
    text = out.getvalue().splitlines()
    train = [t for t in text if t.startswith("train:")]
    assert [t.split()[1] for t in train] == [f"{k}/100" for k in range(0, 101, 10)]
    assert train[-1].startswith("train: 100/100 (100 %) loss=0.0099")
    assert text[-1] == "sample: 3/3 (100 %) done"
    assert "\r" not in out.getvalue()


def test_a_pipe_gets_lines_and_a_terminal_bars():
    code = ("from engine.progress import console_progress, ProgressEvent\n"
            "p = console_progress()\n"
            "print(type(p).__name__)\n"
            "[p(ProgressEvent(stage='encode', step=s, total=4)) for s in range(5)]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "LineProgress"
    assert out.stderr.splitlines() == [f"encode: {s}/4 ({25 * s} %)" for s in range(5)]
    assert isinstance(console_progress(), (TqdmProgress, LineProgress))


def test_a_stage_that_runs_again_gets_its_lines_again():
    out = io.StringIO()
    lines = LineProgress(stream=out)
    for _ in range(2):  # e.g. the demo trains two models: two "train" loops
        for step in range(0, 5):
            lines(ProgressEvent(stage="train", step=step, total=4))
    text = out.getvalue().splitlines()
    assert text == [f"train: {s}/4 ({25 * s} %)" for s in range(5)] * 2
