"""benchmarks/run_all.py: FIGURE-line convention, goals, failing and chatty scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


def test_parse_figures_ignores_other_lines(run_all):
    output = "\n".join([
        "a table header\tand tabs",
        "FIGURE\teval.f1\t0.93\tF1\t>= 0.90",
        "FIGURE\tthroughput\t12.5\ttok/s",
        "FIGURE\tbroken",
        "figure\tlowercase\t1\tx\t",
        "FIGURE\tratio\t0.6\tx\t<= 0.5",
        "FIGURE\tnot measured\t-\ts\t< 3",
    ])
    figures = run_all.parse_figures("bench_x.py", output)
    assert [(f.name, f.value, f.unit, f.goal, f.met) for f in figures] == [
        ("eval.f1", "0.93", "F1", ">= 0.90", True),
        ("throughput", "12.5", "tok/s", "", None),
        ("ratio", "0.6", "x", "<= 0.5", False),
        ("not measured", "-", "s", "< 3", None),
    ]


def test_goal_met(run_all):
    assert run_all.goal_met("2", "> 1") is True
    assert run_all.goal_met("1", "> 1") is False
    assert run_all.goal_met("1", "<= 1") is True
    assert run_all.goal_met("0.1", "about 0.1") is None


def test_run_script_quick_flag_failures_and_timeouts(run_all, tmp_path):
    good = tmp_path / "bench_good.py"
    good.write_text("import sys\nprint('log line')\n"
                    "print('FIGURE\\tquick\\t' + str(int('--quick' in sys.argv)) + '\\tflag\\t>= 1')\n")
    plain = tmp_path / "bench_plain.py"
    plain.write_text("print('FIGURE\\tx\\t3\\tu\\t')\n")
    bad = tmp_path / "bench_bad.py"
    bad.write_text("print('FIGURE\\tpartial\\t1\\tu\\t')\nraise SystemExit('setup missing: no model')\n")
    slow = tmp_path / "bench_slow.py"
    slow.write_text("import time\nprint('FIGURE\\tearly\\t1\\tu\\t', flush=True)\ntime.sleep(30)\n")

    run = run_all.run_script(good, quick=True, timeout_s=60)
    assert run.error is None and run.quick and run.figures[0].value == "1" and run.figures[0].met
    run = run_all.run_script(plain, quick=True, timeout_s=60)
    assert not run.quick and run.figures[0].value == "3"  # no --quick in its source: not passed
    run = run_all.run_script(bad, quick=True, timeout_s=60)
    assert run.exit_code == 1 and run.error == "setup missing: no model"
    assert [f.name for f in run.figures] == ["partial"]  # figures printed before the failure are kept
    run = run_all.run_script(slow, quick=True, timeout_s=2)
    assert run.exit_code is None and "timed out" in run.error


def test_every_benchmark_script_is_discovered(run_all):
    names = [p.name for p in run_all.discover(None)]
    assert "bench_eval.py" in names
    assert all(n.startswith("bench_") for n in names)
