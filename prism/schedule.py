"""Run one title's stages with independent groups overlapping (the audio stage beside the visual ones).

Each stage names a ``concurrency`` group. Stages of one group run one after another in the
runner's dependency order; different groups run side by side, each in its own thread, so the
audio stage's ASR overlaps the video decode, TransNetV2 and the embeddings on one worker instead
of waiting for them. A stage starts once the stages it ``requires`` have finished, whatever their
group. A stage may also wait for a stage it only *uses* when present (the audio stage snaps
subtitles to shots.parquet) through :meth:`Waiter.wait_for`, so its output never depends on which
thread happened to be faster.

Why no deadlock: every group keeps the runner's one topological order, so a stage only ever waits
for stages earlier in that order; ``wait_for`` refuses to wait for a stage of its own group (which
is either finished already or comes later) or for a stage that depends on the caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from prism.stages.base import Stage

log = logging.getLogger(__name__)

T = TypeVar("T")
STAGE_THREAD_PREFIX = "prism-stages-"  # the threads of the stage groups, one per group
CANCEL_GRACE_S = 5.0  # how long Ctrl-C waits for running stages to reach a progress report and stop


class Waiter:
    """What a running stage may wait for: another stage of the same run, when it is part of it."""

    def __init__(
        self, caller: str, stages: Mapping[str, Stage], done: Mapping[str, threading.Event], blocking: bool = True
    ):
        self._caller = caller
        self._stages = stages
        self._done = done
        self._blocking = blocking  # False when everything runs in one thread: a later stage never comes

    def wait_for(self, name: str) -> bool:
        """Block until stage ``name`` has finished in this run; False when it is not being run now
        (its recorded results, if any, are what the title holds) or cannot be waited for."""
        event = self._done.get(name)
        if event is None:
            return False
        if event.is_set():
            return True
        if not self._blocking:
            return False
        if self._stages[name].concurrency == self._stages[self._caller].concurrency:
            return False  # later in the caller's own group: waiting would never end
        if self._caller in ancestors(name, self._stages):
            return False  # it waits for the caller
        event.wait()
        return True


def ancestors(name: str, stages: Mapping[str, Stage] | Mapping[str, type[Stage]]) -> set[str]:
    """Every stage ``name`` requires, directly or not, among ``stages`` (instances or registered classes)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in stages[todo.pop()].requires:
            if dep in stages and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def run_stages(
    stages: Mapping[str, Stage],
    run_one: Callable[[Stage, Waiter], T],
    *,
    overlap: bool = True,
    cancel: threading.Event | None = None,
    grace_s: float = CANCEL_GRACE_S,
) -> list[T]:
    """Run ``stages`` (in dependency order) with ``run_one``; results come back in that order.

    With ``overlap`` False, or a single group, everything runs in the calling thread. An
    exception from ``run_one`` is raised once every group has stopped; a group whose stage
    raised does not start its later stages, and stages waiting on it are released.

    Ctrl-C (KeyboardInterrupt, which Python delivers to the calling thread only) sets ``cancel``:
    no group starts another stage, a running stage stops at its next progress report (the runner
    raises there), and after at most ``grace_s`` the interrupt is raised here. The group threads
    are daemons, so one stuck in a long model call never holds the process up.
    """
    names = list(stages)
    done = {name: threading.Event() for name in names}
    results: dict[str, T] = {}
    groups: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    cancel = cancel or threading.Event()
    for name in names:
        groups.setdefault(stages[name].concurrency, []).append(name)

    blocking = overlap and len(groups) > 1

    def run_group(members: list[str]) -> None:
        try:
            for name in members:
                if cancel.is_set():
                    return
                for dep in stages[name].requires:
                    if dep in done:
                        done[dep].wait()
                try:
                    results[name] = run_one(stages[name], Waiter(name, stages, done, blocking))
                finally:
                    done[name].set()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, raised there
            errors.append(exc)
        finally:  # a raised stage: release whoever waits for the rest of this group
            for name in members:
                done[name].set()

    if not blocking:
        run_group(names)
    else:
        log.debug("stage groups run side by side: %s", groups)
        threads = [
            threading.Thread(target=run_group, args=(members,), name=f"{STAGE_THREAD_PREFIX}{group}", daemon=True)
            for group, members in groups.items()
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.25)
        except KeyboardInterrupt:
            cancel.set()
            log.warning("interrupted: stopping the running stages")
            deadline = time.monotonic() + grace_s
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            raise
    for error in errors:
        if isinstance(error, KeyboardInterrupt):
            raise error
    for error in errors:
        raise error
    return [results[name] for name in names]
