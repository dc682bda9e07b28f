"""One log format for every process of the node."""

import logging
import sys


def setup(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; that is noise beside our own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
