"""Open Inference Protocol (KServe v2) REST payloads, plus the parameters of Triton's binary tensor data and
classification extensions and this server's own request parameters."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class InputParameters(_Strict):
    binary_data_size: int | None = Field(None, ge=0, description="Bytes of this input in the binary section")


class RequestInput(_Strict):
    name: Name
    shape: Annotated[list[Dim], Field(max_length=8)]
    datatype: Datatype
    parameters: InputParameters = InputParameters()
    data: list[Any] | None = Field(None, description="Row-major elements, flat or nested; absent for binary inputs")


class OutputParameters(_Strict):
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


class RequestParameters(_Strict):
    binary_data_output: bool = Field(False, description="Every output in the binary section unless it says otherwise")
    top_k: int | None = Field(None, ge=1, le=1000, description="Entries of `labels` / fill-mask candidates per mask")
    function_to_apply: Function | None = Field(None, description="Scores of `labels` (default: the model's)")
    output_datatype: FloatDatatype = Field("FP32", description="Datatype of the floating-point outputs")


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
