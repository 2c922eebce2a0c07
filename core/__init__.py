"""maskid core library: face detection, alignment, embedding, storage and matching.

Nothing here imports the Telegram bot or loads a model at import time.
"""

__version__ = "0.1.0"
