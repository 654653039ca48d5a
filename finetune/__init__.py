"""Fine-tuning a Perceiver IO text classifier from a masked-LM (or classifier) checkpoint.

Training lives here, apart from the inference-first model_core whose assemblies it trains: the
classifier is model_core's PerceiverForSequenceClassification, its encoder from the base checkpoint.
"""

from finetune.errors import DataError, FinetuneError, OptionsError
from finetune.report import Report
from finetune.run import Options, finetune

__all__ = ["DataError", "FinetuneError", "Options", "OptionsError", "Report", "finetune"]
