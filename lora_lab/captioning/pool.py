"""Captioning across GPUs: a pool of Ray actors on the cluster, one captioner (one model) per GPU.

A caption job asking for several GPUs runs as a Ray job (:mod:`lora_lab.jobs.executors`) whose
own process takes no GPU: it drives the pool. Each actor holds one model, made by the factory the
pool is given (a caption job's: today's llama.cpp captioner, see
:func:`lora_lab.captioning.job.captioner_of`). The driver prepares the images as a run on one GPU
does and streams them to whichever actor has room, a few in flight each so no GPU waits; the
answers come back to it, where :mod:`.batch` writes each one as it always does (journal entry,
then atomic write), so a killed run resumes the same way, nothing lost or doubled.

Images travel as prepared JPEG bytes through Ray's object store, so the actors' nodes need no
copy of the dataset. Plain actors rather than a Ray Data ``map_batches`` pool: each answer must
come back to this process as soon as it is ready, to be journaled, and the work is a queue of
(image, prompt) requests that needs none of Ray Data's blocks and batching.
"""
from __future__ import annotations

import collections
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .base import Answer, Captioner, CaptionError

K = TypeVar("K")
IN_FLIGHT = 2  # requests per actor: one captioning, the next already there when it ends


class CaptionerActor:
    """One model on one GPU (the one Ray gives the actor, through ``$CUDA_VISIBLE_DEVICES``)."""

    def __init__(self, factory: Callable[[], Captioner]):
        self.captioner = factory()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def ready(self) -> str:
        """Which actor this is, and its GPU: once its model is loaded."""
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or "none"
        return f"{self.name} (GPU {gpus})"

    def caption(self, image: bytes, prompt: str) -> tuple[Answer | str, str]:
        """The answer, or a failed image's error text (the run goes on), and who answered."""
        try:
            return self.captioner.caption(image, prompt), self.name
        except CaptionError as e:
            return str(e), self.name


class CaptionPool:
    """A caption engine over ``actors`` GPUs of the Ray cluster this process belongs to (a Ray
    job's: Ray gives it ``$RAY_ADDRESS``), each actor running a captioner ``factory`` makes.

    ``name`` is the captioner's, recorded with each caption and part of the batch's journal key.
    ``on_notice`` hears of each actor once its model is loaded, and how many images each
    answered once the run ends.
    """

    def __init__(self, factory: Callable[[], Captioner], name: str, actors: int, *,
                 gpus_per_actor: float = 1.0, address: str | None = None,
                 on_notice: Callable[[str], None] | None = None):
        if actors < 1:
            raise CaptionError(f"a caption pool needs at least one actor, not {actors}")
        self.factory, self.name, self.actors = factory, name, actors
        self.gpus_per_actor = gpus_per_actor
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.on_notice = on_notice or (lambda message: None)
        self.answered: collections.Counter[str] = collections.Counter()  # images per actor
        self._joined = False  # this pool connected this process to the cluster (and leaves it)

    def caption(self, image: bytes, prompt: str) -> Answer:
        """One image, through the pool (a batch sends many at once: :meth:`caption_many`)."""
        for _, answer in self.caption_many([(None, image, prompt)]):
            if isinstance(answer, CaptionError):
                raise answer
            return answer
        raise CaptionError("the caption pool answered nothing")

    def caption_many(self, items: Iterable[tuple[K, bytes, str]]) -> Iterator[tuple[K, Answer | CaptionError]]:
        """Caption ``(key, image, prompt)`` items on the actors, ``IN_FLIGHT`` each; results come
        as they are answered, in any order, each with its key (a failed image as its
        CaptionError). ``items`` is read only as far as the actors have room."""
        ray = self._connect()
        actors = self._start(ray)
        source = iter(items)
        pending: dict[Any, tuple[K, Any]] = {}  # request -> (key, actor)
        room = {actor: IN_FLIGHT for actor in actors}
        try:
            self._fill(source, pending, room)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                key, actor = pending.pop(done[0])
                room[actor] += 1
                answer = self._result(ray, done[0])
                self._fill(source, pending, room)  # keep the GPUs busy while the caller writes
                yield key, answer
        finally:  # also when the caller stops early or is interrupted: the GPUs are free at once
            for actor in actors:
                ray.kill(actor)
        for actor, count in sorted(self.answered.items()):
            self.on_notice(f"captioner actor {actor} answered {count} image(s)")

    def _start(self, ray: Any) -> list[Any]:
        """The actors, each with its model loaded (a model that fails to load fails the run)."""
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_actor)(CaptionerActor)
        actors = [remote.remote(self.factory) for _ in range(self.actors)]
        try:
            for who in ray.get([actor.ready.remote() for actor in actors]):
                self.on_notice(f"captioner actor {who} loaded its model")
        except Exception as e:  # Ray wraps the actor's own error in one of its many types
            for actor in actors:
                ray.kill(actor)
            raise CaptionError(f"a captioner actor could not start: {_cause(e)}") from None
        return actors

    def _fill(self, source: Iterator[tuple[K, bytes, str]], pending: dict[Any, tuple[K, Any]],
              room: dict[Any, int]) -> None:
        for actor in room:
            while room[actor]:
                item = next(source, None)
                if item is None:
                    return
                key, image, prompt = item
                pending[actor.caption.remote(image, prompt)] = (key, actor)
                room[actor] -= 1

    def _result(self, ray: Any, request: Any) -> Answer | CaptionError:
        try:
            answer, who = ray.get(request)
        except Exception as e:  # the actor died (its node left, the OOM killer): the run stops
            raise CaptionError(f"a captioner actor died: {_cause(e)}; resume the job to go on") from None
        self.answered[who] += 1
        return answer if isinstance(answer, Answer) else CaptionError(answer)

    def _connect(self) -> Any:
        from ..cluster import require_ray

        ray = require_ray("captioning across GPUs")
        if not ray.is_initialized():
            if not self.address:
                raise CaptionError("captioning across GPUs runs as a job on a Ray cluster "
                                   "(executor ray); this process is not one")
            ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
            self._joined = True
        return ray

    def close(self) -> None:
        """Leave the cluster, when this pool joined it."""
        if self._joined:
            import ray

            ray.shutdown()
            self._joined = False


def _cause(e: BaseException) -> str:
    """A Ray error's cause without its traceback: its last line that says something."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__
