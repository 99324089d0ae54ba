"""The in-process bus: async pub/sub on typed topics plus request/reply, inside one daemon.

A topic is a message class (exact type, no inheritance). Each subscription owns a bounded
asyncio.Queue and one worker task that calls its handler in publish order; a failing handler is
logged with its context and never stops the bus or other subscribers.

Overflow policy, chosen per subscription (what happens when its queue is full):

    BLOCK        publish() waits for room; offer() refuses. Never loses a message.
                 Use for order events, fills, decisions: those are never dropped.
    REJECT       publish() raises BusOverloaded; offer() returns False. Either way the message
                 is delivered to NOBODY (checked before any queue is touched). Use for intake:
                 the MQTT bridge offers each TradeProposal and, when refused, answers the agent
                 with a typed `rejected` decision (DenialCode.OVERLOADED) — never silence.
    DROP_OLDEST  the oldest queued message is dropped (and logged, and counted) to make room.
                 Use only where the latest value supersedes older ones: portfolio snapshots.

Batches: `subscribe_batch()` hands its handler every message already queued (up to `batch_max`,
in publish order) in one call, so per-message costs a handler can share (one journal commit for
many decisions) are paid once per burst. A message alone is handed over alone, at once.

Lifecycle: UNOPENED -start()-> OPEN -close()-> CLOSED. Subscribing and publishing before
start() is allowed (messages wait in the queues); after close() they raise LifecycleError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import structlog

from bracketgate.bus.errors import (
    BusOverloaded,
    DrainTimeout,
    LifecycleError,
    NoSuchService,
    RequestTimeout,
    ServiceAlreadyServed,
)
from bracketgate.bus.messages import Message
from bracketgate.core.clock import SYSTEM_CLOCK, Clock
from bracketgate.core.logs import get_logger

log = get_logger("bracketgate.bus")
_bind = structlog.contextvars.bind_contextvars
_reset = structlog.contextvars.reset_contextvars

M = TypeVar("M", bound=Message)


class Overflow(StrEnum):
    BLOCK = "block"
    REJECT = "reject"
    DROP_OLDEST = "drop_oldest"


class BusState(StrEnum):
    UNOPENED = "UNOPENED"
    OPEN = "OPEN"
    CLOSED = "CLOSED"


# message class -> the attributes message_context reads, in order (a pydantic model's missing
# attribute costs an AttributeError raised and caught per message: asked once per class)
_CONTEXT_ATTRS: dict[type, tuple[str, ...]] = {}
_CONTEXT_KEYS = ("proposal_id", "agent_id")


def _context_attrs(cls: type) -> tuple[str, ...] | None:
    attrs = _CONTEXT_ATTRS.get(cls)
    if attrs is None:
        fields = getattr(cls, "model_fields", None)
        if not isinstance(fields, dict) or getattr(cls, "__getattr__", None) is not \
                getattr(Message, "__getattr__", None):
            return None   # not a plain model: looked up the long way
        attrs = _CONTEXT_ATTRS[cls] = tuple(k for k in (*_CONTEXT_KEYS, "proposal")
                                            if k in fields
                                            or isinstance(getattr(cls, k, None), property))
    return attrs


def message_context(msg: Any) -> dict[str, Any]:
    """The ids that identify a message's unit of work: proposal_id / agent_id, if it has them."""
    ctx: dict[str, Any] = {}
    attrs = _context_attrs(type(msg))
    if attrs is not None:
        for key in attrs:
            if key == "proposal":
                inner = msg.proposal
                if inner is not None:
                    for k in _CONTEXT_KEYS:
                        value = getattr(inner, k, None)
                        if value is not None and k not in ctx:
                            ctx[k] = value
                continue
            value = getattr(msg, key)
            if value is not None:
                ctx[key] = value
        return ctx
    for source in (msg, getattr(msg, "proposal", None)):
        if source is None:
            continue
        for key in ("proposal_id", "agent_id"):
            value = getattr(source, key, None)
            if value is not None and key not in ctx:
                ctx[key] = value
    return ctx


@dataclass(eq=False)
class Subscription(Generic[M]):
    """One subscriber of one topic: its queue, worker and counters."""

    topic: type[M]
    handler: Callable[[M], Awaitable[None]]
    name: str
    maxsize: int
    overflow: Overflow
    queue: asyncio.Queue[M] = field(repr=False)
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    rejected: int = 0
    max_handler_s: float = 0.0
    worker: asyncio.Task[None] | None = field(default=None, repr=False)
    active: bool = True
    batch_max: int = 0   # > 0: `handler` takes a list of up to batch_max messages (subscribe_batch)
    overlap: int = 1     # batches whose handler runs at once (subscribe_batch), started in order
    # set by the worker each time it takes a message off the queue (wait_for_room)
    freed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def key(self) -> str:
        """`name:Topic` — unique per bus, the key of `Bus.stats()`."""
        return f"{self.name}:{self.topic.__name__}"

    @property
    def full(self) -> bool:
        return self.queue.full()


class Bus:
    """In-process pub/sub on typed topics + request/reply. See the module docstring."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, default_maxsize: int = 10_000) -> None:
        if default_maxsize < 1:
            raise ValueError("default_maxsize must be >= 1")
        self._clock = clock
        self._default_maxsize = default_maxsize
        self._state = BusState.UNOPENED
        # topic class -> its subscriptions, in subscription order
        self._subs: dict[type[Message], list[Subscription[Any]]] = {}
        # service name -> handler
        self._services: dict[str, Callable[[Any], Awaitable[Any]]] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> BusState:
        return self._state

    async def start(self) -> None:
        if self._state is not BusState.UNOPENED:
            raise LifecycleError("bus", self._state, "start")
        self._state = BusState.OPEN
        for sub in self._all_subs():
            self._start_worker(sub)
        log.info("bus_started", subscriptions=len(self._all_subs()), services=len(self._services))

    async def drain(self, timeout: float) -> None:
        """Wait until every queue is empty and every handler has returned."""
        if self._state is not BusState.OPEN:
            raise LifecycleError("bus", self._state, "drain")
        subs = [s for s in self._all_subs() if s.active]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(s.queue.join() for s in subs))
        except TimeoutError:
            pending = {s.key: s.queue.qsize() for s in subs}
            raise DrainTimeout(timeout, pending) from None

    async def close(self) -> None:
        """Stop every worker. Queued, undelivered messages are logged and discarded.

        Closing a CLOSED bus is a no-op (shutdown paths may close twice).
        """
        if self._state is BusState.CLOSED:
            return
        self._state = BusState.CLOSED
        workers = [s.worker for s in self._all_subs() if s.worker is not None]
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for sub in self._all_subs():
            if sub.queue.qsize():
                log.warning("bus_closed_undelivered", subscription=sub.name,
                            topic=sub.topic.__name__, undelivered=sub.queue.qsize())
        log.info("bus_closed")

    # ------------------------------------------------------------------ pub/sub

    def subscribe(
        self,
        topic: type[M],
        handler: Callable[[M], Awaitable[None]],
        *,
        name: str,
        maxsize: int | None = None,
        overflow: Overflow = Overflow.BLOCK,
    ) -> Subscription[M]:
        if self._state is BusState.CLOSED:
            raise LifecycleError("bus", self._state, "subscribe")
        if not (isinstance(topic, type) and issubclass(topic, Message)):
            raise TypeError(f"topic must be a Message subclass, got {topic!r}")
        size = self._default_maxsize if maxsize is None else maxsize
        if size < 1:
            raise ValueError("maxsize must be >= 1")
        subs = self._subs.setdefault(topic, [])
        if any(s.name == name for s in subs):
            raise ValueError(f"subscription {name!r} to {topic.__name__} already exists")
        sub: Subscription[M] = Subscription(
            topic=topic, handler=handler, name=name, maxsize=size, overflow=Overflow(overflow),
            queue=asyncio.Queue(maxsize=size),
        )
        subs.append(sub)
        if self._state is BusState.OPEN:
            self._start_worker(sub)
        return sub

    def subscribe_batch(
        self,
        topic: type[M],
        handler: Callable[[list[M]], Awaitable[None]],
        *,
        name: str,
        batch_max: int = 256,
        maxsize: int | None = None,
        overflow: Overflow = Overflow.BLOCK,
        overlap: int = 1,
    ) -> Subscription[M]:
        """Like subscribe(), but `handler` gets what is queued (1 to batch_max messages, in
        order) in one call. Its context (proposal_id, agent_id) is the handler's to bind.
        `overlap` > 1: up to that many calls run at once, each started (in order) while the
        ones before it still await (the MQTT bridge journals the next decisions while the last
        ones commit); keeping their effects in order is then the handler's job. drain() and a
        queue's join() still wait for every call to return."""
        if batch_max < 1:
            raise ValueError("batch_max must be >= 1")
        if overlap < 1:
            raise ValueError("overlap must be >= 1")
        sub = self.subscribe(topic, handler, name=name, maxsize=maxsize,  # type: ignore[arg-type]
                             overflow=overflow)
        sub.batch_max = batch_max
        sub.overlap = overlap
        return sub

    async def unsubscribe(self, sub: Subscription[Any]) -> None:
        """Remove a subscription and stop its worker (undelivered messages are discarded)."""
        sub.active = False
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)
        if sub.worker is not None:
            sub.worker.cancel()
            await asyncio.gather(sub.worker, return_exceptions=True)

    async def publish(self, msg: Message) -> None:
        """Deliver to every subscriber of type(msg). BLOCK waits, REJECT raises, DROP_OLDEST drops."""
        subs = self._targets(msg, "publish")
        for sub in subs:
            if sub.overflow is Overflow.REJECT and sub.full:
                sub.rejected += 1
                raise BusOverloaded(sub.topic.__name__, sub.name, sub.maxsize)
        for sub in subs:
            if sub.overflow is Overflow.BLOCK:
                await sub.queue.put(msg)
            else:
                self._put_nowait(sub, msg)

    def offer(self, msg: Message) -> bool:
        """Deliver without waiting, all or nothing.

        False (delivered to nobody) if any REJECT- or BLOCK-policy subscriber's queue is full:
        a BLOCK subscriber never loses a message, and offer() never waits.
        """
        subs = self._targets(msg, "offer")
        refused = [s for s in subs if s.overflow is not Overflow.DROP_OLDEST and s.full]
        if refused:
            for sub in refused:
                sub.rejected += 1
            log.warning("bus_offer_refused", topic=type(msg).__name__,
                        subscriptions=[s.name for s in refused], **message_context(msg))
            return False
        for sub in subs:
            self._put_nowait(sub, msg)
        return True

    async def wait_for_room(self, topic: type[Message], timeout: float) -> bool:
        """Wait (at most `timeout` s) until offer() of a `topic` message would find room in
        every REJECT and BLOCK queue; True if it would now. For a producer that can hold back
        (the MQTT bridge: the broker keeps what it has not acknowledged) rather than refuse."""
        subs = [s for s in self._subs.get(topic, ()) if s.overflow is not Overflow.DROP_OLDEST]
        if not any(s.full and s.active for s in subs):
            return True   # the common case: room now, no timeout to arm
        try:
            async with asyncio.timeout(timeout):
                for sub in subs:
                    while sub.full and sub.active:
                        sub.freed.clear()
                        await sub.freed.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ request/reply

    def serve(self, service: str, handler: Callable[[Any], Awaitable[Any]]) -> None:
        if self._state is BusState.CLOSED:
            raise LifecycleError("bus", self._state, "serve")
        if service in self._services:
            raise ServiceAlreadyServed(service)
        self._services[service] = handler

    def has_service(self, service: str) -> bool:
        return service in self._services

    async def request(self, service: str, payload: Any, *, timeout: float) -> Any:
        """Call the service's handler; its exception is re-raised here, its result returned."""
        if self._state is BusState.CLOSED:
            raise LifecycleError("bus", self._state, "request")
        handler = self._services.get(service)
        if handler is None:
            raise NoSuchService(service)
        try:
            async with asyncio.timeout(timeout):
                return await handler(payload)
        except TimeoutError:
            log.warning("bus_request_timeout", service=service, timeout=timeout,
                        **message_context(payload))
            raise RequestTimeout(service, timeout) from None

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per subscription (`name:Topic`): queued, delivered, failed, dropped, rejected, ..."""
        return {
            s.key: {
                "topic": s.topic.__name__,
                "name": s.name,
                "overflow": str(s.overflow),
                "maxsize": s.maxsize,
                "queued": s.queue.qsize(),
                "delivered": s.delivered,
                "failed": s.failed,
                "dropped": s.dropped,
                "rejected": s.rejected,
                "max_handler_s": round(s.max_handler_s, 6),
            }
            for s in self._all_subs()
        }

    # ------------------------------------------------------------------ internals

    def _all_subs(self) -> list[Subscription[Any]]:
        return [s for subs in self._subs.values() for s in subs]

    def _targets(self, msg: Message, action: str) -> list[Subscription[Any]]:
        if self._state is BusState.CLOSED:
            raise LifecycleError("bus", self._state, action)
        if not isinstance(msg, Message):
            raise TypeError(f"bus messages are Message instances, got {type(msg).__name__}")
        return list(self._subs.get(type(msg), ()))

    def _put_nowait(self, sub: Subscription[Any], msg: Message) -> None:
        if sub.full and sub.overflow is Overflow.DROP_OLDEST:
            old = sub.queue.get_nowait()
            sub.queue.task_done()
            sub.dropped += 1
            # the policy was chosen for this: warn on the first drop and every 1000th, else debug
            emit = log.warning if sub.dropped == 1 or sub.dropped % 1000 == 0 else log.debug
            emit("bus_dropped_oldest", subscription=sub.name, topic=sub.topic.__name__,
                 dropped=sub.dropped, **message_context(old))
        sub.queue.put_nowait(msg)

    def _start_worker(self, sub: Subscription[Any]) -> None:
        sub.worker = asyncio.create_task(self._work(sub), name=f"bus:{sub.key}")

    async def _work(self, sub: Subscription[Any]) -> None:
        if sub.batch_max:
            await self._work_batches(sub)
            return
        topic = sub.topic.__name__
        while True:
            msg = await sub.queue.get()
            sub.freed.set()
            ctx = message_context(msg)
            started = self._clock.monotonic()
            try:
                # bound for the handler, then reset (what bound_contextvars does, without its
                # generator and its two copies of the whole context per message)
                tokens = _bind(**ctx)
                try:
                    await sub.handler(msg)
                finally:
                    _reset(**tokens)
                sub.delivered += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                sub.failed += 1
                log.exception("bus_handler_failed", topic=topic, subscription=sub.name, **ctx)
            finally:
                sub.max_handler_s = max(sub.max_handler_s, self._clock.monotonic() - started)
                sub.queue.task_done()

    async def _work_batches(self, sub: Subscription[Any]) -> None:
        if sub.overlap > 1:
            await self._work_overlapped(sub)
            return
        topic = sub.topic.__name__
        queue = sub.queue
        while True:
            batch = [await queue.get()]
            while len(batch) < sub.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            sub.freed.set()
            await self._handle_batch(sub, topic, batch)

    async def _handle_batch(self, sub: Subscription[Any], topic: str, batch: list[Any]) -> None:
        """One handler call on a batch: counted, a failure logged (never raised), its
        messages done once it returns."""
        started = self._clock.monotonic()
        try:
            await sub.handler(batch)
            sub.delivered += len(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            sub.failed += len(batch)
            log.exception("bus_handler_failed", topic=topic, subscription=sub.name,
                          messages=len(batch), **message_context(batch[0]))
        finally:
            sub.max_handler_s = max(sub.max_handler_s, self._clock.monotonic() - started)
            for _ in batch:
                sub.queue.task_done()

    async def _work_overlapped(self, sub: Subscription[Any]) -> None:
        """_work_batches with up to `sub.overlap` handler calls in flight: a batch is taken
        as soon as there is room for its call, and its messages are done once it returns."""
        topic = sub.topic.__name__
        queue = sub.queue
        room = asyncio.Semaphore(sub.overlap)
        running: set[asyncio.Task[None]] = set()

        async def call(batch: list[Any]) -> None:
            try:
                await self._handle_batch(sub, topic, batch)
            finally:
                room.release()

        try:
            while True:
                await room.acquire()
                batch = [await queue.get()]
                while len(batch) < sub.batch_max and not queue.empty():
                    batch.append(queue.get_nowait())
                sub.freed.set()
                task = asyncio.get_running_loop().create_task(call(batch), name=f"bus:{sub.key}")
                running.add(task)
                task.add_done_callback(running.discard)
        finally:   # close() / unsubscribe(): the calls in flight end with the worker
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
