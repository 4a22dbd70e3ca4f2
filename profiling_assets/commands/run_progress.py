"""A cohort's run on the terminal: one live line per cohort (steps done, the step running,
time), while Dagster's event log stays in the instance and in a log file.

The run executes in the calling thread (Ctrl-C and signal handling stay as Dagster expects);
a small thread reads the run's step events back from the instance to move the line.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg

# Only the terminal is quieted: the instance records every event whatever this level.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
POLL_S = 0.5
_STARTED = dg.DagsterEventType.STEP_START
_ENDED = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}


@dataclass(frozen=True)
class StepProgress:
    done: int
    running: str  # the step under way, "" between steps


def step_progress(instance: dg.DagsterInstance, run_id: str) -> StepProgress:
    entries = instance.all_logs(run_id, of_type={_STARTED, *_ENDED})
    started, ended = [], set()
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == _STARTED:
            started.append(entry.step_key)
        else:
            ended.add(entry.step_key)
    running = [step for step in started if step not in ended]
    return StepProgress(done=len(ended), running=running[-1] if running else "")


@contextmanager
def watch_steps(
    instance: dg.DagsterInstance, run_id: str, report: Callable[[StepProgress], None]
) -> Iterator[None]:
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            report(step_progress(instance, run_id))

    thread = threading.Thread(target=poll, name="run-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report(step_progress(instance, run_id))


def execute_cohort(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    cohort: str,
    report: Callable[[StepProgress], None],
) -> dg.ExecuteInProcessResult:
    """One run of `job` for `cohort`, nothing of Dagster's on the terminal."""
    run_id = str(uuid.uuid4())
    with watch_steps(instance, run_id, report):
        return job.execute_in_process(
            run_config=QUIET_CONSOLE,
            instance=instance,
            partition_key=cohort,
            raise_on_error=False,
            run_id=run_id,
        )


def append_event_log(instance: dg.DagsterInstance, run_id: str, path: Path) -> int:
    """The run's event log, as the console would have shown it, appended to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = instance.all_logs(run_id)
    with path.open("a", encoding="utf-8") as log:
        for entry in entries:
            when = datetime.fromtimestamp(entry.timestamp).isoformat(timespec="seconds")
            level = (
                logging.getLevelName(entry.level) if isinstance(entry.level, int) else entry.level
            )
            log.write(f"{when} {level} {run_id[:8]} {entry.step_key or '-'} {entry.message}\n")
    return len(entries)


class CohortLines:
    """One rich progress line per cohort: steps done of the job's, the step running, time.
    On a terminal it moves while the run goes; elsewhere (a pipe, a CI log) it is printed
    once, when all cohorts are done."""

    def __init__(self, total_steps: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._total = total_steps
        self._progress = Progress(
            TextColumn("  批次 {task.fields[cohort]}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("步 {task.description}"),
            TimeElapsedColumn(),
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> CohortLines:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def run(
        self, job: dg.JobDefinition, instance: dg.DagsterInstance, cohort: str
    ) -> dg.ExecuteInProcessResult:
        task = self._progress.add_task("", total=self._total, cohort=cohort)
        self._tasks[cohort] = task

        def report(progress: StepProgress) -> None:
            self._progress.update(task, completed=progress.done, description=progress.running)

        return execute_cohort(job, instance, cohort, report)

    def finish(self, cohort: str, verdict: str) -> None:
        task = self._tasks[cohort]
        self._progress.update(task, description=verdict)
        self._progress.stop_task(task)
