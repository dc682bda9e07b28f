import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferRequest(_message.Message):
    __slots__ = ("config", "frame", "prompt", "flush")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    frame: Frame
    prompt: Prompt
    flush: Flush
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., flush: _Optional[_Union[Flush, _Mapping]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("model", "prompt", "batch_size", "num_predict", "temperature", "flush_after_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_PREDICT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    FLUSH_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    batch_size: int
    num_predict: int
    temperature: float
    flush_after_seconds: float
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., batch_size: _Optional[int] = ..., num_predict: _Optional[int] = ..., temperature: _Optional[float] = ..., flush_after_seconds: _Optional[float] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("id", "image", "captured_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    captured_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Flush(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("chunk", "notice", "error")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    chunk: AnswerChunk
    notice: Notice
    error: StreamError
    def __init__(self, chunk: _Optional[_Union[AnswerChunk, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., error: _Optional[_Union[StreamError, _Mapping]] = ...) -> None: ...

class AnswerChunk(_message.Message):
    __slots__ = ("answer_id", "text", "done", "frame_ids", "frames_dropped", "model", "created_at", "done_reason", "metrics")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FRAME_IDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DONE_REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    answer_id: int
    text: str
    done: bool
    frame_ids: _containers.RepeatedScalarFieldContainer[str]
    frames_dropped: int
    model: str
    created_at: _timestamp_pb2.Timestamp
    done_reason: str
    metrics: AnswerMetrics
    def __init__(self, answer_id: _Optional[int] = ..., text: _Optional[str] = ..., done: _Optional[bool] = ..., frame_ids: _Optional[_Iterable[str]] = ..., frames_dropped: _Optional[int] = ..., model: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., done_reason: _Optional[str] = ..., metrics: _Optional[_Union[AnswerMetrics, _Mapping]] = ...) -> None: ...

class AnswerMetrics(_message.Message):
    __slots__ = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EVAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    total_duration: _duration_pb2.Duration
    load_duration: _duration_pb2.Duration
    prompt_eval_count: int
    prompt_eval_duration: _duration_pb2.Duration
    eval_count: int
    eval_duration: _duration_pb2.Duration
    def __init__(self, total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., load_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., prompt_eval_count: _Optional[int] = ..., prompt_eval_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., eval_count: _Optional[int] = ..., eval_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("message", "frame_ids", "code")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FRAME_IDS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    message: str
    frame_ids: _containers.RepeatedScalarFieldContainer[str]
    code: str
    def __init__(self, message: _Optional[str] = ..., frame_ids: _Optional[_Iterable[str]] = ..., code: _Optional[str] = ...) -> None: ...
