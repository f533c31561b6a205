"""gRPC to a Triton server: asynchronous requests, answered in order, a bounded number at once."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

T = TypeVar("T")


class ClientError(RuntimeError):
    """The server cannot be reached or refused a request; the message is for the user."""


def text_column(strings: list[str]) -> np.ndarray:
    """A [n, 1] BYTES tensor, the shape every served model takes text in."""
    return np.array(strings, dtype=object).reshape(-1, 1)


class Connection:
    """One model on one server; `submit` returns a Future of the named outputs."""

    def __init__(self, url: str, model: str, timeout: float = 600.0):
        self.url = url
        self.model = model
        self.timeout = timeout
        self.client = grpcclient.InferenceServerClient(url)
        try:
            ready = self.client.is_server_ready() and self.client.is_model_ready(model)
        except InferenceServerException as error:
            raise ClientError(f"cannot reach a Triton server at {url}: {error.message()}") from None
        if not ready:
            raise ClientError(f"the server at {url} has no ready '{model}' model")

    def submit(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> Future:
        future: Future = Future()
        infer_inputs = []
        for name, array in inputs.items():
            dtype = np_to_triton_dtype(array.dtype)
            infer_input = grpcclient.InferInput(name, list(array.shape), dtype)
            infer_input.set_data_from_numpy(array)
            infer_inputs.append(infer_input)

        def done(result, error) -> None:  # tritonclient calls back with these keyword names
            if error is not None:
                future.set_exception(ClientError(f"{self.url} {self.model}: {error.message()}"))
            else:
                future.set_result({name: result.as_numpy(name) for name in outputs})

        self.client.async_infer(
            self.model,
            infer_inputs,
            callback=done,
            outputs=[grpcclient.InferRequestedOutput(name) for name in outputs],
            client_timeout=self.timeout,
        )
        return future

    def close(self) -> None:
        self.client.close()


def in_order(
    jobs: Iterable[tuple[T, Callable[[], Future] | None]], max_in_flight: int
) -> Iterator[tuple[T, dict[str, np.ndarray] | None]]:
    """Start each job's request, keep at most `max_in_flight` unanswered, yield in input order.

    A job without a request (None) is yielded in its place with None, so items that need no
    server work (an empty record) keep their position in the output.
    """
    pending: deque[tuple[T, Future | None]] = deque()
    try:
        for item, start in jobs:
            while len(pending) >= max_in_flight:
                done_item, future = pending.popleft()
                yield done_item, future.result() if future else None
            pending.append((item, start() if start else None))
        while pending:
            done_item, future = pending.popleft()
            yield done_item, future.result() if future else None
    finally:
        for _, future in pending:
            if future:
                future.cancel()
