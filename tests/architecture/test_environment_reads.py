"""Below the CLI nothing reads the process environment, except the documented uses listed here.

Configuration is data (DESIGN.md section 2): the CLI (``cli/environment.py``) reads the environment
and passes values down. Each allowed use below says why it stays.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BELOW_THE_CLI = ("kernel", "loaders", "workloads", "tuning", "reports", "testbed", "geo", "app")
ENV_USE = re.compile(r"os\.environ|os\.getenv|getenv\(")

#: (file, the line's text fragment) -> why it stays.
ALLOWED = {
    ("kernel/storage.py", "os.environ.setdefault(*GCS_BUCKET_TYPE_PROBE)"):
        "gcsfs reads its bucket-type probe switch from the environment when it is imported; there is no other switch",
    ("workloads/compute.py", 'os.environ.get("XDG_CONFIG_HOME")'):
        "the user's config folder by the XDG base-directory convention, as botocore finds ~/.aws/config",
    ("testbed/servers.py", "os.environ.items() if not k.startswith"):
        "the server subprocess inherits the environment minus the AWS_*/emulator variables meant for clients",
}


def _uses() -> list[tuple[str, str]]:
    found = []
    for folder in BELOW_THE_CLI:
        for path in sorted((ROOT / folder).rglob("*.py")):
            in_docstring = False
            for line in path.read_text().splitlines():
                text = line.strip()
                if text.count('"""') == 1:
                    in_docstring = not in_docstring
                    continue
                if in_docstring or text.startswith(("#", ">>>", "...")):
                    continue
                if ENV_USE.search(text):
                    found.append((str(path.relative_to(ROOT)), text))
    return found


def test_only_documented_environment_reads_below_the_cli() -> None:
    unexpected = [
        (file, text) for file, text in _uses()
        if not any(file == f and fragment in text for f, fragment in ALLOWED)
    ]
    assert not unexpected, "\n".join(f"{f}: {t}" for f, t in unexpected)


def test_every_allowed_read_still_exists() -> None:
    uses = _uses()
    stale = [key for key in ALLOWED if not any(f == key[0] and key[1] in t for f, t in uses)]
    assert not stale, f"remove from ALLOWED: {stale}"
