"""Data for fedtune: the generated instruction, topic and news tasks, local files, tokenizer, partitioners.

Local datasets in the Hugging Face formats (save_to_disk, parquet, JSON, CSV) are read by
:mod:`fedtune.data.hf` with prompt templates from :mod:`fedtune.data.templates`; it needs
the ``datasets`` library (the ``torch`` extra) and is imported where used, not here.

Everything re-exported here is torch-free, so an on-device client can use it without
torch. Tensor encoding and batching live in :mod:`fedtune.data.batches` (torch), which is
deliberately not imported here.
"""

from .files import load_csv, load_jsonl
from .news import NEWS_CLASSES, NEWS_LABEL_NAMES, generate_news
from .partition import partition_by_field, partition_by_label, partition_dirichlet, partition_iid
from .sources import GENERATED_LABEL_NAMES
from .tasks import SYMBOLS, TASK_TYPES, Example, generate_instructions
from .tokenizer import WordTokenizer
from .topics import TOPIC_LABEL_NAMES, TOPICS, generate_topics

__all__ = [
    "GENERATED_LABEL_NAMES",
    "NEWS_CLASSES",
    "NEWS_LABEL_NAMES",
    "SYMBOLS",
    "TASK_TYPES",
    "TOPICS",
    "TOPIC_LABEL_NAMES",
    "Example",
    "WordTokenizer",
    "generate_instructions",
    "generate_news",
    "generate_topics",
    "load_csv",
    "load_jsonl",
    "partition_by_field",
    "partition_by_label",
    "partition_dirichlet",
    "partition_iid",
]
