"""streamrec: an event-driven streaming recommender.

The core every stage stands on (settings, message schemas, topics, the one Kafka client layer, the
feature rows and Feast access, the error policy) imports no stage. The stages live beside each other in
the top-level packages `generation`, `producers`, `stream_processors`, `models`, `serving` and
`feature_repo`; the shell on top of them (CLI, demo, embedded stack) in `streamrec.shell`. README,
"Architecture"; `tests/test_layers.py` holds the imports to it.
"""

from ._exceptions import ConfigError, SchemaError, StackError, StreamrecError
from .config import Settings, get_settings, load_settings

__all__ = ["ConfigError", "SchemaError", "StackError", "StreamrecError", "Settings", "get_settings",
           "load_settings"]
__version__ = "0.1.0"
