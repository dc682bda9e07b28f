"""`Client` and `AsyncClient`: the same methods, the same requests and the
same typed results (built in `_wire`); one blocks, the other awaits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from vlmnode import _wire
from vlmnode._connection import DEFAULT_TIMEOUT, Connection, retry_wait
from vlmnode._errors import VlmNodeError, error_from_rpc
from vlmnode._types import AnswerChunk, Job, Notice
from vlmnode._wire import FrameLike, FrameSource
from vlmnode.v1 import inference_pb2, inference_pb2_grpc, jobs_pb2_grpc

Result = TypeVar("Result")


class _BaseClient:
    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        """Connects to the node at `target` ("host:port"; default: the
        VLMNODE_TARGET variable, else localhost:50051; an "https://" prefix
        means TLS).

        TLS is used when `tls` is set or certificates are given: `ca_file`
        (PEM path) or `root_certificates` (PEM bytes); the system's roots
        otherwise. `token` goes with every call as `authorization: Bearer
        <token>`. `timeout` is the default deadline in seconds of a single
        call (None: none); watching a job and streaming frames have none
        unless given one."""
        self._connection = Connection(
            target, token=token, tls=tls, ca_file=ca_file, root_certificates=root_certificates, timeout=timeout
        )
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    @property
    def target(self) -> str:
        return self._connection.target

    def _call_options(self, timeout: float | None, *, stream: bool = False) -> dict[str, Any]:
        default = None if stream else self._connection.timeout
        return {"timeout": timeout if timeout is not None else default, "metadata": self._connection.metadata}

    def _error(self, exc: grpc.RpcError, timeout: float | None, tries: int = 1) -> VlmNodeError:
        error = error_from_rpc(exc, self.target, timeout if timeout is not None else self._connection.timeout)
        if tries > 1:
            error = type(error)(f"{error.message} (tried {tries} times)", code=error.code, details=error.details)
        return error


class Client(_BaseClient):
    """A blocking client of a VLM Node.

        with Client("localhost:50051") as node:
            job = node.create_job("vlm_only", domain_id, input={"vlm_prompt": "Describe"})
            for job in node.watch_job(job.id):
                print(job.status)
            for item in node.infer("photos/", "What is on the shelf?"):
                if isinstance(item, AnswerChunk):
                    print(item.text, end="\n" if item.done else "", flush=True)
    """

    def _open(self) -> None:
        credentials, options = self._connection.credentials(), self._connection.options
        self._channel = (
            grpc.secure_channel(self.target, credentials, options=options)
            if credentials
            else grpc.insecure_channel(self.target, options=options)
        )
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(
        self, method: Callable[..., Result], request: Any, timeout: float | None, *, retried: bool = False
    ) -> Result:
        """One call; `retried`: a request safe to send again (see retry_wait)."""
        tries = 0
        while True:
            tries += 1
            try:
                return method(request, **self._call_options(timeout))
            except grpc.RpcError as exc:
                wait = retry_wait(tries, exc) if retried else None
                if wait is None:
                    raise self._error(exc, timeout, tries) from None
            time.sleep(wait)

    # Jobs.

    def create_job(
        self,
        job_type: str,
        domain_id: str,
        *,
        input: Mapping[str, Any],
        query: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        timeout: float | None = None,
    ) -> Job:
        """Queues a job ("task_timing_v1" or "vlm_only") over a domain's data.
        `query` defaults to {"ids": []}: all of the domain's images.

        Safe to repeat: the create carries `idempotency_key` (a new UUID when
        none is given), and the node answers a repeated key with the job the
        first create made. A try the node did not answer in `timeout`, or that
        did not reach it, is sent again with the same key (3 tries in all,
        `timeout` each). To retry a failed create yourself without risking a
        second job, pass your own key and the same key again."""
        request = _wire.create_job_request(job_type, domain_id, input, query, idempotency_key, priority, max_attempts)
        return _wire.job(self._unary(self._jobs.CreateJob, request, timeout, retried=True).job)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 0,
        offset: int = 0,
        timeout: float | None = None,
    ) -> list[Job]:
        """Jobs, newest first; `limit` 0 means the node's default (100)."""
        request = _wire.list_jobs_request(status, job_type, limit, offset)
        return [_wire.job(j) for j in self._unary(self._jobs.ListJobs, request, timeout).jobs]

    def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return _wire.job(self._unary(self._jobs.GetJob, _wire.get_job_request(job_id), timeout).job)

    def retry_job(
        self,
        job_id: str,
        input: Mapping[str, Any] | None = None,
        *,
        job_type: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Takes a finished job back to pending, with a new input if given
        (else its current one)."""
        if input is None or job_type is None:
            current = self.get_job(job_id, timeout=timeout)
            input, job_type = current.input if input is None else input, job_type or current.job_type
        request = _wire.retry_job_request(job_id, job_type, input)
        return _wire.job(self._unary(self._jobs.RetryJob, request, timeout).job)

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return _wire.job(self._unary(self._jobs.CancelJob, _wire.cancel_job_request(job_id), timeout).job)

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job now, then at every change of status; ends after a final
        status (completed, failed, cancelled)."""
        call = self._jobs.WatchJob(_wire.watch_job_request(job_id), **self._call_options(timeout, stream=True))
        try:
            for response in call:
                yield _wire.job(response.job)
        except grpc.RpcError as exc:
            raise self._error(exc, timeout) from None
        finally:
            call.cancel()

    # Realtime inference.

    def infer(
        self,
        frames: FrameSource,
        prompt: str = "",
        *,
        model: str = "",
        batch_size: int = 0,
        num_predict: int = 0,
        temperature: float | None = None,
        flush_after: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[AnswerChunk | Notice]:
        """Streams `frames` to the VLM with `prompt` and yields the answers'
        chunks as they come (and notices, such as frames dropped for want of
        a prompt). `frames` is a folder (its images in name order), an image
        file or bytes, or any iterable of bytes, paths or `Frame`s, e.g. a
        generator reading a camera. The stream ends once every frame sent is
        answered. `batch_size` 0 and `model` "" mean the node's defaults;
        `flush_after` is the quiet spell (seconds) after which a partial batch
        is answered (negative: never)."""
        config = _wire.stream_config(prompt, model, batch_size, num_predict, temperature, flush_after)
        failures: list[Exception] = []
        started = threading.Event()
        calls: list[grpc.Call] = []

        def requests() -> Iterator[inference_pb2.InferRequest]:
            # Runs on grpc's thread: an error here would only be logged there,
            # so it is kept for the caller and the call cancelled.
            yield config
            try:
                yield from _wire.frame_requests(frames)
            except Exception as exc:
                failures.append(exc)
                started.wait()
                calls[0].cancel()

        call = self._inference.Infer(requests(), **self._call_options(timeout, stream=True))
        calls.append(call)
        started.set()
        try:
            for response in call:
                result = _wire.infer_result(response)
                if result is not None:
                    yield result
        except grpc.RpcError as exc:
            if failures:
                raise failures[0] from None
            raise self._error(exc, timeout) from None
        finally:
            call.cancel()
        if failures:
            raise failures[0]


class AsyncClient(_BaseClient):
    """The asyncio twin of `Client`: the same methods, awaited.

        async with AsyncClient("localhost:50051") as node:
            job = await node.create_job("vlm_only", domain_id, input={"vlm_prompt": "Describe"})
            async for job in node.watch_job(job.id):
                print(job.status)
            async for item in node.infer(camera_frames(), "What is on the shelf?"):
                if isinstance(item, AnswerChunk):
                    print(item.text, end="\n" if item.done else "", flush=True)
    """

    def _open(self) -> None:
        credentials, options = self._connection.credentials(), self._connection.options
        self._channel = (
            grpc.aio.secure_channel(self.target, credentials, options=options)
            if credentials
            else grpc.aio.insecure_channel(self.target, options=options)
        )
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _unary(
        self, method: Callable[..., Any], request: Any, timeout: float | None, *, retried: bool = False
    ) -> Any:
        """One call; `retried`: a request safe to send again (see retry_wait)."""
        tries = 0
        while True:
            tries += 1
            try:
                return await method(request, **self._call_options(timeout))
            except grpc.RpcError as exc:
                wait = retry_wait(tries, exc) if retried else None
                if wait is None:
                    raise self._error(exc, timeout, tries) from None
            await asyncio.sleep(wait)

    # Jobs.

    async def create_job(
        self,
        job_type: str,
        domain_id: str,
        *,
        input: Mapping[str, Any],
        query: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        max_attempts: int = 0,
        timeout: float | None = None,
    ) -> Job:
        """Queues a job ("task_timing_v1" or "vlm_only") over a domain's data.
        `query` defaults to {"ids": []}: all of the domain's images.

        Safe to repeat: the create carries `idempotency_key` (a new UUID when
        none is given), and the node answers a repeated key with the job the
        first create made. A try the node did not answer in `timeout`, or that
        did not reach it, is sent again with the same key (3 tries in all,
        `timeout` each). To retry a failed create yourself without risking a
        second job, pass your own key and the same key again."""
        request = _wire.create_job_request(job_type, domain_id, input, query, idempotency_key, priority, max_attempts)
        return _wire.job((await self._unary(self._jobs.CreateJob, request, timeout, retried=True)).job)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        limit: int = 0,
        offset: int = 0,
        timeout: float | None = None,
    ) -> list[Job]:
        """Jobs, newest first; `limit` 0 means the node's default (100)."""
        request = _wire.list_jobs_request(status, job_type, limit, offset)
        return [_wire.job(j) for j in (await self._unary(self._jobs.ListJobs, request, timeout)).jobs]

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return _wire.job((await self._unary(self._jobs.GetJob, _wire.get_job_request(job_id), timeout)).job)

    async def retry_job(
        self,
        job_id: str,
        input: Mapping[str, Any] | None = None,
        *,
        job_type: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Takes a finished job back to pending, with a new input if given
        (else its current one)."""
        if input is None or job_type is None:
            current = await self.get_job(job_id, timeout=timeout)
            input, job_type = current.input if input is None else input, job_type or current.job_type
        request = _wire.retry_job_request(job_id, job_type, input)
        return _wire.job((await self._unary(self._jobs.RetryJob, request, timeout)).job)

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> Job:
        return _wire.job((await self._unary(self._jobs.CancelJob, _wire.cancel_job_request(job_id), timeout)).job)

    async def watch_job(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[Job]:
        """The job now, then at every change of status; ends after a final
        status (completed, failed, cancelled)."""
        call = self._jobs.WatchJob(_wire.watch_job_request(job_id), **self._call_options(timeout, stream=True))
        try:
            async for response in call:
                yield _wire.job(response.job)
        except grpc.RpcError as exc:
            raise self._error(exc, timeout) from None
        finally:
            call.cancel()

    # Realtime inference.

    async def infer(
        self,
        frames: FrameSource | AsyncIterable[FrameLike],
        prompt: str = "",
        *,
        model: str = "",
        batch_size: int = 0,
        num_predict: int = 0,
        temperature: float | None = None,
        flush_after: float | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[AnswerChunk | Notice]:
        """As `Client.infer`; `frames` may also be an async iterable."""
        config = _wire.stream_config(prompt, model, batch_size, num_predict, temperature, flush_after)
        call = self._inference.Infer(**self._call_options(timeout, stream=True))
        failures: list[Exception] = []

        async def send() -> None:
            try:
                await call.write(config)
                if isinstance(frames, AsyncIterable):
                    position = 0
                    async for item in frames:
                        position += 1
                        await call.write(_wire.frame_request(item, position))
                else:
                    for request in _wire.frame_requests(frames):
                        await call.write(request)
                await call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                return  # the call is over; reading it tells why
            except Exception as exc:
                failures.append(exc)
                call.cancel()

        sender = asyncio.ensure_future(send())
        try:
            async for response in call:
                result = _wire.infer_result(response)
                if result is not None:
                    yield result
        except (grpc.RpcError, asyncio.CancelledError) as exc:
            if failures:
                raise failures[0] from None
            if isinstance(exc, grpc.RpcError):
                raise self._error(exc, timeout) from None
            raise
        finally:
            call.cancel()
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        if failures:
            raise failures[0]
