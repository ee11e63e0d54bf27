"""The Borglet's task runners (borglet/runner.py): steps of one task run in order, one at a
time; different tasks run in parallel, but never on more than `max_threads` threads."""

from __future__ import annotations

import threading

from borglet.runner import TaskRunners


def test_steps_of_a_task_run_in_order_and_tasks_share_a_bounded_pool() -> None:
    runners = TaskRunners(max_threads=4)
    lock = threading.Lock()
    running: set[str] = set()
    peak = 0
    done: dict[int, list[int]] = {}
    release = threading.Event()

    def step(task: int, n: int) -> None:
        nonlocal peak
        me = threading.current_thread().name
        with lock:
            running.add(me)
            peak = max(peak, len(running))
        release.wait(5)  # the first steps wait, so every task is queued while they hold
        with lock:
            running.discard(me)
            done.setdefault(task, []).append(n)

    before = threading.active_count()
    for n in range(3):
        for task in range(50):
            runners.submit(("job", task, "x"), lambda t=task, n=n: step(t, n))
    assert runners.busy() == 50
    release.set()
    assert runners.wait_idle(30)
    assert peak <= 4
    assert threading.active_count() <= before + 4  # never more than the pool
    assert done == {task: [0, 1, 2] for task in range(50)}
    assert runners.busy() == 0


def test_a_failing_step_does_not_stop_the_next_ones() -> None:
    runners = TaskRunners(max_threads=1)
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("step failed")

    runners.submit(("job", 0, "x"), boom)
    runners.submit(("job", 0, "x"), lambda: ran.append("after"))
    runners.submit(("job", 1, "x"), lambda: ran.append("other"))
    assert runners.wait_idle(10)
    assert sorted(ran) == ["after", "other"]
