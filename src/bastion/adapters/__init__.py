"""Framework adapters: one thin module per framework (``bastion.adapters.<name>``), each on the
framework's official pre-tool and post-tool hooks, all sharing ``ToolGate``.

Importing this package imports no framework; ``bastion.adapters.<name>`` needs its extra
(``pip install 'bastion[<name>]'``).
"""

from bastion.adapters._core import (
    STOP_CODES,
    Post,
    Pre,
    RunStopped,
    Source,
    ToolGate,
    denial_message,
    parse_args,
)

__all__ = ["STOP_CODES", "Post", "Pre", "RunStopped", "Source", "ToolGate", "denial_message",
           "parse_args"]
