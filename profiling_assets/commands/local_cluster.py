"""A cluster on one machine, made of the parts a real one uses: a Dagster daemon that launches
runs, Celery workers started with Dagster's own `dagster-celery worker start`, one Postgres
instance and one Redis broker, and one storage folder. Each member has a working folder of its
own (its DAGSTER_HOME and data folder) and shares nothing else, so whatever passes between
steps must go through Postgres, Redis or the storage URI. The scale-out tests and the bench's
workers row run on it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, ConfigDict

from profiling_assets.commands.local_services import REPO, PostgresServer, postgres_home
from profiling_assets.executors import BROKER_ENV, CPU_QUEUE, GPU_QUEUE

WORKER_YAML = REPO / "deploy" / "celery-worker.yaml"
CODE_MODULE = "profiling_assets.definitions"
STOP_TIMEOUT_S = 20


class StepAttempt(BaseModel):
    """A step handed to a Celery worker, as the worker reported it in the run's event log."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    partition: str
    step_key: str
    worker: str
    at: float


class Member(BaseModel):
    """One machine of the cluster: its name, working folder and environment."""

    model_config = ConfigDict(frozen=True)

    name: str
    folder: Path
    env: dict[str, str]


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (`dagster-celery`, `dagster-daemon`)."""
    return str(Path(sys.executable).with_name(name))


class LocalCluster:
    """Started by `running_cluster`; workers can be stopped or killed one by one."""

    def __init__(self, launcher: Member, postgres: PostgresServer) -> None:
        self.launcher = launcher
        self._postgres = postgres
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._instance: dg.DagsterInstance | None = None

    def start(self, member: Member, command: Sequence[str]) -> None:
        member.folder.mkdir(parents=True, exist_ok=True)
        with (member.folder / f"{member.name}.log").open("ab") as log:
            self._processes[member.name] = subprocess.Popen(
                list(command),
                cwd=member.folder,
                env=member.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill takes its children too
            )

    def start_worker(self, member: Member, cpus: Sequence[int] | None = None) -> None:
        """A worker listening on both queues, one step at a time; pinned to `cpus` when given
        (the offline model then uses as many threads as it has CPUs)."""
        command = [_bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        # One `-q` with both queues: celery 5 keeps only the last of several `-Q`.
        command += ["-y", str(WORKER_YAML), "-q", f"{CPU_QUEUE},{GPU_QUEUE}"]
        # `--pool=solo`: steps run in the worker process itself, one at a time. In a prefork
        # child the offline model ran 4x slower here (user_profiles of 6 users: 120 s against
        # 27 s), and a step holds the whole machine's model server anyway.
        command += ["-n", f"{member.name}@%h", "--", "--pool=solo"]
        if cpus is not None:
            command = ["taskset", "-c", ",".join(str(c) for c in cpus), *command]
        self.start(member, command)

    def kill(self, name: str) -> None:
        """SIGKILL the member's whole process group: a machine lost, nothing cleaned up."""
        process = self._processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for name, process in list(self._processes.items()):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
            del self._processes[name]

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The shared Postgres instance as the launcher sees it, opened once: the polls below
        run every second while the workers are measured, and a new instance per poll would
        cost them CPU."""
        if self._instance is None:
            saved = {k: os.environ.get(k) for k in self._postgres.env}
            os.environ.update(self._postgres.env)  # read when the storage connects
            try:
                self._instance = dg.DagsterInstance.from_config(self.launcher.env["DAGSTER_HOME"])
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        yield self._instance

    def close(self) -> None:
        self.stop_all()
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None

    def backfill(self, partitions: Sequence[str], job: str = "profile_job") -> str:
        """`dagster job backfill` from the launcher; the daemon dequeues and launches the runs.
        Returns the backfill's id."""
        with self.instance() as instance:
            instance.add_dynamic_partitions("cohort", list(partitions))
            before = {b.backfill_id for b in instance.get_backfills()}
        command = [_bin("dagster"), "job", "backfill", "-m", CODE_MODULE, "-j", job]
        command += ["--partitions", ",".join(partitions), "--noprompt"]
        subprocess.run(
            command,
            cwd=self.launcher.folder,
            env=self.launcher.env,
            check=True,
            capture_output=True,
        )
        with self.instance() as instance:
            (backfill_id,) = {b.backfill_id for b in instance.get_backfills()} - before
        return backfill_id

    def runs(self, backfill_id: str) -> list[dg.DagsterRun]:
        with self.instance() as instance:
            return list(
                instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            )

    def wait(self, backfill_id: str, expected: int, timeout_s: float) -> list[dg.DagsterRun]:
        """The backfill's runs once every one has ended (TimeoutError naming the stragglers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            runs = self.runs(backfill_id)
            if len(runs) >= expected and all(r.is_finished for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = {r.tags.get("dagster/partition"): r.status.value for r in runs}
                raise TimeoutError(f"backfill {backfill_id} not done in {timeout_s} s: {states}")
            time.sleep(1.0)

    def step_attempts(self, run_ids: Sequence[str]) -> list[StepAttempt]:
        """Every step a worker took, in order: the "Executing steps … in celery worker"
        engine event each worker writes when it starts a task."""
        attempts = []
        with self.instance() as instance:
            for run_id in run_ids:
                run = instance.get_run_by_id(run_id)
                partition = run.tags.get("dagster/partition", "") if run else ""
                for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
                    event = entry.dagster_event
                    data = event.engine_event_data if event else None
                    worker = data.metadata.get("Celery worker") if data else None
                    if event is None or worker is None or not event.step_key:
                        continue
                    attempts.append(
                        StepAttempt(
                            run_id=run_id,
                            partition=partition,
                            step_key=event.step_key,
                            worker=str(getattr(worker, "value", worker)).split("@")[0],
                            at=entry.timestamp,
                        )
                    )
        return sorted(attempts, key=lambda a: a.at)

    def step_spans(self, run_ids: Sequence[str], step_key: str) -> list[tuple[float, float]]:
        """(start, end) of each run's `step_key` as the event log has it (the last attempt)."""
        return [span for key, span in self.all_step_spans(run_ids) if key == step_key]

    def all_step_spans(self, run_ids: Sequence[str]) -> list[tuple[str, tuple[float, float]]]:
        """(step key, (start, end)) of every step that succeeded, its last attempt, per run."""
        spans = []
        with self.instance() as instance:
            for run_id in run_ids:
                starts: dict[str, float] = {}
                for entry in instance.all_logs(run_id):
                    event = entry.dagster_event
                    if event is None or not event.step_key:
                        continue
                    if event.event_type == dg.DagsterEventType.STEP_START:
                        starts[event.step_key] = entry.timestamp
                    elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                        start = starts.get(event.step_key)
                        if start is not None:
                            spans.append((event.step_key, (start, entry.timestamp)))
        return spans


def member_env(
    name: str,
    root: Path,
    postgres: PostgresServer,
    settings_env: Mapping[str, str],
) -> Member:
    """A member's folder under `root`, with its own DAGSTER_HOME (the shipped Postgres
    `dagster.yaml`) and data folder; `settings_env` (PROFILING_*) is the same for every member."""
    folder = root / name
    _, instance_env = postgres_home(folder / "dagster_home", postgres)
    env = {
        **os.environ,
        **instance_env,
        **settings_env,
        "PROFILING_DATA_DIR": str(folder / "data"),
        # The console scripts of this environment, whatever PATH the caller has.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return Member(name=name, folder=folder, env=env)


def cluster_settings_env(
    broker: str, storage: Path, source: Path, gpu_slots: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The PROFILING_* settings every member of one cluster shares."""
    return {
        "PROFILING_EXECUTOR": "celery",
        BROKER_ENV: broker,
        "PROFILING_STORAGE_URI": str(storage),
        "PROFILING_SOURCE": str(source),
        "PROFILING_GPU_SLOTS": str(gpu_slots),
        **(extra or {}),
    }


@contextmanager
def running_cluster(
    root: Path,
    postgres: PostgresServer,
    settings_env: Mapping[str, str],
    workers: int,
    cpus_per_worker: Sequence[Sequence[int]] | None = None,
) -> Iterator[LocalCluster]:
    """A daemon (the launcher) and `workers` Celery workers named w1, w2, …; pool slots set on
    the instance from the shared settings; everything stopped on exit."""
    from profiling_assets.config import Settings
    from profiling_assets.pools import pool_limits

    launcher = member_env("launcher", root, postgres, settings_env)
    cluster = LocalCluster(launcher, postgres)
    gpu_slots = int(settings_env.get("PROFILING_GPU_SLOTS", "1"))
    limits = pool_limits(Settings(gpu_slots=gpu_slots, data_dir=launcher.folder / "data"))
    with cluster.instance() as instance:
        for pool, limit in limits.items():
            instance.event_log_storage.set_concurrency_slots(pool, limit)
    try:
        cluster.start(launcher, [_bin("dagster-daemon"), "run", "-m", CODE_MODULE])
        for n in range(1, workers + 1):
            cpus = cpus_per_worker[n - 1] if cpus_per_worker else None
            cluster.start_worker(member_env(f"w{n}", root, postgres, settings_env), cpus)
        yield cluster
    finally:
        cluster.close()


def describe(runs: Sequence[dg.DagsterRun]) -> str:
    return json.dumps({r.tags.get("dagster/partition", r.run_id): r.status.value for r in runs})
