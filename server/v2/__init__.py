"""The Open Inference Protocol (KServe v2): payloads, the binary tensor codec, per-task tensor mapping."""
