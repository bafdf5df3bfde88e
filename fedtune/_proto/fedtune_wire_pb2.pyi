from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IndexCoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_CODING_UNSPECIFIED: _ClassVar[IndexCoding]
    PACKED: _ClassVar[IndexCoding]
    BITMAP: _ClassVar[IndexCoding]
    ELIAS_FANO: _ClassVar[IndexCoding]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
INDEX_CODING_UNSPECIFIED: IndexCoding
PACKED: IndexCoding
BITMAP: IndexCoding
ELIAS_FANO: IndexCoding
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType

class Indices(_message.Message):
    __slots__ = ("coding", "count", "universe", "width", "data")
    CODING_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIVERSE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    coding: IndexCoding
    count: int
    universe: int
    width: int
    data: bytes
    def __init__(self, coding: _Optional[_Union[IndexCoding, str]] = ..., count: _Optional[int] = ..., universe: _Optional[int] = ..., width: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Dense(_message.Message):
    __slots__ = ("dtype", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Quantized(_message.Message):
    __slots__ = ("bits", "offset", "step", "codes")
    BITS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    bits: int
    offset: float
    step: float
    codes: bytes
    def __init__(self, bits: _Optional[int] = ..., offset: _Optional[float] = ..., step: _Optional[float] = ..., codes: _Optional[bytes] = ...) -> None: ...

class Ternary(_message.Message):
    __slots__ = ("scale", "negative")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    scale: float
    negative: bytes
    def __init__(self, scale: _Optional[float] = ..., negative: _Optional[bytes] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "indices", "dense", "quantized", "ternary")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZED_FIELD_NUMBER: _ClassVar[int]
    TERNARY_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    indices: Indices
    dense: Dense
    quantized: Quantized
    ternary: Ternary
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., indices: _Optional[_Union[Indices, _Mapping]] = ..., dense: _Optional[_Union[Dense, _Mapping]] = ..., quantized: _Optional[_Union[Quantized, _Mapping]] = ..., ternary: _Optional[_Union[Ternary, _Mapping]] = ...) -> None: ...

class TensorBundle(_message.Message):
    __slots__ = ("version", "tensors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class SeedSteps(_message.Message):
    __slots__ = ("version", "keys", "scalars")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SCALARS_FIELD_NUMBER: _ClassVar[int]
    version: int
    keys: Indices
    scalars: bytes
    def __init__(self, version: _Optional[int] = ..., keys: _Optional[_Union[Indices, _Mapping]] = ..., scalars: _Optional[bytes] = ...) -> None: ...

class SeedUpdate(_message.Message):
    __slots__ = ("version", "round", "lr", "keys", "scalars", "scalars_q8", "scale")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SCALARS_FIELD_NUMBER: _ClassVar[int]
    SCALARS_Q8_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    version: int
    round: int
    lr: float
    keys: Indices
    scalars: bytes
    scalars_q8: bytes
    scale: float
    def __init__(self, version: _Optional[int] = ..., round: _Optional[int] = ..., lr: _Optional[float] = ..., keys: _Optional[_Union[Indices, _Mapping]] = ..., scalars: _Optional[bytes] = ..., scalars_q8: _Optional[bytes] = ..., scale: _Optional[float] = ...) -> None: ...

class SeedImportance(_message.Message):
    __slots__ = ("version", "levels")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    version: int
    levels: bytes
    def __init__(self, version: _Optional[int] = ..., levels: _Optional[bytes] = ...) -> None: ...
