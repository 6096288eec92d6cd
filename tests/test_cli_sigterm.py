"""SIGTERM ends ``eval run`` as Ctrl-C does (flows/commands/__init__.py): a batch scheduler's stop
or ``timeout`` gets eval's "interrupted: ... resumes" line and exit status 143, not a silent kill.
Builds keep the default handler: Prefect's flow engine bridges SIGTERM itself and re-sends it to
the handler it replaced once the run is marked crashed (with a raising handler there, a demo build
hung after "Crash detected!" instead of ending). The SQL shell keeps it too (flows/commands/data.py:
a raising handler could miss a signal that came just before the blocking read of stdin)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labelers.evaluation.processbench import BenchRecord, write_set

REPO = Path(__file__).resolve().parents[1]

# The labeling call is replaced by one that waits (a pass of many minutes), so the signal is
# sure to arrive inside it; everything around it is the real command.
CHILD = textwrap.dedent("""
    import sys, time
    from labelers.evaluation import runner

    def labeling_for_minutes(*args, **kwargs):
        print("labeling now", file=sys.stderr, flush=True)
        for _ in range(1200):  # short sleeps, as a pass returns to Python often: a SIGTERM that
            time.sleep(0.1)    # comes just before a sleep starts is handled after it, not in 120 s

    runner.run_signals = labeling_for_minutes
    from flows.cli import main
    sys.argv = ["prmforge", *sys.argv[1:]]
    main()
""")


def test_sigterm_during_eval_run_prints_the_resume_line_and_exits_143(tmp_path):
    set_file = tmp_path / "set.jsonl"
    write_set(set_file, [BenchRecord("r1", "What is 2 + 3?", ("2 + 3 = 5.", "The answer is 5."), -1)])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "eval", "run", "--input", str(set_file), "--labels", "tool",
         "--out", str(tmp_path / "run.json")],
        cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stderr is not None
        seen = []
        for line in child.stderr:
            seen.append(line)
            if "labeling now" in line:
                break
        else:
            raise AssertionError("the command ended before labeling: " + "".join(seen))
        child.send_signal(signal.SIGTERM)
        _, rest = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signal.SIGTERM
    assert "interrupted: " in rest and "run.json.partial keeps 0 labeled chunk(s)" in rest
    assert "Traceback" not in rest


@pytest.mark.parametrize("attempt", range(5))
def test_sigterm_ends_the_sql_shell_at_its_prompt(tmp_path, attempt):
    """The shell's prompt takes Ctrl-C as "drop this line"; a SIGTERM must still end it, also one
    sent the moment the prompt appears: with a raising handler, 1 run in 3 under load hung here
    (the signal came between the prompt and the blocking read of stdin). Repeated for that race."""
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "query", "--shell", "--root", str(tmp_path)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        shown = ""
        while not shown.endswith("prmforge> "):
            char = child.stdout.read(1)
            assert char, "the shell ended before its prompt: " + shown
            shown += char
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)  # stdin stays open: only the signal can end it
        errors = child.stderr.read() if child.stderr is not None else ""
    finally:
        child.kill()
    assert child.returncode == -signal.SIGTERM  # ended by the signal: a shell reports 143
    assert "Traceback" not in errors


def test_the_handler_is_scoped_to_the_command_so_builds_keep_the_default():
    from flows.commands import Terminated, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("no Terminated")
        except Terminated as terminated:
            assert terminated.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
