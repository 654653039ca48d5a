"""A naive peer: a fill-mask server written the obvious way with FastAPI and transformers, to load-test beside
perceiver-serve on the same weights (`python -m loadtest.run --compare naive`).

What "obvious" means here, as transformers' docs show it: `PerceiverForMaskedLM.from_pretrained`, the byte
tokenizer padding every text to the model's max length (`padding="max_length"`), one forward per request, one
request at a time (a lock around the model), torch's default threads and OpenMP settings. It answers the routes
the load runner needs: POST /fill-mask ({"inputs": text or [texts], "top_k"}), GET /v1/models, /openapi.json,
/health/ready, and an empty /metrics.

    python -m loadtest.naive --checkpoint DIR --port 8100
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel


class FillMaskRequest(BaseModel):
    inputs: str | list[str]
    top_k: int = 5


def build_app(checkpoint: str) -> FastAPI:
    import transformers

    model = transformers.PerceiverForMaskedLM.from_pretrained(checkpoint).eval()
    tokenizer = transformers.PerceiverTokenizer(model_max_length=model.config.max_position_embeddings)
    lock = threading.Lock()
    app = FastAPI(title="naive fill-mask peer")

    @app.post("/fill-mask")
    def fill_mask(body: FillMaskRequest) -> Any:  # a plain def: FastAPI runs it on its thread pool
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        answers = []
        with lock, torch.inference_mode():
            for text in texts:
                encoded = tokenizer(text, padding="max_length", return_tensors="pt")
                logits = model(inputs=encoded.input_ids, attention_mask=encoded.attention_mask).logits
                masked = encoded.input_ids[0] == tokenizer.mask_token_id
                scores, ids = logits[0, masked].softmax(-1).topk(body.top_k, dim=-1)
                answers.append([_ranked(tokenizer, s, i) for s, i in zip(scores, ids, strict=True)])
        return answers[0] if isinstance(body.inputs, str) else answers

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        entry = {"name": "naive", "task": "fill-mask", "status": "ready", "source": checkpoint, "is_default": True}
        return {"models": [entry]}

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response("", media_type="text/plain")

    return app


def _ranked(tokenizer: Any, scores: torch.Tensor, ids: torch.Tensor) -> list[dict[str, Any]]:
    return [{"token_str": tokenizer.decode([int(i)]), "score": float(s)} for s, i in zip(scores, ids, strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.naive", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a fill-mask checkpoint folder (save_pretrained's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args()
    uvicorn.run(build_app(args.checkpoint), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
