"""What a name typed by a page user may reach: the one gate for paths and URLs.

A studio on loopback serves its owner, who may name any file of theirs. A shared studio
(``--lan``, ``--share``, a non-loopback host) serves whoever logs in, so every path they give
(a dataset, an import, a test file, a rubric) is expanded (``~``, ``~user``), resolved
(``..``, symlinks) and only then held to the studio's folders and the owner's
``LORA_STUDIO_DATA_ROOTS``; and every URL the server will call for them (a judge, a teacher)
must name a loopback address or a host the owner listed; and the only code they may have it
run (a GRPO reward file) is the owner's, in the studio's rewards/ folder. Checking before
expanding, or expanding after checking, is how a ``~/secret.csv`` slips through: here both
happen in one call, and what it returns is what is read.

A Hugging Face dataset name is only ever a strict ``owner/name[:config][@split]`` that names
no local file or folder: a local folder shaped like one is a path, and held to the roots.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from core.errors import StudioError

_PART = r"[A-Za-z0-9][\w.-]*"
HUB_NAME = re.compile(
    rf"(?P<name>{_PART}/{_PART})(?::(?P<config>{_PART}))?(?:@(?P<split>{_PART}))?"
)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_hub_name(text: str) -> bool:
    """``owner/name[:config][@split]`` with no ``..`` part, that names nothing on disk."""
    if not HUB_NAME.fullmatch(text) or ".." in text:
        return False
    return not Path(text).exists()


def is_loopback_host(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve(text: str | os.PathLike) -> Path:
    """``text`` as the absolute path the server would open: ``~`` expanded, symlinks and
    ``..`` resolved."""
    try:
        return Path(text).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):  # an unknown ~user, a loop of links
        raise StudioError(f"{str(text)[:200]!r} is not a usable path") from None


@dataclass(frozen=True)
class Access:
    """The gate: ``shared`` is whether people other than the owner use the studio."""

    shared: bool = False
    roots: tuple[Path, ...] = ()  # where a shared studio reads files
    # besides loopback, the hosts a shared studio's URLs may name, by what calls them
    hosts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def path(self, text: str | os.PathLike) -> Path:
        """A file or folder a page user named, as it will be read."""
        if not str(text).strip():
            raise StudioError("no path given")
        resolved = resolve(text)
        if not self.shared:
            return resolved
        for root in self.roots:
            if resolved.is_relative_to(resolve(root)):
                return resolved
        allowed = ", ".join(str(r) for r in self.roots)
        raise StudioError(
            f"{str(text)[:200]} is outside the folders datasets may be read from ({allowed})",
            hint="upload the file instead, or add its folder to LORA_STUDIO_DATA_ROOTS",
        )

    def code(self, text: str, folder: Path) -> Path:
        """A file of code a page user named (a GRPO reward file), as it will be run: a file
        of the owner's ``folder`` (the studio's rewards/) by its name; on a shared studio
        nothing else, so no code from a page user (an upload, a dataset) ever runs there."""
        name = str(text).strip()
        if not name:
            raise StudioError("no reward file given")
        home = resolve(folder)
        kept = resolve(home / name)
        if kept.parent == home and kept.is_file():
            return kept
        if self.shared:
            raise StudioError(
                f"{name[:200]}: a shared studio runs only the reward files in {home}",
                hint="pick one of those by name (the studio's owner puts them there), or "
                "use the built-in rewards",
            )
        return resolve(name)

    def source(self, text: str) -> str:
        """A data source a page user named: a strict hub name as it is, else a path
        (``path``)."""
        text = text.strip()
        return text if is_hub_name(text) else str(self.path(text))

    def url(self, text: str, what: str = "judge") -> str:
        """An http(s) URL the server may call for a page user: on a shared studio only
        loopback and the owner's hosts."""
        text = text.strip()
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
        except ValueError:
            raise StudioError(f"{text[:200]!r} is not a URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise StudioError(
                f"{text[:200]!r} is not an http(s) URL",
                hint=f"give the {what}'s base URL, e.g. http://127.0.0.1:11434/v1",
            )
        listed = self.hosts.get(what, ())
        if self.shared and not is_loopback_host(host) and host.lower() not in listed:
            raise StudioError(
                f"this shared studio calls no {what} at {host}: only loopback addresses and "
                f"the hosts its owner lists",
                hint=f"the studio's owner can add {host} to LORA_STUDIO_{what.upper()}_HOSTS",
            )
        return text


def hosts_from_env(name: str) -> tuple[str, ...]:
    """The host names in an environment variable, comma- or space-separated, lower case."""
    return tuple(h.lower() for h in re.split(r"[,\s]+", os.environ.get(name, "")) if h)
