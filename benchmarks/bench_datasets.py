"""Dataset figures: query time over many small nightly builds, before and after compaction.

    python benchmarks/bench_datasets.py [--builds 100] [--problems 8] [--repeat 5] [--root DIR] [--quick]

Writes ``--builds`` synthetic builds (data_schemas.synthetic) of one dataset, each labeling
``--problems`` new problems in one batch (one steps, nodes and outcomes shard per build: the
small files a nightly run of a few new problems leaves); every tenth build relabels the problems
of the build before it instead (a config change), so the views have to pick the latest build
per problem. Then times, through the Catalog's ``dataset_*`` views, opening the catalog and
three queries (count by label, first-error histogram, join steps-problems), before and after
``compact_dataset``, and checks both states give the same rows. Times are the median of
``--repeat`` runs after one warm-up (files in the OS page cache).

``--quick``: 30 builds instead of 100 (the issue's figure is for 100 builds).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_storage import QUERIES as STORAGE_QUERIES  # noqa: E402
from bench_storage import figure  # noqa: E402

from data_schemas.catalog import Catalog  # noqa: E402
from data_schemas.compaction import compact_dataset, dataset_view_files  # noqa: E402
from data_schemas.datasets import labeling_key, problem_content_hash, utc_now_precise  # noqa: E402
from data_schemas.manifest import finish_build, start_build  # noqa: E402
from data_schemas.shards import ShardWriter  # noqa: E402
from data_schemas.synthetic import synthetic_batch  # noqa: E402

DATASET = "bench"
# bench_storage's three queries, over the dataset's current rows.
QUERIES = {
    name: sql.replace("FROM steps", "FROM dataset_steps").replace("JOIN problems", "JOIN dataset_problems")
    for name, sql in STORAGE_QUERIES.items()
}


def write_dataset(root: Path, builds: int, problems: int) -> int:
    """``builds`` one-batch builds of the dataset; returns the step rows written in all."""
    rows = 0
    batch_index = -1
    for number in range(builds):
        build_id = f"night-{number:04d}"
        relabel = number % 10 == 9  # same problems as the build before, under a new config
        batch_index = batch_index if relabel else batch_index + 1
        batch = synthetic_batch(build_id, "gsm8k", batch_index, num_problems=problems, seed=number if relabel else 0)
        config = {"name": "bench", "night": number, "config": "b" if relabel else "a"}
        manifest = start_build(root, build_id, config, policy_model="synthetic/none")
        shards = ShardWriter(root, build_id).write_batch("gsm8k", "b00000", batch.steps, batch.nodes, batch.outcomes)
        keys = {
            o.problem_id: labeling_key(o.problem_id, problem_content_hash(o.source, o.question, o.gold_answer),
                                       "synthetic", config["config"])
            for o in batch.outcomes
        }
        manifest.dataset = {"name": DATASET, "labeling_keys": keys, "plan": {}, "completed_at": utc_now_precise()}
        finish_build(root, manifest, shards)
        rows += len(batch.steps)
    return rows


def time_queries(root: Path, repeat: int) -> tuple[dict[str, float], list[list[tuple]]]:
    """(median seconds per step: open + each query, results) over ``repeat`` runs after a warm-up."""
    times: dict[str, list[float]] = {"open catalog": [], **{name: [] for name in QUERIES}}
    results: list[list[tuple]] = []
    for run in range(repeat + 1):
        started = time.perf_counter()
        catalog = Catalog(root, dataset=DATASET)
        opened = time.perf_counter() - started
        results = []
        run_times = {"open catalog": opened}
        for name, sql in QUERIES.items():
            started = time.perf_counter()
            results.append(catalog.connection.sql(sql).fetchall())
            run_times[name] = time.perf_counter() - started
        catalog.close()
        if run:  # the first run warms the page cache
            for name, seconds in run_times.items():
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=100)
    parser.add_argument("--problems", type=int, default=8, help="problems per build")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--root", type=Path, default=None, help="data root (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="30 builds")
    args = parser.parse_args()
    builds = 30 if args.quick else args.builds
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-datasets-"))
    try:
        started = time.perf_counter()
        rows = write_dataset(root, builds, args.problems)
        print(f"wrote {builds} builds, {rows} step rows in {time.perf_counter() - started:.1f} s under {root}")
        with Catalog(root, dataset=DATASET) as catalog:
            files_before = dataset_view_files(catalog)
            current = catalog.connection.sql("SELECT count(*) FROM dataset_steps").fetchall()[0][0]
        before, results_before = time_queries(root, args.repeat)
        started = time.perf_counter()
        result = compact_dataset(root, DATASET)
        compact_seconds = time.perf_counter() - started
        after, results_after = time_queries(root, args.repeat)
        if results_after != results_before:
            print("error: the compacted dataset gives other query results", file=sys.stderr)
            return 1
        print(f"{current} current step rows of {rows} written; {files_before} files before, {result.files_after} after")
        print(f"{'step':<24}{'before (s)':>12}{'after (s)':>12}{'speed-up':>10}")
        for name in before:
            print(f"{name:<24}{before[name]:>12.4f}{after[name]:>12.4f}{before[name] / after[name]:>9.1f}x")
        total_before = sum(before.values())
        total_after = sum(after.values())
        print(f"{'open + 3 queries':<24}{total_before:>12.4f}{total_after:>12.4f}{total_before / total_after:>9.1f}x")
        label = f"{builds} builds"
        figure(f"dataset files read, {label}, before compaction", files_before, "files")
        figure(f"dataset files read, {label}, after compaction", result.files_after, "files")
        figure(f"dataset open + 3 queries, {label}, before compaction", total_before, "s")
        figure(f"dataset open + 3 queries, {label}, after compaction", total_after, "s")
        figure(f"dataset query speed-up from compaction, {label}", total_before / total_after, "x", "> 1")
        for name in QUERIES:
            figure(f"dataset {name}, {label}, before/after compaction", before[name] / after[name], "x")
        figure(f"compaction time, {label}", compact_seconds, "s")
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
