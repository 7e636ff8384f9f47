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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from prism.stages.base import Stage

log = logging.getLogger(__name__)

T = TypeVar("T")


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
) -> list[T]:
    """Run ``stages`` (in dependency order) with ``run_one``; results come back in that order.

    With ``overlap`` False, or a single group, everything runs in the calling thread. An
    exception from ``run_one`` is raised once every group has stopped; a group whose stage
    raised does not start its later stages, and stages waiting on it are released.
    """
    names = list(stages)
    done = {name: threading.Event() for name in names}
    results: dict[str, T] = {}
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(stages[name].concurrency, []).append(name)

    blocking = overlap and len(groups) > 1

    def run_group(members: list[str]) -> None:
        try:
            for name in members:
                for dep in stages[name].requires:
                    if dep in done:
                        done[dep].wait()
                try:
                    results[name] = run_one(stages[name], Waiter(name, stages, done, blocking))
                finally:
                    done[name].set()
        finally:  # a raised stage: release whoever waits for the rest of this group
            for name in members:
                done[name].set()

    if not blocking:
        run_group(names)
        return [results[name] for name in names]
    log.debug("stage groups run side by side: %s", groups)
    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="prism-stages") as pool:
        futures = [pool.submit(run_group, members) for members in groups.values()]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [results[name] for name in names]
