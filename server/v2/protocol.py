"""Open Inference Protocol (KServe v2) payloads, shared by HTTP and gRPC: a gRPC request's parameters are validated
by the same models. Parameters: the protocol's standard ones (Triton's binary tensor data, classification,
sequence and scheduling parameters, KServe's `content_type` and `headers`), and this server's own. An unknown
parameter is refused (400) naming the known ones: ours change the answer, and a misspelt one silently ignored
would answer another question than the one asked."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from server.http.schemas import Function

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]
FloatDatatype = Literal["FP32", "FP16", "BF16"]
Dim = Annotated[int, Field(ge=0, le=2**31)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
HEADER_LENGTH = "Inference-Header-Content-Length"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SHARED_MEMORY = "shared_memory_"  # Triton's shared-memory parameters' prefix: not supported here


class _Parameters(_Strict):
    """Parameters: the known ones typed, None = absent; an unknown one refused with what is known."""

    where: ClassVar[str] = "request"

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = sorted(str(k) for k in data if k not in cls.model_fields)
        if any(name.startswith(SHARED_MEMORY) for name in unknown):
            raise PydanticCustomError(
                "shared_memory", "shared memory is not supported: send the tensor data in the request"
            )
        if unknown:
            raise PydanticCustomError(
                "unknown_parameter",
                "unknown {where} parameter(s) {unknown}; known: {known}",
                {"where": cls.where, "unknown": ", ".join(unknown), "known": ", ".join(cls.model_fields)},
            )
        return data


class InputParameters(_Parameters):
    where = "input"
    binary_data_size: int | None = Field(None, ge=0, description="Bytes of this input in the binary section")
    content_type: str | None = Field(
        None,
        max_length=32,
        description=(
            'KServe\'s content type of a BYTES input: "str" (UTF-8 text), "base64" or "pillow_image" (base64 of '
            "an encoded file); default: text as sent, files raw in binary data and base64 in JSON"
        ),
    )


class RequestInput(_Strict):
    name: Name
    shape: Annotated[list[Dim], Field(max_length=8)]
    datatype: Datatype
    parameters: InputParameters = InputParameters()
    data: list[Any] | None = Field(None, description="Row-major elements, flat or nested; absent for binary inputs")


class OutputParameters(_Parameters):
    where = "output"
    binary_data: bool | None = Field(None, description="Return this output in the binary section")
    classification: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=(
            'Return the top-n classes of this output as BYTES "value:index:label" (Triton classification extension)'
        ),
    )


class RequestOutput(_Strict):
    name: Name
    parameters: OutputParameters = OutputParameters()


class RequestParameters(_Parameters):
    binary_data_output: bool | None = Field(
        None, description="Every output in the binary section unless it says otherwise"
    )
    timeout: int | None = Field(
        None, ge=0, description="Microseconds the request may take (the request's deadline, capped); 0: unset"
    )
    priority: int | None = Field(None, ge=0, description="Accepted, ignored: one queue per model, first come first")
    sequence_id: int | str | None = Field(None, description="Accepted, ignored: every model here is stateless")
    sequence_start: bool | None = Field(None, description="Accepted, ignored")
    sequence_end: bool | None = Field(None, description="Accepted, ignored")
    content_type: str | None = Field(None, max_length=32, description="KServe's request codec: accepted, ignored")
    headers: dict[str, Any] | None = Field(None, description="Forwarded headers: accepted, ignored")
    top_k: int | None = Field(None, ge=1, le=1000, description="Entries of `labels` / fill-mask candidates per mask")
    function_to_apply: Function | None = Field(None, description="Scores of `labels` (default: the model's)")
    output_datatype: FloatDatatype | None = Field(None, description="Datatype of the floating-point outputs (FP32)")


class InferenceRequest(_Strict):
    id: str | None = Field(None, max_length=256)
    model_name: str | None = Field(None, description="Ignored: the URL names the model")
    model_version: str | None = Field(None, description="Ignored: the URL names the version")
    parameters: RequestParameters = RequestParameters()
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=16)]
    outputs: Annotated[list[RequestOutput], Field(max_length=16)] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, int] | None = Field(None, description='{"binary_data_size": n} for binary outputs')
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1: any size (or not known until the model is loaded)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str] = Field(description="task, and status (unloaded, loading, ready, failed)")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Error(BaseModel):
    """The protocol's error object (every /v2 route)."""

    error: str


INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferenceRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        f"The JSON request ({HEADER_LENGTH} bytes) followed by the binary inputs, in order"
                    ),
                }
            },
        },
    }
}


class RepositoryIndexRequest(_Strict):
    repository_name: str | None = Field(None, description="Ignored: the configuration is the one repository")
    ready: bool | None = Field(None, description="Only the models that are ready")


class RepositoryRequest(_Strict):
    """A load or unload request: Triton's `parameters` (a load's `config` and `file:` overrides are refused)."""

    repository_name: str | None = Field(None, description="Ignored: the configuration is the one repository")
    parameters: dict[str, Any] = {}
