"""Request and response models of the routes (Hugging Face Inference API payloads for the tasks)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from server.tasks.labels import Function

TopK = Annotated[int, Field(ge=1, le=1000, description="How many candidates to return")]
Text = Annotated[str, Field(min_length=1)]
# The configured max_inputs is checked with a clear message; this static bound stops a huge list early.
Texts = Annotated[list[Text], Field(min_length=1, max_length=4096)]


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")


Target = Annotated[str, Field(min_length=1, max_length=1024)]


class FillMaskParameters(_Parameters):
    top_k: TopK | None = Field(None, description="Candidates per [MASK] (per run of [MASK]s with targets; default 5)")
    targets: Target | Annotated[list[Target], Field(min_length=1, max_length=1000)] | None = Field(
        None,
        description=(
            "Candidate strings: each fills a run of consecutive [MASK]s as long as its UTF-8 bytes, scored by the "
            "product of its bytes' probabilities in one decode; the answer ranks them per run"
        ),
    )


class FillMaskRequest(BaseModel):
    inputs: Text | Texts = Field(
        description="Text with one or more [MASK] (each [MASK] stands for one UTF-8 byte), or a list of them",
        examples=["The capital of France is[MASK][MASK][MASK][MASK][MASK][MASK]."],
    )
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


class FramePairRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frame1: str = Field(
        min_length=1, description="The first frame's image file, base64 (a data: URL prefix is accepted)"
    )
    frame2: str = Field(min_length=1, description="The second frame, the same size as the first")


class WindowLabels(BaseModel):
    start_frame: int = Field(description="First frame of the clip in this window")
    end_frame: int = Field(description="One past the last frame of the clip in this window")
    padded_frames: int = Field(description="Copies of the last frame that fill a short last window")
    labels: list[LabelScore] = Field(description="Kinetics-700 labels (the checkpoint's id2label), best first")


class AutoencodeVideoResponse(BaseModel):
    model: str
    frames: int = Field(description="Frames of the clip")
    window_frames: int = Field(description="Frames per window: the model's num_frames")
    audio: Literal["provided", "silence"] = Field(description="`silence` when no audio part was sent")
    windows: list[WindowLabels]
