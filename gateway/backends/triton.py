"""Scoring on a Triton Inference Server through tritonclient's async clients (gRPC or HTTP/KServe v2).

The only module that imports `tritonclient`: every failure (unreachable, not ready, timeout, server error,
a served model that does not match our tokenizer) leaves it as `BackendFailed`, which the fallback
composition turns into local scoring. The first call checks the served model's metadata and config against
the tokenizer's inputs and learns `max_batch_size`; larger batches are split and sent concurrently, so
Triton's dynamic batcher can put them back together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway import metrics
from gateway.backends.base import BatchScores, EncodedBatch, cancelled_by_caller
from gateway.endpoints import strip_scheme
from gateway.errors import BackendFailed

log = logging.getLogger(__name__)

Protocol = Literal["grpc", "http"]


def _record(protocol: str, outcome: str, model: str) -> None:
    metrics.SCORER_CALLS.labels(f"triton-{protocol}", protocol, outcome, model).inc()


class TritonFailed(BackendFailed):
    """A Triton call failed; `reason` (unavailable, timeout, error, mismatch) labels the fallback metric."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


@dataclass
class _Connection:
    """A client bound to one event loop (grpc.aio channels and aiohttp sessions cannot change loops).

    `users` counts the calls in flight on it. A failed connection is retired: new calls get a fresh one,
    and the old client is closed only when its last call has ended, because closing a gRPC channel cancels
    every call still running on it, calls that may yet succeed or be served by the fallback.
    """

    loop: asyncio.AbstractEventLoop
    client: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    checked: bool = False
    users: int = 0
    retired: bool = False


class _Clients:
    """The scorer's current connection (one per event loop), retired after a failure, closed when unused."""

    def __init__(self, new_client: Callable[[], Any]) -> None:
        self._new_client = new_client
        self._connection: _Connection | None = None

    def _current(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._connection is None or self._connection.loop is not loop:
            # A connection made on another (finished) loop cannot be closed from here; drop it.
            self._connection = _Connection(loop=loop, client=self._new_client())
        return self._connection

    def retire(self, connection: _Connection) -> None:
        """Forget a client after a failure: the next call opens a fresh channel, which reconnects at once
        instead of backing off; the old one closes when its last call ends (`use`)."""
        if self._connection is connection:
            self._connection = None
        connection.retired = True

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[_Connection]:
        connection = self._current()
        connection.users += 1
        try:
            yield connection
        finally:
            connection.users -= 1
            if connection.retired and connection.users == 0:
                await _close_client(connection)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.loop is asyncio.get_running_loop():
            connection.retired = True
            if connection.users == 0:
                await _close_client(connection)


async def _close_client(connection: _Connection) -> None:
    try:
        await asyncio.wait_for(connection.client.close(), timeout=2.0)
    except Exception:  # closing a broken client may fail in many ways; it is gone either way
        log.debug("closing the Triton client failed", exc_info=True)


class TritonScorer:
    """A `Scorer` for one model served by Triton."""

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        model_name: str = "reranker",
        input_names: tuple[str, ...] | list[str] = ("input_ids", "attention_mask", "token_type_ids"),
        timeout_s: float = 10.0,
        *,
        output_name: str = "logits",
        model_version: str = "",
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.url = strip_scheme(url)
        self.protocol: Protocol = protocol
        self.model_name = model_name
        self.model_version = model_version
        self.input_names = tuple(input_names)
        self.output_name = output_name
        self.timeout_s = float(timeout_s)
        self.name = f"triton-{protocol}"
        # Learned from the served model's config on first connect (None until then).
        self.max_batch_size: int | None = None
        self._clients = _Clients(lambda: self._new_client())  # late-bound: tests replace _new_client

    def __repr__(self) -> str:
        return f"TritonScorer({self.protocol}://{self.url}, model={self.model_name!r})"

    # --- connection -------------------------------------------------------------------------------
    def _new_client(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpc_aio

            return grpc_aio.InferenceServerClient(self.url)
        import tritonclient.http.aio as http_aio

        return http_aio.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    async def _call(self, awaitable: Any, what: str) -> Any:
        """Await one tritonclient call within the timeout, translating every failure to BackendFailed."""
        try:
            return await asyncio.wait_for(awaitable, timeout=self.timeout_s)
        except asyncio.TimeoutError:
            raise _Failure("timeout", f"{self.name} {what} timed out after {self.timeout_s:g}s") from None
        except asyncio.CancelledError:
            if cancelled_by_caller():
                raise
            # The client library cancelled the call under us (its channel was closed): a backend failure.
            raise _Failure("unavailable", f"{self.name} {what} was cancelled by the client library") from None
        except Exception as exc:  # tritonclient, grpc and aiohttp errors: none may leave this module
            detail = _describe(exc)
            outcome = "unavailable" if _looks_unreachable(exc, detail) else "error"
            raise _Failure(outcome, f"{self.name} {what} failed at {self.url}: {detail}") from None

    # --- metadata ---------------------------------------------------------------------------------
    async def _check_model(self, connection: _Connection) -> None:
        client = connection.client
        if self.protocol == "grpc":
            metadata = await self._call(
                client.get_model_metadata(self.model_name, self.model_version, as_json=True), "metadata"
            )
            config = (
                await self._call(
                    client.get_model_config(self.model_name, self.model_version, as_json=True), "config"
                )
            ).get("config", {})
        else:
            metadata = await self._call(
                client.get_model_metadata(self.model_name, self.model_version), "metadata"
            )
            config = await self._call(client.get_model_config(self.model_name, self.model_version), "config")

        served = {tensor["name"]: tensor.get("datatype") for tensor in metadata.get("inputs", [])}
        problems = []
        if set(served) != set(self.input_names):
            problems.append(f"inputs {sorted(served)} != tokenizer inputs {sorted(self.input_names)}")
        wrong_types = sorted(
            name for name, dtype in served.items() if name in self.input_names and dtype != "INT64"
        )
        if wrong_types:
            problems.append(f"inputs {wrong_types} are not INT64")
        outputs = {tensor["name"]: tensor.get("datatype") for tensor in metadata.get("outputs", [])}
        if outputs.get(self.output_name) != "FP32":
            problems.append(f"no FP32 output {self.output_name!r} (outputs: {outputs})")
        max_batch_size = int(config.get("max_batch_size", 0) or 0)
        if max_batch_size <= 0:
            problems.append("max_batch_size is 0: the model must accept a batch dimension")
        if problems:
            raise _Failure(
                "mismatch", f"{self.name} model {self.model_name!r} does not match: " + "; ".join(problems)
            )
        self.max_batch_size = max_batch_size
        connection.checked = True
        log.info(
            "Triton model %r at %s (%s): max_batch_size %d",
            self.model_name,
            self.url,
            self.protocol,
            max_batch_size,
        )

    # --- Scorer -----------------------------------------------------------------------------------
    async def score(self, batch: EncodedBatch) -> BatchScores:
        missing = [name for name in self.input_names if name not in batch.inputs]
        if missing:
            raise BackendFailed(f"{self.name}: batch lacks inputs {missing}")
        async with self._clients.use() as connection:
            try:
                if not connection.checked:
                    async with connection.lock:
                        if not connection.checked:
                            await self._check_model(connection)
                assert self.max_batch_size is not None
                step = self.max_batch_size
                parts = [
                    {name: np.ascontiguousarray(batch.inputs[name][start : start + step], dtype=np.int64) for name in self.input_names}
                    for start in range(0, batch.size, step)
                ]  # fmt: skip
                results = await asyncio.gather(*(self._infer(connection, part) for part in parts))
            except _Failure as failure:
                _record(self.protocol, failure.outcome, self.model_name)
                if failure.outcome in ("unavailable", "timeout"):
                    self._clients.retire(connection)
                raise TritonFailed(failure.message, reason=failure.outcome) from None
        logits = np.concatenate(results).astype(np.float32, copy=False)
        if logits.shape != (batch.size,):
            _record(self.protocol, "error", self.model_name)
            raise TritonFailed(
                reason="error", message=f"{self.name}: expected {batch.size} logits, got shape {logits.shape}"
            )
        _record(self.protocol, "ok", self.model_name)
        return BatchScores(logits=logits, backend=self.name)

    async def _infer(self, connection: _Connection, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [module.InferRequestedOutput(self.output_name)]
        if self.protocol == "grpc":
            call = connection.client.infer(
                self.model_name,
                tensors,
                model_version=self.model_version,
                outputs=outputs,
                client_timeout=self.timeout_s,
            )
        else:
            call = connection.client.infer(
                self.model_name, tensors, model_version=self.model_version, outputs=outputs
            )
        result = await self._call(call, "inference")
        array = result.as_numpy(self.output_name)
        rows = next(iter(inputs.values())).shape[0]
        if array is None or array.size != rows:
            raise _Failure(
                "error",
                f"{self.name}: output {self.output_name!r} has {0 if array is None else array.size} values for {rows} rows",
            )
        return np.asarray(array, dtype=np.float32).reshape(rows)

    async def ready(self) -> bool:
        """True when the server and the model answer ready and the model matches the tokenizer; never raises."""
        async with self._clients.use() as connection:
            try:
                server_ready = await self._call(connection.client.is_server_ready(), "server readiness")
                model_ready = server_ready and await self._call(
                    connection.client.is_model_ready(self.model_name, self.model_version), "model readiness"
                )
                if model_ready and not connection.checked:
                    async with connection.lock:
                        if not connection.checked:
                            await self._check_model(connection)
            except _Failure as failure:
                log.debug("Triton not ready: %s", failure.message)
                if failure.outcome != "mismatch":
                    self._clients.retire(connection)
                return False
        return bool(model_ready)

    async def close(self) -> None:
        await self._clients.close()


class _Failure(Exception):
    """Internal: a failed call with its metrics outcome; `score` re-raises it as BackendFailed."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    text = " ".join(str(text).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _looks_unreachable(exc: BaseException, detail: str) -> bool:
    if isinstance(exc, (ConnectionError, OSError)):
        return True
    lowered = detail.lower()
    return any(
        marker in lowered
        for marker in (
            "unavailable",
            "connect",
            "connection refused",
            "failed to connect",
            "not ready",
            "deadline",
        )
    )
