from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("device", "roles", "version")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    device: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    version: str
    def __init__(self, device: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "n_samples", "label_histogram", "capabilities")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LABEL_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    n_samples: int
    label_histogram: _containers.RepeatedScalarFieldContainer[int]
    capabilities: Capabilities
    def __init__(self, node_id: _Optional[str] = ..., n_samples: _Optional[int] = ..., label_histogram: _Optional[_Iterable[int]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("run_id", "step", "heartbeat_interval_s", "heartbeat_timeout_s", "max_message_bytes", "chunk_bytes", "mode", "tdgan_config_json", "image_shape", "training_config_json")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TDGAN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step: int
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    max_message_bytes: int
    chunk_bytes: int
    mode: str
    tdgan_config_json: str
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    training_config_json: str
    def __init__(self, run_id: _Optional[str] = ..., step: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., heartbeat_timeout_s: _Optional[float] = ..., max_message_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., mode: _Optional[str] = ..., tdgan_config_json: _Optional[str] = ..., image_shape: _Optional[_Iterable[int]] = ..., training_config_json: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time_s",)
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    time_s: float
    def __init__(self, time_s: _Optional[float] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("step", "fake", "labels", "next_labels")
    STEP_FIELD_NUMBER: _ClassVar[int]
    FAKE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_LABELS_FIELD_NUMBER: _ClassVar[int]
    step: int
    fake: Tensor
    labels: Tensor
    next_labels: Tensor
    def __init__(self, step: _Optional[int] = ..., fake: _Optional[_Union[Tensor, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., next_labels: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class FeedbackReply(_message.Message):
    __slots__ = ("step", "grad", "stats")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    step: int
    grad: Tensor
    stats: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., grad: _Optional[_Union[Tensor, _Mapping]] = ..., stats: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("step", "reason")
    STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    step: int
    reason: str
    def __init__(self, step: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Closing(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class EdgeMessage(_message.Message):
    __slots__ = ("reply", "heartbeat")
    REPLY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    reply: FeedbackReply
    heartbeat: Heartbeat
    def __init__(self, reply: _Optional[_Union[FeedbackReply, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class CloudMessage(_message.Message):
    __slots__ = ("request", "heartbeat", "done", "closing")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    CLOSING_FIELD_NUMBER: _ClassVar[int]
    request: FeedbackRequest
    heartbeat: Heartbeat
    done: Done
    closing: Closing
    def __init__(self, request: _Optional[_Union[FeedbackRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., closing: _Optional[_Union[Closing, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "spec_json", "tensors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec_json: str
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, name: _Optional[str] = ..., spec_json: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ModelBundle(_message.Message):
    __slots__ = ("models", "scalars")
    class ScalarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SCALARS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    scalars: _containers.ScalarMap[str, float]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., scalars: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ChunkHeader(_message.Message):
    __slots__ = ("node_id", "name", "total_bytes", "sha256")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    total_bytes: int
    sha256: str
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ChunkHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ChunkHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("received_bytes", "uploads", "expected_uploads")
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    uploads: int
    expected_uploads: int
    def __init__(self, received_bytes: _Optional[int] = ..., uploads: _Optional[int] = ..., expected_uploads: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("name", "wait_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    wait_s: float
    def __init__(self, name: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...
