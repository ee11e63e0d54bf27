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
    __slots__ = ("name", "tasks_to_stop", "already")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_TO_STOP_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    name: str
    tasks_to_stop: int
    already: bool
    def __init__(self, name: _Optional[str] = ..., tasks_to_stop: _Optional[int] = ..., already: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("index", "state", "machine", "version", "restarts", "exit_code", "reason", "incarnation", "updated_ms", "ports", "health", "cpu_seconds", "memory_bytes", "memory_peak_bytes", "pid", "oom_kills", "ready", "gpus")
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
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
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
    health: str
    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    pid: int
    oom_kills: int
    ready: bool
    gpus: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., state: _Optional[str] = ..., machine: _Optional[str] = ..., version: _Optional[int] = ..., restarts: _Optional[int] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., incarnation: _Optional[str] = ..., updated_ms: _Optional[int] = ..., ports: _Optional[_Mapping[str, int]] = ..., health: _Optional[str] = ..., cpu_seconds: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., memory_peak_bytes: _Optional[int] = ..., pid: _Optional[int] = ..., oom_kills: _Optional[int] = ..., ready: _Optional[bool] = ..., gpus: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "user", "priority", "kind", "replicas", "state", "version", "tasks", "spec", "created_ms", "running", "rollout", "previous_version", "ready", "children", "last_run_ms", "next_run_ms", "parent")
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
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
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
    rollout: str
    previous_version: int
    ready: int
    children: _containers.RepeatedScalarFieldContainer[str]
    last_run_ms: int
    next_run_ms: int
    parent: str
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., priority: _Optional[int] = ..., kind: _Optional[str] = ..., replicas: _Optional[int] = ..., state: _Optional[str] = ..., version: _Optional[int] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., created_ms: _Optional[int] = ..., running: _Optional[int] = ..., rollout: _Optional[str] = ..., previous_version: _Optional[int] = ..., ready: _Optional[int] = ..., children: _Optional[_Iterable[str]] = ..., last_run_ms: _Optional[int] = ..., next_run_ms: _Optional[int] = ..., parent: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("name", "state", "capacity", "used", "attrs", "tasks", "address", "taints", "http", "usage", "last_seen_ms", "gpus", "gpus_used")
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
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_MS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPUS_USED_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    capacity: Resources
    used: Resources
    attrs: _containers.ScalarMap[str, str]
    tasks: int
    address: str
    taints: _containers.RepeatedCompositeFieldContainer[Taint]
    http: str
    usage: Resources
    last_seen_ms: int
    gpus: _containers.RepeatedScalarFieldContainer[str]
    gpus_used: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., used: _Optional[_Union[Resources, _Mapping]] = ..., attrs: _Optional[_Mapping[str, str]] = ..., tasks: _Optional[int] = ..., address: _Optional[str] = ..., taints: _Optional[_Iterable[_Union[Taint, _Mapping]]] = ..., http: _Optional[str] = ..., usage: _Optional[_Union[Resources, _Mapping]] = ..., last_seen_ms: _Optional[int] = ..., gpus: _Optional[_Iterable[str]] = ..., gpus_used: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("id", "raft", "grpc", "role", "term", "commit_index", "leader", "applied_index", "http", "digest_index", "digest", "recent_digests", "digest_mismatch", "digest_diverged")
    class RecentDigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    DIGEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECENT_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_DIVERGED_FIELD_NUMBER: _ClassVar[int]
    id: str
    raft: str
    grpc: str
    role: str
    term: int
    commit_index: int
    leader: str
    applied_index: int
    http: str
    digest_index: int
    digest: str
    recent_digests: _containers.ScalarMap[int, str]
    digest_mismatch: _containers.RepeatedScalarFieldContainer[str]
    digest_diverged: bool
    def __init__(self, id: _Optional[str] = ..., raft: _Optional[str] = ..., grpc: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., leader: _Optional[str] = ..., applied_index: _Optional[int] = ..., http: _Optional[str] = ..., digest_index: _Optional[int] = ..., digest: _Optional[str] = ..., recent_digests: _Optional[_Mapping[int, str]] = ..., digest_mismatch: _Optional[_Iterable[str]] = ..., digest_diverged: _Optional[bool] = ...) -> None: ...

class CellStatusResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ...) -> None: ...

class ObservedTask(_message.Message):
    __slots__ = ("job", "index", "incarnation", "state", "exit_code", "reason", "restarts", "health", "cpu_seconds", "memory_bytes", "memory_peak_bytes", "pid", "oom_kills", "ports")
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
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    incarnation: str
    state: str
    exit_code: int
    reason: str
    restarts: int
    health: str
    cpu_seconds: float
    memory_bytes: int
    memory_peak_bytes: int
    pid: int
    oom_kills: int
    ports: _containers.ScalarMap[str, int]
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., incarnation: _Optional[str] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., restarts: _Optional[int] = ..., health: _Optional[str] = ..., cpu_seconds: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., memory_peak_bytes: _Optional[int] = ..., pid: _Optional[int] = ..., oom_kills: _Optional[int] = ..., ports: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("machine", "address", "http", "capacity", "attrs", "taints", "tasks", "known_generation", "wait_ms", "task_users", "gpus", "shared_specs", "accepts_unchanged", "min_index")
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
    TASK_USERS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SHARED_SPECS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    MIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    machine: str
    address: str
    http: str
    capacity: Resources
    attrs: _containers.ScalarMap[str, str]
    taints: _containers.RepeatedCompositeFieldContainer[Taint]
    tasks: _containers.RepeatedCompositeFieldContainer[ObservedTask]
    known_generation: int
    wait_ms: int
    task_users: _containers.RepeatedScalarFieldContainer[str]
    gpus: _containers.RepeatedScalarFieldContainer[str]
    shared_specs: bool
    accepts_unchanged: bool
    min_index: int
    def __init__(self, machine: _Optional[str] = ..., address: _Optional[str] = ..., http: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., attrs: _Optional[_Mapping[str, str]] = ..., taints: _Optional[_Iterable[_Union[Taint, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[ObservedTask, _Mapping]]] = ..., known_generation: _Optional[int] = ..., wait_ms: _Optional[int] = ..., task_users: _Optional[_Iterable[str]] = ..., gpus: _Optional[_Iterable[str]] = ..., shared_specs: _Optional[bool] = ..., accepts_unchanged: _Optional[bool] = ..., min_index: _Optional[int] = ...) -> None: ...

class DesiredTask(_message.Message):
    __slots__ = ("job", "index", "incarnation", "version", "spec", "ports", "gpus", "spec_ref")
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
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SPEC_REF_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    incarnation: str
    version: int
    spec: _struct_pb2.Struct
    ports: _containers.ScalarMap[str, int]
    gpus: _containers.RepeatedScalarFieldContainer[str]
    spec_ref: str
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., incarnation: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., ports: _Optional[_Mapping[str, int]] = ..., gpus: _Optional[_Iterable[str]] = ..., spec_ref: _Optional[str] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("tasks", "generation", "cell", "specs", "unchanged")
    class SpecsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    TASKS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[DesiredTask]
    generation: int
    cell: str
    specs: _containers.MessageMap[str, _struct_pb2.Struct]
    unchanged: bool
    def __init__(self, tasks: _Optional[_Iterable[_Union[DesiredTask, _Mapping]]] = ..., generation: _Optional[int] = ..., cell: _Optional[str] = ..., specs: _Optional[_Mapping[str, _struct_pb2.Struct]] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class TaskKey(_message.Message):
    __slots__ = ("job", "index", "incarnation")
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    incarnation: str
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class LinkUp(_message.Message):
    __slots__ = ("hello", "changed", "gone", "seq")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    GONE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    hello: SyncRequest
    changed: _containers.RepeatedCompositeFieldContainer[ObservedTask]
    gone: _containers.RepeatedCompositeFieldContainer[TaskKey]
    seq: int
    def __init__(self, hello: _Optional[_Union[SyncRequest, _Mapping]] = ..., changed: _Optional[_Iterable[_Union[ObservedTask, _Mapping]]] = ..., gone: _Optional[_Iterable[_Union[TaskKey, _Mapping]]] = ..., seq: _Optional[int] = ...) -> None: ...

class LinkDown(_message.Message):
    __slots__ = ("generation", "cell", "full", "upserts", "removes", "specs", "acked_seq", "want_full_report", "heartbeat_ms", "as_of_index")
    class SpecsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    REMOVES_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    WANT_FULL_REPORT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_INDEX_FIELD_NUMBER: _ClassVar[int]
    generation: int
    cell: str
    full: bool
    upserts: _containers.RepeatedCompositeFieldContainer[DesiredTask]
    removes: _containers.RepeatedCompositeFieldContainer[TaskKey]
    specs: _containers.MessageMap[str, _struct_pb2.Struct]
    acked_seq: int
    want_full_report: bool
    heartbeat_ms: int
    as_of_index: int
    def __init__(self, generation: _Optional[int] = ..., cell: _Optional[str] = ..., full: _Optional[bool] = ..., upserts: _Optional[_Iterable[_Union[DesiredTask, _Mapping]]] = ..., removes: _Optional[_Iterable[_Union[TaskKey, _Mapping]]] = ..., specs: _Optional[_Mapping[str, _struct_pb2.Struct]] = ..., acked_seq: _Optional[int] = ..., want_full_report: _Optional[bool] = ..., heartbeat_ms: _Optional[int] = ..., as_of_index: _Optional[int] = ...) -> None: ...

class RelayLinkRequest(_message.Message):
    __slots__ = ("reports", "seen", "sent")
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[SyncRequest]
    seen: _containers.RepeatedScalarFieldContainer[str]
    sent: _containers.RepeatedCompositeFieldContainer[SentTasks]
    def __init__(self, reports: _Optional[_Iterable[_Union[SyncRequest, _Mapping]]] = ..., seen: _Optional[_Iterable[str]] = ..., sent: _Optional[_Iterable[_Union[SentTasks, _Mapping]]] = ...) -> None: ...

class SentTasks(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskKey]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskKey, _Mapping]]] = ...) -> None: ...

class RelayLinkResponse(_message.Message):
    __slots__ = ("failed",)
    FAILED_FIELD_NUMBER: _ClassVar[int]
    failed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, failed: _Optional[_Iterable[str]] = ...) -> None: ...

class ReadLogsRequest(_message.Message):
    __slots__ = ("job", "index", "stderr", "follow", "tail_bytes", "incarnation")
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_BYTES_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    stderr: bool
    follow: bool
    tail_bytes: int
    incarnation: str
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., stderr: _Optional[bool] = ..., follow: _Optional[bool] = ..., tail_bytes: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "user", "options", "to_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: str
    options: WriteOptions
    to_version: int
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ..., to_version: _Optional[int] = ...) -> None: ...

class DrainMachineRequest(_message.Message):
    __slots__ = ("name", "undrain", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    undrain: bool
    options: WriteOptions
    def __init__(self, name: _Optional[str] = ..., undrain: _Optional[bool] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class DrainMachineResponse(_message.Message):
    __slots__ = ("name", "state", "tasks_to_move")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASKS_TO_MOVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    tasks_to_move: int
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., tasks_to_move: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("from_index", "job", "follow", "tail")
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    from_index: int
    job: str
    follow: bool
    tail: int
    def __init__(self, from_index: _Optional[int] = ..., job: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("index", "ts_ms", "type", "job", "task_index", "machine", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    ts_ms: int
    type: str
    job: str
    task_index: int
    machine: str
    message: str
    def __init__(self, index: _Optional[int] = ..., ts_ms: _Optional[int] = ..., type: _Optional[str] = ..., job: _Optional[str] = ..., task_index: _Optional[int] = ..., machine: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ExplainTaskRequest(_message.Message):
    __slots__ = ("job", "index")
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ExplainTaskResponse(_message.Message):
    __slots__ = ("state", "machine", "reason", "rejected", "feasible", "machines")
    class RejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    MACHINES_FIELD_NUMBER: _ClassVar[int]
    state: str
    machine: str
    reason: str
    rejected: _containers.ScalarMap[str, int]
    feasible: int
    machines: int
    def __init__(self, state: _Optional[str] = ..., machine: _Optional[str] = ..., reason: _Optional[str] = ..., rejected: _Optional[_Mapping[str, int]] = ..., feasible: _Optional[int] = ..., machines: _Optional[int] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("user", "band", "limit", "used")
    USER_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    user: str
    band: str
    limit: Resources
    used: Resources
    def __init__(self, user: _Optional[str] = ..., band: _Optional[str] = ..., limit: _Optional[_Union[Resources, _Mapping]] = ..., used: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("quota", "options")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    quota: Quota
    options: WriteOptions
    def __init__(self, quota: _Optional[_Union[Quota, _Mapping]] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class SetQuotaResponse(_message.Message):
    __slots__ = ("quota",)
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    quota: Quota
    def __init__(self, quota: _Optional[_Union[Quota, _Mapping]] = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: str
    def __init__(self, user: _Optional[str] = ...) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: _containers.RepeatedCompositeFieldContainer[Quota]
    def __init__(self, quotas: _Optional[_Iterable[_Union[Quota, _Mapping]]] = ...) -> None: ...

class ChangeMembershipRequest(_message.Message):
    __slots__ = ("raft", "remove")
    RAFT_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    raft: str
    remove: bool
    def __init__(self, raft: _Optional[str] = ..., remove: _Optional[bool] = ...) -> None: ...

class ChangeMembershipResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("job", "options")
    JOB_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    job: str
    options: ReadOptions
    def __init__(self, job: _Optional[str] = ..., options: _Optional[_Union[ReadOptions, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("index", "machine", "host", "ports", "healthy", "name")
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    index: int
    machine: str
    host: str
    ports: _containers.ScalarMap[str, int]
    healthy: bool
    name: str
    def __init__(self, index: _Optional[int] = ..., machine: _Optional[str] = ..., host: _Optional[str] = ..., ports: _Optional[_Mapping[str, int]] = ..., healthy: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class CreateUiSessionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UiSession(_message.Message):
    __slots__ = ("token", "expires_ms", "http")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_ms: int
    http: str
    def __init__(self, token: _Optional[str] = ..., expires_ms: _Optional[int] = ..., http: _Optional[str] = ...) -> None: ...

class ExecStart(_message.Message):
    __slots__ = ("job", "index", "argv", "tty", "rows", "cols", "incarnation")
    JOB_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    job: str
    index: int
    argv: _containers.RepeatedScalarFieldContainer[str]
    tty: bool
    rows: int
    cols: int
    incarnation: str
    def __init__(self, job: _Optional[str] = ..., index: _Optional[int] = ..., argv: _Optional[_Iterable[str]] = ..., tty: _Optional[bool] = ..., rows: _Optional[int] = ..., cols: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class ExecResize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ExecInput(_message.Message):
    __slots__ = ("start", "stdin", "stdin_eof", "resize", "signal")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDIN_EOF_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    start: ExecStart
    stdin: bytes
    stdin_eof: bool
    resize: ExecResize
    signal: int
    def __init__(self, start: _Optional[_Union[ExecStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., stdin_eof: _Optional[bool] = ..., resize: _Optional[_Union[ExecResize, _Mapping]] = ..., signal: _Optional[int] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ...) -> None: ...

class JobHistoryRequest(_message.Message):
    __slots__ = ("name", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: ReadOptions
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Union[ReadOptions, _Mapping]] = ...) -> None: ...

class JobVersion(_message.Message):
    __slots__ = ("version", "submitted_ms", "user", "changed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_MS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    version: int
    submitted_ms: int
    user: str
    changed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., submitted_ms: _Optional[int] = ..., user: _Optional[str] = ..., changed: _Optional[_Iterable[str]] = ...) -> None: ...

class JobHistoryResponse(_message.Message):
    __slots__ = ("versions", "current")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[JobVersion]
    current: int
    def __init__(self, versions: _Optional[_Iterable[_Union[JobVersion, _Mapping]]] = ..., current: _Optional[int] = ...) -> None: ...

class PlanJobsRequest(_message.Message):
    __slots__ = ("specs", "user", "options")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    user: str
    options: ReadOptions
    def __init__(self, specs: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., user: _Optional[str] = ..., options: _Optional[_Union[ReadOptions, _Mapping]] = ...) -> None: ...

class JobPlan(_message.Message):
    __slots__ = ("job", "change", "version", "placements", "unplaceable", "preemptions", "reasons", "error")
    class PlacementsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    UNPLACEABLE_FIELD_NUMBER: _ClassVar[int]
    PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job: str
    change: str
    version: int
    placements: _containers.ScalarMap[str, int]
    unplaceable: int
    preemptions: int
    reasons: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, job: _Optional[str] = ..., change: _Optional[str] = ..., version: _Optional[int] = ..., placements: _Optional[_Mapping[str, int]] = ..., unplaceable: _Optional[int] = ..., preemptions: _Optional[int] = ..., reasons: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...

class PlanJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobPlan]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobPlan, _Mapping]]] = ...) -> None: ...

class PromoteJobRequest(_message.Message):
    __slots__ = ("name", "user", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    user: str
    options: WriteOptions
    def __init__(self, name: _Optional[str] = ..., user: _Optional[str] = ..., options: _Optional[_Union[WriteOptions, _Mapping]] = ...) -> None: ...

class SaveSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("cell", "replica", "index", "term", "taken_ms", "state_format", "size", "sha256")
    CELL_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TAKEN_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    cell: str
    replica: str
    index: int
    term: int
    taken_ms: int
    state_format: int
    size: int
    sha256: str
    def __init__(self, cell: _Optional[str] = ..., replica: _Optional[str] = ..., index: _Optional[int] = ..., term: _Optional[int] = ..., taken_ms: _Optional[int] = ..., state_format: _Optional[int] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
