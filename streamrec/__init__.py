"""streamrec: an event-driven streaming recommender.

Glue that belongs to no single stage: configuration, message schemas, topics, the embedded stack
and the command line. The stages live in the top-level packages `producers`, `stream_processors`,
`feature_repo`, `models` and `generation`.
"""

from ._exceptions import ConfigError, SchemaError, StackError, StreamrecError
from .config import Settings, get_settings, load_settings

__all__ = ["ConfigError", "SchemaError", "StackError", "StreamrecError", "Settings", "get_settings",
           "load_settings"]
__version__ = "0.1.0"
