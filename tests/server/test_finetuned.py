"""A classifier fine-tuned here, served by `python -m server --config`: /classify-text answers with the
data's label names, through the Inference API client too."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from huggingface_hub import InferenceClient, constants

from finetune import Options, finetune
from tests.finetune.synthetic import MARKERS, marker_texts, random_base, write_jsonl


@pytest.fixture(scope="module")
def live(spawn_server: Callable[..., str], toml_writer, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("finetuned")
    out = root / "reviews"
    finetune(
        Options(
            base=str(random_base(root / "base", "language-perceiver-small")),
            train=write_jsonl(root / "train.jsonl", marker_texts(400, seed=1)),
            eval=write_jsonl(root / "eval.jsonl", marker_texts(100, seed=2)),
            out=out,
            epochs=20,
            lr=3e-3,
            progress=False,
        )
    )
    config = toml_writer(
        root / "serve.toml",
        {"server": {"device": "cpu"}, "models": {"reviews": {"task": "text-classification", "source": str(out)}}},
    )
    return spawn_server("--config", str(config), "--preload", "reviews", "--log-level", "warning")


@pytest.mark.slow
def test_classify_text_answers_with_the_datas_labels(live: str, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {label: f"the film was {word} from start to end" for label, word in MARKERS.items()}
    answer = httpx.post(f"{live}/classify-text", json={"inputs": list(texts.values())}, timeout=30)
    assert answer.status_code == 200, answer.text
    for expected, ranked in zip(texts, answer.json(), strict=True):
        assert {x["label"] for x in ranked} == {"negative", "positive"}
        assert ranked[0]["label"] == expected  # the marker decides
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # InferenceClient refuses every request offline
    [top] = InferenceClient(model=f"{live}/classify-text").text_classification(texts["positive"], top_k=1)
    assert top.label == "positive" and top.score > 0.5
    models = httpx.get(f"{live}/v1/models", timeout=30).json()
    [reviews] = [m for m in models["models"] if m["name"] == "reviews"]
    assert reviews["task"] == "text-classification" and reviews["status"] == "ready" and not reviews["random_weights"]
