"""The one rule for names: gateway names, connector and member identities, cluster and service names.

Each of them crosses the wire (docs/protocol.md), becomes a log field, a metric label and, for the
development CA, a file name and a DNS name. One pattern, so that ``shield check-config``,
``shield certs-dev`` and the wire accept exactly the same names: a name the loader takes can
always be announced.
"""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_RULE = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None
