"""Planning for several robots at once, independent of the transport.

`PlanService.submit(session, request)` returns a `concurrent.futures.Future` of the reply dict. One
worker thread owns the runtimes: it takes the first waiting request, waits up to `batch_window_ms`
for others (from other sessions), encodes every new image of the batch in one encoder call and plans
all of them with `plan_many` (every CEM step one batch over all robots' samples). A request whose
future was cancelled before its batch started (its client left) is dropped. numpy only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..encoder.preprocess import preprocess
from ..errors import VitacError
from ..planning.cem import ActionSpace, CEMOptions, PlanRequest, plan_many
from .protocol import Request, RequestError, ServeOptions, elite_energy, metadata, parse_request

log = logging.getLogger("vitac_deploy.serving")


@dataclass
class Session:
    """One robot's connection: its goal (image and features), cached until the image changes."""

    id: int
    goal_image: Optional[np.ndarray] = None
    goal_features: Optional[np.ndarray] = None     # [1, N, D]
    requests: int = 0


@dataclass
class _Item:
    session: Session
    request: Request
    future: concurrent.futures.Future
    arrived: float = field(default_factory=time.perf_counter)


class PlanService:
    """The model behind the server: runtime + encoder + CEM options, and the batching worker."""

    def __init__(self, runtime: Any, encoder: Any, cem: Optional[CEMOptions] = None,
                 options: Optional[ServeOptions] = None, space: Optional[ActionSpace] = None,
                 batch_robots: Optional[int] = None) -> None:
        """`batch_robots`: robots planned together at most (default options.max_robots; 1 with a
        window of 0 serves one request at a time, the benchmark's baseline)."""
        self.runtime, self.encoder = runtime, encoder
        self.cem = cem or CEMOptions()
        self.cem.check()
        self.options = options or ServeOptions()
        self.options.check()
        self.space = space
        self.batch_robots = batch_robots or self.options.max_robots
        self.connected = 0   # robots connected (the transport keeps it): no need to wait for more than these
        cfg = runtime.cfg
        if (encoder.cfg.embed_dim, encoder.cfg.tokens_per_frame) != (cfg.embed_dim, cfg.tokens_per_frame):
            raise VitacError(f"the encoder gives {encoder.cfg.tokens_per_frame} x {encoder.cfg.embed_dim} features; "
                             f"the predictor takes {cfg.tokens_per_frame} x {cfg.embed_dim}")
        self.metadata = metadata(runtime, encoder, self.cem, self.options)
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._next_id = 0
        self._plan_lock = threading.Lock()   # one batch on the runtimes at a time (worker or plan_now)
        self.batches: list = []          # sizes of the batches planned (for tests and benchmarks; bounded)
        self._worker = threading.Thread(target=self._run, name="vitac-plan-worker", daemon=True)
        self._worker.start()

    # -- the transport's side -------------------------------------------------------------------------
    def new_session(self) -> Session:
        with self._cond:
            self._next_id += 1
            return Session(self._next_id)

    def submit(self, session: Session, request: Request) -> concurrent.futures.Future:
        """Queue a checked request; its future gets the reply dict, or RequestError (one line)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closing:
                raise RequestError("the server is shutting down")
            self._queue.append(_Item(session, request, fut))
            self._cond.notify_all()
        return fut

    def parse(self, message: Any) -> Request:
        """One frame from the wire -> a checked Request; WireError or RequestError (one line, the
        error frame's text) otherwise. Shared by every transport."""
        from ..client.msgpack_numpy import unpackb   # msgpack: the serve extra

        if isinstance(message, str):
            raise RequestError("text frames are not requests: send a msgpack map in a binary frame")
        return parse_request(unpackb(message, self.options.max_message_bytes), self.options,
                             self.runtime.cfg.action_dim)

    def plan_now(self, pairs: list) -> list:
        """Plan these (session, request) pairs as one batch in the calling thread, for a transport
        that gathers the batch itself (Ray Serve's `@serve.batch`); the worker is then idle. Returns
        one done Future per pair (its reply dict or RequestError), exactly what `submit` would give."""
        items = [_Item(ses, req, concurrent.futures.Future()) for ses, req in pairs]
        for it in items:
            it.future.set_running_or_notify_cancel()
        with self._plan_lock:
            try:
                self._plan(items)
            except Exception:  # noqa: BLE001 - as the worker: one bad batch answers with an error
                log.exception("batch of %d failed", len(items))
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(RequestError("internal error while planning (see the server's log)"))
        return [it.future for it in items]

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- the worker -----------------------------------------------------------------------------------
    def _take_batch(self) -> Optional[list]:
        window = self.options.batch_window_ms / 1e3
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = self._queue[0].arrived + window
            wanted = min(self.batch_robots, self.connected) if self.connected > 0 else self.batch_robots
            while len(self._queue) < wanted and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, seen, rest = [], set(), collections.deque()
            while self._queue and len(batch) < self.batch_robots:
                item = self._queue.popleft()
                if item.session.id in seen:   # a session's requests are planned in order, one per batch
                    rest.append(item)
                else:
                    seen.add(item.session.id)
                    batch.append(item)
            self._queue.extendleft(reversed(rest))
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]   # dropped: clients gone
            if not live:
                continue
            try:
                with self._plan_lock:
                    self._plan(live)
            except Exception:  # noqa: BLE001 - the worker must outlive any one batch
                log.exception("batch of %d failed", len(live))
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(RequestError("internal error while planning (see the server's log)"))

    def _encode(self, images: list) -> tuple:
        """Every image of the batch in one encoder call (each preprocessed at its own size, as
        `encode` does): [M, 1, N, D]."""
        S = self.encoder.cfg.img_size
        pixels = np.concatenate([preprocess(im[None, None], S)[:, :, 0] for im in images])   # [M, 3, S, S]
        feats = self.encoder.encode_pixels(pixels)
        return feats.reshape(len(images), 1, self.encoder.cfg.tokens_per_frame, -1)

    def _plan(self, items: list) -> None:
        t0 = time.perf_counter()
        images, slots = [], []
        ready = []
        for it in items:
            req, ses = it.request, it.session
            same_goal = req.goal is not None and ses.goal_image is not None and \
                ses.goal_image.shape == req.goal.shape and np.array_equal(ses.goal_image, req.goal)
            if req.goal is None and ses.goal_features is None:
                it.future.set_exception(RequestError(f"no goal yet on this connection: send "
                                                     f"{self.options.goal_key!r} with the first request"))
                continue
            cur, goal_slot = len(images), None
            images.append(req.image)
            if req.goal is not None and not same_goal:   # goal features computed again only when it changes
                goal_slot = len(images)
                images.append(req.goal)
            slots.append((cur, goal_slot))
            ready.append(it)
        if not ready:
            return
        feats = self._encode(images)
        t_enc = time.perf_counter()
        reqs = []
        for it, (cur, goal_slot) in zip(ready, slots):
            if goal_slot is not None:
                it.session.goal_image = np.array(it.request.goal)   # a copy: the message buffer goes away
                it.session.goal_features = feats[goal_slot]
            seed = it.request.seed if it.request.seed is not None else secrets.randbits(63)
            reqs.append(PlanRequest(feats[cur], it.session.goal_features, it.request.pose, seed=seed))
        try:
            results = plan_many(self.runtime, reqs, self.cem, self.space)
        except VitacError:   # one robot's problem must not fail the others: each alone, with its own error
            results = []
            for r in reqs:
                try:
                    results.append(plan_many(self.runtime, [r], self.cem, self.space)[0])
                except VitacError as e:
                    results.append(e)
        t_plan = time.perf_counter()
        if len(self.batches) < 10_000:
            self.batches.append(len(ready))
        for it, req, res in zip(ready, reqs, results):
            it.session.requests += 1
            if isinstance(res, Exception):
                it.future.set_exception(RequestError(str(res)))
                continue
            it.future.set_result({
                "actions": res.actions.astype(np.float32),
                "seed": int(req.seed),
                "energies": elite_energy(res.energies, self.cem.topk),
                "server_timing": {"infer_ms": (t_plan - it.arrived) * 1e3, "encode_ms": (t_enc - t0) * 1e3,
                                  "plan_ms": (t_plan - t_enc) * 1e3, "queue_ms": (t0 - it.arrived) * 1e3,
                                  "batch": len(ready)},
            })
