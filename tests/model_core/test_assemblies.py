"""The fast paths give the plain path's answers: decoding a subset of queries, text at a
length bucket, encode-once-decode-many, batching; and reduced precision stays close."""

from __future__ import annotations

import pytest
import torch

from model_core import from_config
from model_core.chunking import label_only, output_chunks, reconstruct
from model_core.tokenizer import ByteTokenizer
from tests.model_core.hf_oracle import BASE, CONFIGS, make_inputs

MLM = "PerceiverForMaskedLM"
MM = "PerceiverForMultimodalAutoencoding"
ATOL = 1e-5


def _model(arch: str, **overrides):
    return from_config({"architectures": [arch], **BASE, **CONFIGS[arch], **overrides}, seed=7)


def _close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


@torch.inference_mode()
def test_masked_lm_decodes_only_requested_positions():
    model = _model(MLM)
    ids = torch.randint(6, 262, (3, 40))
    full = model(ids).logits  # (3, 64, 262): every position, as transformers does
    positions = torch.tensor([[1, 5, 9], [0, 0, 39], [20, 21, 22]])
    subset = model(ids, output_positions=positions).logits
    assert subset.shape == (3, 3, 262)
    _close(subset, torch.gather(full, 1, positions[:, :, None].expand(-1, -1, 262)))
    shared = model(ids, output_positions=torch.tensor([4, 2])).logits
    _close(shared, full[:, [4, 2]])


@torch.inference_mode()
def test_text_at_a_length_bucket_equals_full_padding():
    model = _model(MLM, max_position_embeddings=256)
    tok = ByteTokenizer()
    texts = ["The quick brown [MASK][MASK][MASK] jumps.", "hi [MASK]", "Ünïcödé [MASK] text"]
    batch = [tok.encode(t) for t in texts]
    short_ids, short_mask = tok.pad(batch, bucket_sizes=(64, 256))
    long_ids, long_mask = tok.pad(batch, length=256)
    assert short_ids.shape[1] == 64
    pos = torch.arange(40).expand(3, -1)
    _close(model(short_ids, short_mask, pos).logits, model(long_ids, long_mask, pos).logits)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@torch.inference_mode()
def test_answer_does_not_depend_on_batch_mates(arch):
    model = _model(arch)
    kwargs = make_inputs(arch, model, batch=3, seed=5)
    if arch == MM:
        kwargs["subsampled_output_points"] = output_chunks(num_chunks=4, image_points=512, audio_points=16)[1]
    if arch == MLM:
        kwargs = {"input_ids": kwargs["inputs"], "attention_mask": kwargs["attention_mask"]}
    batched = model(**kwargs).logits

    def row(value, i):
        if isinstance(value, dict):
            return {k: row(v, i) for k, v in value.items()}
        return value[i : i + 1] if isinstance(value, torch.Tensor) and value.dim() > 1 else value

    for i in range(3):
        single = {k: row(v, i) if k != "subsampled_output_points" else v for k, v in kwargs.items()}
        if "attention_mask" in single:  # alone, a request is not padded at all
            n = int(single["attention_mask"].sum())
            key = "input_ids" if arch == MLM else "inputs"
            single[key], single["attention_mask"] = single[key][:, :n], None
            if arch == MLM:
                single["output_positions"] = torch.arange(n)[None]
                _close(model(**single).logits, batched[i : i + 1, :n])
                continue
        alone = model(**single).logits
        expected = row(batched, i)
        if isinstance(alone, dict):
            for key in alone:
                _close(alone[key], expected[key])
        else:
            _close(alone, expected)


@torch.inference_mode()
def test_encode_once_decode_many_equals_per_chunk_forward():
    model = _model(MM)
    inputs = make_inputs(MM, model, batch=2)["inputs"]
    chunks = output_chunks(num_chunks=8, image_points=2 * 16 * 16, audio_points=16)
    per_chunk = [model(inputs, subsampled_output_points=c).logits for c in chunks]
    encoded = model.encode(inputs)
    for per_pass in (1, 3, 8):
        out = reconstruct(model, encoded, chunks, chunks_per_pass=per_pass)
        _close(out["image"], torch.cat([o["image"] for o in per_chunk], dim=1))
        _close(out["audio"], torch.cat([o["audio"] for o in per_chunk], dim=1))
        _close(out["label"], per_chunk[0]["label"])
    labels = model.decode(encoded, label_only())
    assert labels["image"].shape == (2, 0, 3) and labels["audio"].shape == (2, 0)
    _close(labels["label"], per_chunk[0]["label"])


def test_chunks_must_divide_evenly():
    with pytest.raises(ValueError, match="evenly"):
        output_chunks(num_chunks=3, image_points=512, audio_points=16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", sorted(CONFIGS))
@torch.inference_mode()
def test_reduced_precision_runs_and_stays_close(arch, dtype):
    """Every assembly, the multimodal one included, in bfloat16 and float16."""
    reference = _model(arch)
    reduced = _model(arch).to(dtype)
    kwargs = make_inputs(arch, reference, batch=2)
    if arch == MM:
        kwargs["subsampled_output_points"] = output_chunks(num_chunks=4, image_points=512, audio_points=16)[0]
    if arch == MLM:
        kwargs = {"input_ids": kwargs["inputs"], "attention_mask": kwargs["attention_mask"]}

    def cast(v):
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    low = reduced(**{k: (cast(v) if k != "subsampled_output_points" else v) for k, v in kwargs.items()}).logits
    high = reference(**kwargs).logits
    pairs = [(low[k], high[k]) for k in high] if isinstance(high, dict) else [(low, high)]
    for lo, hi in pairs:
        assert lo.dtype == dtype
        scale = hi.abs().max().item() + 1e-6
        assert (lo.float() - hi).abs().max().item() <= 0.05 * scale + 1e-3
