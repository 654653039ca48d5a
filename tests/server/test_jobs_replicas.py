"""Jobs across replicas: `python -m server` processes on loopback sharing one real Redis (Debian's redis-server).

Every forward of the video model appends its process id to a file (a sitecustomize.py in the test, never in the
server), so the tests count the passes each replica ran: a job runs to completion once, whoever accepted it,
whichever replica dies or freezes on the way.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.server.conftest import REPO, ServerProcess, sample, start_server, write_config
from tests.server.redis_support import RedisServer
from tests.server.support import assert_error
from tests.server.tasks.test_video_autoencoding import ONE_CHUNK_PER_PASS, clip, parts

pytestmark = pytest.mark.slow
KIND = "autoencode-video"
FRAMES = 6  # 3 windows of the small model: 3 x (1 encode + 16 decode passes) = 51 forwards
UNITS = 51
RECONSTRUCT = "/autoencode-video?outputs=labels,reconstruction"
COUNTED_FORWARD = """
import os, time
from server.tasks.video_autoencoding import VideoAutoencodingRunner

_forward = VideoAutoencodingRunner.forward


def _counted_forward(self, batch):
    time.sleep(float(os.environ["PERCEIVER_TEST_FORWARD_DELAY_S"]))
    with open(os.environ["PERCEIVER_TEST_FORWARDS"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return _forward(self, batch)


VideoAutoencodingRunner.forward = _counted_forward
"""


@contextmanager
def cluster(tmp_path: Path, checkpoints: dict[str, Path], url: str, *servers: dict[str, Any]) -> Iterator[list[Any]]:
    """One replica per `servers` table (over the shared defaults), started side by side; SIGCONT then SIGTERM
    for each at the end."""
    (tmp_path / "sitecustomize.py").write_text(COUNTED_FORWARD)
    env = {
        "PYTHONPATH": f"{tmp_path}:{REPO}",
        "PERCEIVER_TEST_FORWARD_DELAY_S": "0.05",
        "PERCEIVER_TEST_FORWARDS": str(tmp_path / "forwards.txt"),
    }
    video = {"task": "video-autoencoding", "source": str(checkpoints["video"]), "max_batch_size": 1, "max_delay_ms": 0}
    common = {"device": "cpu", "jobs_url": url, "job_heartbeat_s": 2, "max_running_jobs": 1, **ONE_CHUNK_PER_PASS}
    replicas: list[ServerProcess] = []
    try:
        for i, server in enumerate(servers):
            table = {"server": {**common, "preload": ["video"], **server}, "models": {"video": video}}
            config = write_config(tmp_path / f"replica-{i}.toml", table)
            replicas.append(start_server(tmp_path, "--config", str(config), env=env))
        for replica in replicas:
            replica.wait_ready(120)
        yield replicas
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                os.kill(replica.proc.pid, signal.SIGCONT)
                replica.terminate()
        for replica in replicas:
            replica.stop()


def forwards(tmp_path: Path) -> collections.Counter[int]:
    """Forwards run so far, by process id."""
    path = tmp_path / "forwards.txt"
    lines = path.read_text().split() if path.exists() else []
    return collections.Counter(int(line) for line in lines)


def settled_forwards(tmp_path: Path, quiet_s: float = 0.5) -> collections.Counter[int]:
    """Forwards run so far, once no pass has ended for `quiet_s` (a batch in flight cannot be interrupted)."""
    last = forwards(tmp_path)
    for _ in range(20):  # a job that never stops fails the caller's next check
        time.sleep(quiet_s)
        now = forwards(tmp_path)
        if now == last:
            break
        last = now
    return last


def until(check: Callable[[], Any], timeout_s: float = 90.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def metric(replica: ServerProcess, name: str, **labels: str) -> float:
    return sample(httpx.get(f"{replica.base}/metrics", timeout=10).text, name, kind=KIND, **labels)


def running_on(replicas: list[ServerProcess]) -> ServerProcess | None:
    return next((r for r in replicas if metric(r, "perceiver_jobs_running") == 1), None)


def status(replica: ServerProcess, location: str) -> dict[str, Any]:
    return httpx.get(f"{replica.base}{location}", timeout=10).json()


def submit(replica: ServerProcess, seed: int, query: str = RECONSTRUCT) -> str:
    accepted = httpx.post(f"{replica.base}{query}&async=true", files=parts(*clip(FRAMES, seed=seed)), timeout=30)
    assert accepted.status_code == 202, accepted.text
    return accepted.headers["location"]


def running_job(replicas: list[ServerProcess], *, seed: int) -> tuple[str, ServerProcess, ServerProcess]:
    """A job submitted to the second replica, once some of its passes ran: (location, its runner, the other)."""
    location = submit(replicas[1], seed=seed)
    runner = until(lambda: running_on(replicas), what="a replica runs the job")
    (other,) = [r for r in replicas if r is not runner]
    until(lambda: status(other, location)["progress"]["done"] >= 3, what="some passes ran")
    return location, runner, other


def arrays(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content)) as data:
        return {k: data[k] for k in data.files}


def test_three_replicas_submit_on_one_poll_and_fetch_on_another_cancel_from_a_third(
    tmp_path: Path, checkpoints: dict[str, Path], redis_url: str
) -> None:
    with cluster(tmp_path, checkpoints, redis_url, {}, {}, {}) as (a, b, c):
        location = submit(a, seed=21)
        seen = []
        while (info := status(b, location))["status"] != "done":
            assert info["status"] in ("queued", "running") and info["progress"]["total"] == UNITS, info
            assert status(c, location)["progress"]["done"] >= info["progress"]["done"]  # the same job, later
            seen.append(info["progress"]["done"])
            time.sleep(0.1)
        assert seen == sorted(seen) and any(0 < s < UNITS for s in seen)
        assert status(c, location)["progress"] == {"done": UNITS, "total": UNITS}
        ran = forwards(tmp_path)
        assert sorted(ran.values()) == [UNITS]  # one replica ran it, once
        got = arrays(httpx.get(f"{b.base}{location}/result", timeout=30))
        want = arrays(httpx.post(f"{c.base}{RECONSTRUCT}", files=parts(*clip(FRAMES, seed=21)), timeout=60))
        assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)

        second = submit(b, seed=22)
        until(lambda: status(a, second)["progress"]["done"] >= 3, what="the second job runs")
        before = forwards(tmp_path)
        assert httpx.delete(f"{c.base}{second}", timeout=10).status_code == 204
        for replica in (a, b, c):
            assert_error(httpx.get(f"{replica.base}{second}", timeout=10), 404, "not_found")
        until(lambda: running_on([a, b, c]) is None, what="the runner stops the cancelled job")
        stopped = settled_forwards(tmp_path)  # a pass already running when the job stopped may end
        time.sleep(1.0)
        assert forwards(tmp_path) == stopped  # no pass runs after its runner stopped it
        assert sum(stopped.values()) - sum(before.values()) < UNITS - 3
        assert sum(metric(r, "perceiver_jobs_finished_total", status="cancelled") for r in (a, b, c)) == 1


def test_kill_9_of_the_runner_another_replica_claims_the_job_and_runs_it_once(
    tmp_path: Path, checkpoints: dict[str, Path], redis_url: str
) -> None:
    with cluster(tmp_path, checkpoints, redis_url, {}, {}) as replicas:
        location, runner, survivor = running_job(replicas, seed=23)
        runner.proc.kill()
        runner.proc.wait(timeout=10)
        done = until(lambda: (info := status(survivor, location))["status"] == "done" and info, what="claimed")
        assert done["progress"] == {"done": UNITS, "total": UNITS}
        assert httpx.get(f"{survivor.base}{location}/result", timeout=30).status_code == 200
        ran = forwards(tmp_path)
        assert 3 <= ran[runner.proc.pid] < UNITS and ran[survivor.proc.pid] == UNITS and len(ran) == 2
        assert metric(survivor, "perceiver_jobs_claimed_total") == 1
        assert metric(survivor, "perceiver_jobs_finished_total", status="done") == 1


def test_a_frozen_runner_loses_its_job_to_another_and_drops_its_work(
    tmp_path: Path, checkpoints: dict[str, Path], redis_url: str
) -> None:
    with cluster(tmp_path, checkpoints, redis_url, {}, {}) as replicas:
        location, runner, other = running_job(replicas, seed=24)
        os.kill(runner.proc.pid, signal.SIGSTOP)  # no heartbeat: after job_heartbeat_s the other one claims it
        until(lambda: status(other, location)["status"] == "done", what="the other replica finishes it")
        os.kill(runner.proc.pid, signal.SIGCONT)
        until(lambda: metric(runner, "perceiver_jobs_running") == 0, what="the thawed runner gives the job up")
        ran = forwards(tmp_path)
        assert ran[runner.proc.pid] < UNITS and ran[other.proc.pid] == UNITS
        assert metric(runner, "perceiver_jobs_finished_total", status="done") == 0
        assert metric(other, "perceiver_jobs_finished_total", status="done") == 1
        assert arrays(httpx.get(f"{runner.base}{location}/result", timeout=30))["video"].shape[0] == FRAMES


def test_redis_restarted_mid_run_submissions_get_503_then_service_resumes(
    tmp_path: Path, checkpoints: dict[str, Path], redis_url: str, redis_server: RedisServer
) -> None:
    with cluster(tmp_path, checkpoints, redis_url, {}, {"jobs_required": True}) as (a, strict):
        lost = submit(a, seed=25)
        until(lambda: running_on([a, strict]), what="the first job runs")
        redis_server.stop()
        refused = httpx.post(f"{a.base}{RECONSTRUCT}&async=true", files=parts(*clip(2)), timeout=30)
        assert_error(refused, 503, "jobs_unavailable", "cannot be reached", "synchronous requests still work")
        assert int(refused.headers["retry-after"]) >= 1
        assert_error(httpx.get(f"{strict.base}{lost}", timeout=10), 503, "jobs_unavailable")
        assert httpx.post(f"{a.base}{RECONSTRUCT}", files=parts(*clip(2)), timeout=60).status_code == 200
        assert httpx.get(f"{a.base}/health/ready", timeout=10).status_code == 200
        until(lambda: httpx.get(f"{strict.base}/health/ready").status_code == 503, what="readiness says so")
        assert "job store" in httpx.get(f"{strict.base}/health/ready").json()["error"]["message"]

        redis_server.start()  # empty: persistence is off, the jobs it held are gone
        until(lambda: httpx.get(f"{strict.base}/health/ready").status_code == 200, what="ready again")
        resumed = until(lambda: _accepted(strict), what="submissions are accepted again")
        until(lambda: status(a, resumed)["status"] == "done", what="the new job runs")
        assert httpx.get(f"{a.base}{resumed}/result", timeout=30).status_code == 200
        assert_error(httpx.get(f"{a.base}{lost}", timeout=10), 404, "not_found")
        until(lambda: running_on([a, strict]) is None, what="the lost job's runner stops it")
        assert a.proc.poll() is None and strict.proc.poll() is None


def _accepted(replica: ServerProcess) -> str | None:
    response = httpx.post(f"{replica.base}{RECONSTRUCT}&async=true", files=parts(*clip(2)), timeout=30)
    return response.headers["location"] if response.status_code == 202 else None
