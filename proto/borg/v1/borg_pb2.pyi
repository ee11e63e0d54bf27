from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteOptions(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "user", "options")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    spec: _struct_pb2.Struct
    user: str
    options: WriteOptions
    def __init__(self, spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., user: _Optional[str] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("name", "version", "result")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    result: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., result: _Optional[str] = ...) -> None: ...

class KillJobRequest(_message.Message):
    __slots__ = ("name", "user", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: str
    options: WriteOptions
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class KillJobResponse(_message.Message):
    __slots__ = ("name", "tasks_to_stop")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_TO_STOP_FIELD_NUMBER: _ClassVar[int]
    name: str
    tasks_to_stop: int
    def __init__(self, name: _Optional[str] = ..., tasks_to_stop: _Optional[int] = ...) -> None: ...

class ReadOptions(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: ReadOptions
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Union[ReadOptions, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: ReadOptions
    def __init__(self, options: _Optional[_Union[ReadOptions, _Mapping]] = ...) -> None: ...

class ListMachinesRequest(_message.Message):
    __slots__ = ("options",)
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    options: ReadOptions
    def __init__(self, options: _Optional[_Union[ReadOptions, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("index", "state", "machine", "version", "restarts", "exit_code", "reason", "incarnation", "updated_ms", "ports")
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    state: str
    machine: str
    version: int
    restarts: int
    exit_code: int
    reason: str
    incarnation: str
    updated_ms: int
    ports: _containers.ScalarMap[str, int]
    def __init__(self, index: _Optional[int] = ..., state: _Optional[str] = ..., machine: _Optional[str] = ..., version: _Optional[int] = ..., restarts: _Optional[int] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., incarnation: _Optional[str] = ..., updated_ms: _Optional[int] = ..., ports: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "user", "priority", "kind", "replicas", "state", "version", "tasks", "spec", "created_ms", "running")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: str
    priority: int
    kind: str
    replicas: int
    state: str
    version: int
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    spec: _struct_pb2.Struct
    created_ms: int
    running: int
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., priority: _Optional[int] = ..., kind: _Optional[str] = ..., replicas: _Optional[int] = ..., state: _Optional[str] = ..., version: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., created_ms: _Optional[int] = ..., running: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu", "ram", "disk", "gpu")
    CPU_FIELD_NUMBER: _ClassVar[int]
    RAM_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    ram: int
    disk: int
    gpu: int
    def __init__(self, cpu: _Optional[float] = ..., ram: _Optional[int] = ..., disk: _Optional[int] = ..., gpu: _Optional[int] = ...) -> None: ...

class Taint(_message.Message):
    __slots__ = ("key", "value", "effect")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    effect: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., effect: _Optional[str] = ...) -> None: ...

class Machine(_message.Message):
    __slots__ = ("name", "state", "capacity", "used", "attrs", "tasks", "address", "taints", "http")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    capacity: Resources
    used: Resources
    attrs: _containers.ScalarMap[str, str]
    tasks: int
    address: str
    taints: _containers.RepeatedCompositeFieldContainer[Taint]
    http: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., used: _Optional[_Union[Resources, _Mapping]] = ..., attrs: _Optional[_Mapping[str, str]] = ..., tasks: _Optional[int] = ..., address: _Optional[str] = ..., taints: _Optional[_Iterable[_Union[Taint, _Mapping]]] = ..., http: _Optional[str] = ...) -> None: ...

class ListMachinesResponse(_message.Message):
    __slots__ = ("machines",)
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    machines: _containers.RepeatedCompositeFieldContainer[Machine]
    def __init__(self, machines: _Optional[_Iterable[_Union[Machine, _Mapping]]] = ...) -> None: ...

class CellStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("id", "raft", "grpc", "role", "term", "commit_index", "leader", "applied_index", "http")
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    id: str
    raft: str
    grpc: str
    role: str
    term: int
    commit_index: int
    leader: str
    applied_index: int
    http: str
    def __init__(self, id: _Optional[str] = ..., raft: _Optional[str] = ..., grpc: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., leader: _Optional[str] = ..., applied_index: _Optional[int] = ..., http: _Optional[str] = ...) -> None: ...

class CellStatusResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ...) -> None: ...

class ObservedTask(_message.Message):
    __slots__ = ("job", "index", "incarnation", "state", "exit_code", "reason", "restarts")
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    incarnation: str
    state: str
    exit_code: int
    reason: str
    restarts: int
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., incarnation: _Optional[str] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., restarts: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("machine", "address", "http", "capacity", "attrs", "taints", "tasks", "known_generation", "wait_ms")
    class AttrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ATTRS_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    machine: str
    address: str
    http: str
    capacity: Resources
    attrs: _containers.ScalarMap[str, str]
    taints: _containers.RepeatedCompositeFieldContainer[Taint]
    tasks: _containers.RepeatedCompositeFieldContainer[ObservedTask]
    known_generation: int
    wait_ms: int
    def __init__(self, machine: _Optional[str] = ..., address: _Optional[str] = ..., http: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., attrs: _Optional[_Mapping[str, str]] = ..., taints: _Optional[_Iterable[_Union[Taint, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[ObservedTask, _Mapping]]] = ..., known_generation: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class DesiredTask(_message.Message):
    __slots__ = ("job", "index", "incarnation", "version", "spec", "ports")
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    incarnation: str
    version: int
    spec: _struct_pb2.Struct
    ports: _containers.ScalarMap[str, int]
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., incarnation: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., ports: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("tasks", "generation", "cell")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[DesiredTask]
    generation: int
    cell: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[DesiredTask, _Mapping]]] = ..., generation: _Optional[int] = ..., cell: _Optional[str] = ...) -> None: ...

class ReadLogsRequest(_message.Message):
    __slots__ = ("job", "index", "stderr", "follow", "tail_bytes")
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_BYTES_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    stderr: bool
    follow: bool
    tail_bytes: int
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., stderr: _Optional[bool] = ..., follow: _Optional[bool] = ..., tail_bytes: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
