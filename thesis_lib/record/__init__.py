"""Writing a run's record: the facts schema, `RunWriter` (events.jsonl, scalars.csv, steps.csv) and env.json.

The loop writes through `RunWriter`; your own loop can too, and its runs then read back and
report like any other. Readers live in `thesis_lib.facts`; where each file goes, in `thesis_lib.layout`.
"""

from .env import collect_env
from .schema import SCHEMA_VERSION, config_hash, scalar_columns
from .writer import RunWriter

__all__ = ["RunWriter", "scalar_columns", "config_hash", "collect_env", "SCHEMA_VERSION"]
