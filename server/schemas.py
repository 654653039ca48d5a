"""Request and response models of the routes (Hugging Face Inference API payloads for the tasks)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

TopK = Annotated[int, Field(ge=1, le=1000, description="How many candidates to return")]
Function = Literal["softmax", "sigmoid", "none"]
Text = Annotated[str, Field(min_length=1)]
# The configured max_inputs is checked with a clear message; this static bound stops a huge list early.
Texts = Annotated[list[Text], Field(min_length=1, max_length=4096)]


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FillMaskParameters(_Parameters):
    top_k: TopK | None = Field(None, description="Candidates per [MASK] (default 5)")
    targets: None = Field(None, description="Not supported by byte-level models; leave unset")


class FillMaskRequest(BaseModel):
    inputs: Text | Texts = Field(
        description="Text with one or more [MASK] (each [MASK] stands for one UTF-8 byte), or a list of them",
        examples=["The capital of France is[MASK][MASK][MASK][MASK][MASK][MASK]."])
    parameters: FillMaskParameters = FillMaskParameters()


class MaskRun(BaseModel):
    """A run of consecutive [MASK]s (a word spans several bytes) and its best fill, byte by byte. The input
    with the run filled is `input[:start] + fill + input[end:]`."""

    start: int = Field(description="Character offset of the run's first [MASK] in the input")
    end: int = Field(description="Character offset just past the run's last [MASK]")
    fill: str = Field(description="Most likely bytes of the whole run, decoded as UTF-8")


class FillMaskCandidate(BaseModel):
    score: float
    token: int
    token_str: str
    sequence: str = Field(description="The input with this [MASK] replaced (other masks kept)")
    run: MaskRun


FillMaskOneText = list[FillMaskCandidate] | list[list[FillMaskCandidate]]


class FillMaskResponse(RootModel[FillMaskOneText | list[FillMaskOneText]]):
    """One text with one [MASK]: a list of candidates; with several: a list per [MASK];
    a list of texts: a list of those, one per text."""


class ClassifyParameters(_Parameters):
    top_k: TopK | None = None
    function_to_apply: Function | None = Field(None, description="Default: softmax (sigmoid for one label)")


class ClassifyTextRequest(BaseModel):
    inputs: Text | Texts
    parameters: ClassifyParameters = ClassifyParameters()


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyTextResponse(RootModel[list[list[LabelScore]]]):
    """One list of labels per input text, best first."""


class ClassifyImageRequest(BaseModel):
    inputs: str = Field(min_length=1, description="The image file, base64 (a data: URL prefix is accepted)")
    parameters: ClassifyParameters = ClassifyParameters()


class ClassifyImageResponse(RootModel[list[LabelScore]]):
    """Labels (the checkpoint's id2label, ImageNet for the DeepMind models), best first."""


class ModelInfo(BaseModel):
    name: str
    task: str
    source: str
    status: Literal["unloaded", "loading", "ready", "failed"]
    device: str | None = None
    dtype: str | None = None
    reason: str | None = None
    random_weights: bool = False
    is_default: bool = False
    aliases: list[str] = []
    parameter_bytes: int | None = None
    queue_depth: int | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    """A probe's 200 body; every "no" is a 503 in the error shape, its message saying why."""

    status: Literal["ok"]
