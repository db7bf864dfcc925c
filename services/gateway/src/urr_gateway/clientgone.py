"""The public listener's "client went away" error, kept interpreted on purpose.

mypyc compiles ``publicrequest`` but cannot make a native class of a subclass of a builtin
exception other than ``Exception`` (``ConnectionResetError`` here), so the class lives in a
module that is never compiled, and ``publicrequest`` re-exports it.
"""

from __future__ import annotations


class ClientGone(ConnectionResetError):
    """The client closed the connection, or broke HTTP, before its body ended."""
