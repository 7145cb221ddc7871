"""Sequences: the requests of one sequence run one after another, in order, each on the state the one before left.

Triton's sequence batcher for models whose state the server keeps (implicit state). A sequence is
named by the id its requests carry; a request flagged ``start`` begins it (or begins it again) on the
initial state, one flagged ``end`` ends it once it has run. Requests of one sequence are held here, in
arrival order, while one of them runs; requests of different sequences go to ``run`` at once, so the
model's batcher batches them together. ``run(item, state, sequence_id, start, end)`` queues one request
and returns a future of ``(result, state after it)``; a request that fails leaves the state as it was,
so the sequence goes on (a failed ``end`` does not end it).

Refused at once, never queued: a request of a sequence that is not live (never started, ended, or
released after ``idle_s`` with no request: ``InvalidInput`` saying so) and the start of a sequence past
``max_sequences`` live ones (``QueueFull``: each holds its state in memory). A caller that cancels
while its request waits behind its sequence's is dropped; one that cancels while it runs cancels it
in the model's batcher (and the state stays as it was unless the run finished). Idle release uses one
timer per idle sequence; nothing polls. ``close(reason)`` fails what is held and releases everything.

Replaced (a reload, a newer version): ``finish(timeout_s)`` lets the live sequences go on to their end (or
their idle release) while refusing new ones, so that a reload drops none; ``holds(id)`` tells the dataplane
which requests still come here. ``stop_finishing()`` ends that wait at once (the server is shutting down).

An ``observer`` (a fleet's record of which replica holds each sequence, server/sequence_owners.py) hears
of each sequence started (or started again), of each later request of it, and of its release (its end,
idle release, or ``close``); it must not raise or block.

Generic over the item, the result and the state (the server's tensors). Loop-bound. Must not import
server, kernels, model_store, numpy or grpc.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar

from ops.errors import InvalidInput, ModelNotReady, QueueFull

log = logging.getLogger(__name__)
I = TypeVar("I")  # noqa: E741 - an item: one request as the server queues it
R = TypeVar("R")  # the result a caller gets
S = TypeVar("S")  # a sequence's state
Run = Callable[[I, S, Hashable, bool, bool], "asyncio.Future[tuple[R, S]]"]


class SequenceObserver(Protocol):
    def started(self, sequence_id: Hashable) -> None: ...

    def touched(self, sequence_id: Hashable) -> None: ...

    def released(self, sequence_id: Hashable) -> None: ...


class _Request(Generic[I, R]):
    __slots__ = ("item", "start", "end", "future")

    def __init__(self, item: I, start: bool, end: bool, future: "asyncio.Future[R]") -> None:
        self.item = item
        self.start = start
        self.end = end
        self.future = future


class _Sequence(Generic[I, R, S]):
    __slots__ = ("state", "waiting", "running", "timer")

    def __init__(self) -> None:
        self.state: S | None = None  # None: not started, or ended
        self.waiting: collections.deque[_Request[I, R]] = collections.deque()
        self.running = False
        self.timer: asyncio.TimerHandle | None = None


class Sequences(Generic[I, R, S]):
    """See the module docstring. ``name`` leads messages ("model 'm' version 1")."""

    def __init__(self, name: str, run: "Run[I, S, R]", initial: Callable[[], S], idle_s: float,
                 max_sequences: int, observer: SequenceObserver | None = None) -> None:
        self.name = name
        self.observer = observer
        self._run = run
        self._initial = initial
        self.idle_s = idle_s
        self.max_sequences = max_sequences
        self._live: dict[Hashable, _Sequence[I, R, S]] = {}
        self._closed = ""
        self._finishing = ""  # set by ``finish``: the live sequences go on, no new one starts
        self._none_live: asyncio.Event | None = None  # while ``finish`` waits: set once no sequence is live
        self._no_wait = False  # ``stop_finishing`` was called: ``finish`` waits no more

    @property
    def live(self) -> int:
        """Sequences holding a state or requests now."""
        return len(self._live)

    def holds(self, sequence_id: Hashable) -> bool:
        """Whether sequence ``sequence_id`` is live here (holds a state or requests)."""
        return sequence_id in self._live

    def submit(self, sequence_id: Hashable, start: bool, end: bool, item: I) -> "asyncio.Future[R]":
        """Queue one request of sequence ``sequence_id``; its result's future. Raises as the module docstring says."""
        if self._closed:
            raise ModelNotReady(f"{self.name} is not accepting requests: {self._closed}")
        if self._finishing and start:
            raise ModelNotReady(f"{self.name} starts no new sequence: {self._finishing}")
        sequence = self._live.get(sequence_id)
        if sequence is None:
            if not start:
                raise InvalidInput(
                    f"{self.name}: sequence {sequence_id!r} is not live: it never started, it ended, or it was "
                    f"idle longer than max_sequence_idle_microseconds ({self.idle_s * 1e6:.0f}); its first request "
                    "needs sequence_start (behind a load balancer, it may be live on another server: a sequence's "
                    "requests must all reach the server that started it, e.g. over one stream)")
            if len(self._live) >= self.max_sequences:
                raise QueueFull(
                    f"{self.name} holds {len(self._live)} live sequences, its limit (max_candidate_sequences); end "
                    "sequences (sequence_end) or let idle ones be released, then start this one again")
            sequence = self._live[sequence_id] = _Sequence()
        elif sequence.timer is not None:
            sequence.timer.cancel()
            sequence.timer = None
        if self.observer is not None:
            if start:
                self.observer.started(sequence_id)
            else:
                self.observer.touched(sequence_id)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        sequence.waiting.append(_Request(item, start, end, future))
        if not sequence.running:
            self._next(sequence_id, sequence)
        return future

    def _next(self, sequence_id: Hashable, sequence: _Sequence[I, R, S]) -> None:
        """Run the sequence's oldest waiting request, or leave it idle."""
        while sequence.waiting:
            request = sequence.waiting.popleft()
            if request.future.done():
                continue  # its caller went away while it waited
            if request.start:
                state = self._initial()
            elif sequence.state is None:
                request.future.set_exception(InvalidInput(
                    f"{self.name}: sequence {sequence_id!r} is not live any more (it ended, or its start failed); "
                    "start it again with sequence_start"))
                continue
            else:
                state = sequence.state
            try:
                run = self._run(request.item, state, sequence_id, request.start, request.end)
            except BaseException as exc:  # refused before it queued (a full queue, a bad priority...)
                request.future.set_exception(exc)
                continue
            sequence.running = True
            run.add_done_callback(functools.partial(self._ran, sequence_id, sequence, request))
            request.future.add_done_callback(functools.partial(_cancel_with, run))
            return
        self._idle(sequence_id, sequence)

    def _ran(self, sequence_id: Hashable, sequence: _Sequence[I, R, S], request: _Request[I, R],
             run: "asyncio.Future[tuple[R, S]]") -> None:
        sequence.running = False
        caller = request.future
        if run.cancelled():
            if not caller.done():
                caller.cancel()
        elif run.exception() is not None:
            if not caller.done():
                caller.set_exception(run.exception())  # type: ignore[arg-type]
        else:
            result, state = run.result()
            sequence.state = None if request.end else state
            if not caller.done():
                caller.set_result(result)
        if self._live.get(sequence_id) is sequence:
            self._next(sequence_id, sequence)

    def _idle(self, sequence_id: Hashable, sequence: _Sequence[I, R, S]) -> None:
        if sequence.state is None:  # ended (or never started): nothing to keep
            if self._live.pop(sequence_id, None) is not None and self.observer is not None:
                self.observer.released(sequence_id)
            self._check_none_live()
            return
        sequence.timer = asyncio.get_running_loop().call_later(self.idle_s, self._expire, sequence_id, sequence)

    def _expire(self, sequence_id: Hashable, sequence: _Sequence[I, R, S]) -> None:
        if self._live.get(sequence_id) is sequence and not sequence.running and not sequence.waiting:
            del self._live[sequence_id]
            log.debug("%s: sequence %r released after %.3f s without a request", self.name, sequence_id, self.idle_s)
            if self.observer is not None:
                self.observer.released(sequence_id)
            self._check_none_live()

    def _check_none_live(self) -> None:
        if self._none_live is not None and not self._live:
            self._none_live.set()

    async def finish(self, timeout_s: float, reason: str) -> int:
        """Refuse new sequences from now on (``ModelNotReady``, ``reason``) and wait, up to ``timeout_s``, until no
        sequence is live: each ends, or is released idle. Returns how many are still live (``close`` ends them)."""
        self._finishing = reason
        if self._live and timeout_s > 0 and not self._no_wait:
            self._none_live = asyncio.Event()
            try:
                await asyncio.wait_for(self._none_live.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
            finally:
                self._none_live = None
        return len(self._live)

    def stop_finishing(self) -> None:
        """End a ``finish`` under way at once (the server is shutting down: no request will come)."""
        self._no_wait = True
        if self._none_live is not None:
            self._none_live.set()

    def close(self, reason: str) -> None:
        """Refuse requests from now on; fail those held behind their sequence's (``ModelNotReady``, ``reason``) and
        release every state. Requests running finish in the model's batcher."""
        self._closed = reason
        for sequence in self._live.values():
            if sequence.timer is not None:
                sequence.timer.cancel()
            for request in sequence.waiting:
                if not request.future.done():
                    request.future.set_exception(ModelNotReady(f"{self.name} is not accepting requests: {reason}"))
            sequence.waiting.clear()
        if self.observer is not None:
            for sequence_id in self._live:
                self.observer.released(sequence_id)
        self._live.clear()
        self._check_none_live()


def _cancel_with(run: "asyncio.Future[Any]", caller: "asyncio.Future[Any]") -> None:
    """A caller that cancels while its request runs cancels the run (the model's batcher drops it if it can)."""
    if caller.cancelled():
        run.cancel()
