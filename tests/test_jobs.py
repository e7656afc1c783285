"""The job queue: order, lanes, events, ETA, previews, cancel (active and queued), pause,
errors."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import make_clip

from zvstudio.engine.jobs import ANALYSIS, RENDER, JobError, JobQueue, JobState
from zvstudio.engine.render import RenderResult
from zvstudio.engine.request import KeyRendererSpec, RenderRequest
from zvstudio.errors import StageError, ZvsError
from zvstudio.progress import EtaClock, Progress


class Recorder:
    """Collects events from the worker thread."""

    def __init__(self) -> None:
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self, job=None):
        with self.lock:
            return [e.kind for e in self.events if job is None or e.job == job]

    def of(self, job, kind):
        with self.lock:
            return [e for e in self.events if e.job == job and e.kind == kind]


@pytest.fixture
def queue():
    with JobQueue(preview_interval=0.0, preview_size=32) as jobs:
        recorder = Recorder()
        jobs.subscribe(recorder)
        jobs.recorder = recorder
        yield jobs


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def polling_work(started: threading.Event, count: list[int]):
    """Work that polls cancel (and pause) in a loop until cancelled."""

    def work(context):
        started.set()
        while True:
            context.cancel.raise_if_cancelled()
            count[0] += 1
            time.sleep(0.002)

    return work


def test_jobs_run_in_order_on_a_worker_thread_and_report(queue):
    threads = []

    def work(name):
        def run(context):
            threads.append(threading.current_thread().name)
            for done in range(1, 4):
                context.progress(Progress("steps", done, 3))
            context.log(f"{name} done")
            return name

        return run

    first = queue.submit(work("a"), "first")
    second = queue.submit(work("b"), "second")
    assert queue.wait(second, 10).state is JobState.FINISHED
    assert queue.job(first).result == "a" and queue.job(second).result == "b"
    assert threads == ["zvstudio-render", "zvstudio-render"]
    kinds = queue.recorder.kinds(first)
    assert kinds == ["queued", "started", "progress", "progress", "progress", "log", "finished"]
    # The second job starts only after the first has finished.
    events = queue.recorder.events
    assert events.index(queue.recorder.of(second, "started")[0]) > events.index(
        queue.recorder.of(first, "finished")[0]
    )
    progress = queue.recorder.of(first, "progress")
    assert [(e.stage, e.done, e.total) for e in progress] == [("steps", i, 3) for i in (1, 2, 3)]
    assert progress[-1].eta == 0.0
    assert queue.recorder.of(second, "finished")[0].result == "b"


def test_queued_jobs_can_be_cancelled_before_they_start(queue):
    started, count = threading.Event(), [0]
    blocker = queue.submit(polling_work(started, count), "blocker")
    ran = []
    middle = queue.submit(lambda context: ran.append("middle"), "middle")
    last = queue.submit(lambda context: ran.append("last"), "last")
    assert started.wait(5)
    queue.cancel(middle)
    assert queue.job(middle).state is JobState.CANCELLED  # at once, not when reached
    assert queue.recorder.kinds(middle) == ["queued", "cancelled"]
    queue.cancel(blocker)
    assert queue.wait(last, 10).state is JobState.FINISHED
    assert ran == ["last"]
    assert queue.job(blocker).state is JobState.CANCELLED


def test_analysis_never_waits_behind_a_render_and_each_lane_keeps_its_order(queue):
    started, count = threading.Event(), [0]
    render = queue.submit(polling_work(started, count), "a long render")
    assert started.wait(5)
    ran, threads = [], []

    def note(name):
        def run(context):
            ran.append(name)
            threads.append(threading.current_thread().name)

        return run

    waiting = queue.submit(note("render lane"), "queued behind the render", RENDER)
    scan = queue.submit(note("scan"), "scan", ANALYSIS)
    cuts = queue.submit(note("cuts"), "cuts", ANALYSIS)
    assert queue.wait(cuts, 5).state is JobState.FINISHED
    assert queue.job(scan).state is JobState.FINISHED
    assert queue.job(render).state is JobState.RUNNING  # the render went on meanwhile
    assert queue.job(waiting).state is JobState.QUEUED
    assert ran == ["scan", "cuts"] and threads == ["zvstudio-analysis"] * 2

    queue.cancel(render)
    assert queue.wait(waiting, 5).state is JobState.FINISHED
    assert ran == ["scan", "cuts", "render lane"]
    with pytest.raises(ValueError, match="lane"):
        queue.submit(note("nowhere"), "nowhere", "gpu")


def test_shutdown_cancels_and_joins_every_lane():
    jobs = JobQueue()
    started = [threading.Event(), threading.Event()]
    ids = [
        jobs.submit(polling_work(started[0], [0]), "render", RENDER),
        jobs.submit(polling_work(started[1], [0]), "analysis", ANALYSIS),
    ]
    assert all(event.wait(5) for event in started)
    jobs.shutdown(timeout=5)
    assert [jobs.job(job).state for job in ids] == [JobState.CANCELLED] * 2
    assert not any(thread.is_alive() for thread in jobs._threads)


def test_pause_holds_the_job_and_resume_continues(queue):
    started, count = threading.Event(), [0]
    job = queue.submit(polling_work(started, count), "loop")
    assert started.wait(5)
    wait_for(lambda: count[0] > 3)
    queue.pause(job)
    assert queue.job(job).state is JobState.PAUSED
    time.sleep(0.05)  # let the work reach its next check
    held = count[0]
    time.sleep(0.2)
    assert count[0] == held  # nothing runs while paused
    queue.resume(job)
    wait_for(lambda: count[0] > held + 3)
    assert queue.recorder.kinds(job)[-2:] == ["paused", "resumed"]
    # A paused job can be cancelled.
    queue.pause(job)
    queue.cancel(job)
    assert queue.wait(job, 5).state is JobState.CANCELLED


def test_errors_come_back_structured_and_the_queue_goes_on(queue):
    def bad_input(context):
        raise ZvsError("the clip is damaged", hint="re-export it")

    def out_of_memory(context):
        raise StageError("keys", 40, ZvsError("the GPU ran out of memory", code="out_of_memory"))

    def bug(context):
        return 1 / 0

    ids = [queue.submit(work) for work in (bad_input, out_of_memory, bug)]
    ok = queue.submit(lambda context: "fine")
    assert queue.wait(ok, 10).state is JobState.FINISHED
    errors = [queue.job(i).error for i in ids]
    assert all(queue.job(i).state is JobState.FAILED for i in ids)
    assert (errors[0].message, errors[0].hint, errors[0].code) == (
        "the clip is damaged",
        "re-export it",
        "error",
    )
    assert (errors[1].code, errors[1].stage, errors[1].frame) == ("out_of_memory", "keys", 40)
    assert "rendering key frame 40 failed: the GPU ran out of memory" in errors[1].message
    assert errors[2].code == "internal" and "ZeroDivisionError" in errors[2].details
    failed = queue.recorder.of(ids[1], "failed")[0]
    assert failed.error == errors[1] and failed.stage == "keys"


def test_eta_comes_from_the_stage_rate_and_leaves_out_paused_time():
    now = [100.0]
    clock = EtaClock(lambda: now[0])
    assert clock.eta("propagate", 0, 10) is None  # starts the stage's clock
    now[0] += 2.0
    assert clock.eta("propagate", 2, 10) == pytest.approx(8.0)  # 1 s per unit, 8 left
    clock.pause()
    now[0] += 60.0
    clock.resume()
    now[0] += 2.0
    assert clock.eta("propagate", 4, 10) == pytest.approx(6.0)  # the pause does not count
    assert clock.eta("encode", 0, 1) is None


def test_job_error_from_exception_keeps_the_hint():
    error = JobError.from_exception(ZvsError("no space", hint="free some", code="disk_full"))
    assert (error.code, str(error)) == ("disk_full", "no space\n  hint: free some")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path, _, _ = make_clip(tmp_path_factory.mktemp("jobs") / "c.mp4", count=40, audio=True)
    return path


def test_a_render_job_reports_stages_previews_and_its_result(queue, clip, tmp_path):
    request = RenderRequest(
        clip, tmp_path / "out.mp4", KeyRendererSpec(style="posterize"), key_interval=8
    )
    job = queue.submit_render(request)
    assert queue.wait(job, 120).state is JobState.FINISHED, queue.job(job).error
    result = queue.job(job).result
    assert isinstance(result, RenderResult) and result.frames == 40
    stages = {e.stage for e in queue.recorder.of(job, "progress")}
    assert {"prepare", "keys", "propagate", "encode"} <= stages
    previews = queue.recorder.of(job, "preview")
    assert previews and max(previews[-1].image.shape[:2]) == 32  # downscaled for a thumbnail
    assert previews[-1].done == 40
    assert any(e.eta is not None for e in queue.recorder.of(job, "progress"))
    # Rendering again reuses everything and says so in the log.
    again = queue.submit_render(request)
    assert queue.wait(again, 60).state is JobState.FINISHED
    logs = [e.message for e in queue.recorder.of(again, "log")]
    assert any("resumed: 5 of 5 segments" in line for line in logs)


def test_cancelling_a_render_job_stops_it_within_a_second(queue, clip, tmp_path):
    out = tmp_path / "out.mp4"
    request = RenderRequest(clip, out, KeyRendererSpec(style="oil"))  # every frame rendered
    asked = []

    def cancel_midway(event):
        if event.kind == "progress" and event.stage == "render" and event.done == 5 and not asked:
            asked.append(time.monotonic())
            queue.cancel(event.job)

    queue.subscribe(cancel_midway)
    job = queue.submit_render(request)
    assert queue.wait(job, 60).state is JobState.CANCELLED
    stopped = queue.recorder.of(job, "cancelled")
    assert stopped and time.monotonic() - asked[0] < 1.0
    assert not out.exists()
