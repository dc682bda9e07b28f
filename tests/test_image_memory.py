"""Decoding under a memory budget, in a real `python -m server.main`: a frame
over the pixel limit is refused from its header, and frames at the limit are
decoded a few at a time and small first, so ten streams of them leave the
server's memory within a few hundred MB (it went from 108 MB to 2 GB on
ten streams of 131 KB PNGs of 6300x6300)."""

import asyncio
import struct
import sys
import zlib

import grpc

from devpeers.ports import free_port
from server.images import MAX_PIXELS
from server.realtime import RealtimeLimits
from tests.fixtures import settings_env
from vlmnode.v1 import inference_pb2 as pb
from vlmnode.v1 import inference_pb2_grpc

STREAMS = 10
FRAMES = 5  # a stream's batch
SLOTS = 2  # decodes in flight: the cores the server is given, and IMAGE_DECODE_SLOTS
PEAK_MB = 400  # VmHWM the server may reach: about 90 MB at rest, and ~100 MB a slot at the pixel limit


def solid_png(width: int, height: int, rgb=(200, 30, 30)) -> bytes:
    """An RGB PNG of one colour, made a row at a time: a 6300x6300 one is
    131 KB and decodes to 119 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + bytes(rgb) * width
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def memory_mb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in MB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) // 1024
    return found


# The server pins itself to SLOTS cores before it starts (not by a preexec_fn,
# which runs between fork and exec and can hang on a lock that one of this
# process's gRPC threads held).
ON_FEW_CORES = (
    f"import os, runpy; os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{SLOTS}]); "
    "runpy.run_module('server.main', run_name='__main__')"
)


async def one_stream(stub, image: bytes) -> tuple[grpc.StatusCode, str, list[pb.AnswerChunk]]:
    """Sends one batch of `image` and reads to the end: the status, its message and the chunks."""
    call = stub.Infer()
    chunks = []
    try:
        await call.write(pb.InferRequest(config=pb.StreamConfig(prompt="What colour?", batch_size=FRAMES)))
        for n in range(FRAMES):
            await call.write(pb.InferRequest(frame=pb.Frame(id=f"f{n}", image=image)))
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server ended the stream while we wrote; its status says why
    try:
        async for response in call:
            if response.WhichOneof("message") == "chunk":
                chunks.append(response.chunk)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details(), chunks
    return grpc.StatusCode.OK, "", chunks


async def test_ten_streams_of_large_frames_stay_within_the_memory_budget(settings):
    port = free_port()
    env = settings_env(settings, GRPC_PORT=port, IMAGE_DECODE_SLOTS=SLOTS)
    server = await asyncio.create_subprocess_exec(sys.executable, "-c", ON_FEW_CORES, env=env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            at_rest = memory_mb(server.pid)

            # Over the limit: each frame is refused from its header, and a
            # stream's batch of them, bad frames in a row, ends it with one line.
            bomb = solid_png(6300, 6300)
            assert len(bomb) < 140_000 and FRAMES == RealtimeLimits.max_bad_frames
            ended = await asyncio.gather(*(one_stream(stub, bomb) for _ in range(STREAMS)))
            expected = (
                f"frame f{FRAMES - 1}: image too large: 6300x6300 pixels (limit {MAX_PIXELS}) "
                f"({FRAMES} bad frames in a row end the stream)"
            )
            assert {(code, message) for code, message, _ in ended} == {(grpc.StatusCode.INVALID_ARGUMENT, expected)}
            after_refusals = memory_mb(server.pid)

            # At the limit: decoded and answered, SLOTS at a time.
            largest = solid_png(4096, 4096)
            ended = await asyncio.gather(*(one_stream(stub, largest) for _ in range(STREAMS)))
            for code, message, chunks in ended:
                assert code == grpc.StatusCode.OK, message
                assert chunks[-1].done and list(chunks[-1].frame_ids) == [f"f{n}" for n in range(FRAMES)]
            after_answers = memory_mb(server.pid)
    finally:
        server.terminate()
        await server.wait()
    print(f"server memory: at rest {at_rest}, after refusals {after_refusals}, after answers {after_answers} (MB)")
    assert after_refusals["VmHWM"] - at_rest["VmHWM"] < 50, "a refused frame is never decoded"
    assert after_answers["VmHWM"] < PEAK_MB, after_answers
