"""The names a model answers to: its resource name, catalog id, source repo id, aliases.

One function for the gateway (from the EmbeddingModel: its name and spec.source) and
the model server (from its name and the artifact manifest), so both accept the same
names for the same model, case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass

from akidb_embed import catalog


@dataclass(frozen=True)
class Alias:
    name: str
    kind: str  # name | catalog-id | repo-id | alias | source


def is_repo_id(source: str | None) -> bool:
    return bool(source) and "/" in str(source) and not str(source).startswith("/")


def catalog_entry(
    name: str, source: str | None = None, catalog_id: str | None = None
) -> catalog.CatalogEntry | None:
    """The catalog entry of a model: by its name, then its source, then `catalog_id`
    (what the conversion recognised, recorded in the manifest)."""
    for key in (name, source, catalog_id):
        if key:
            entry = catalog.find_by_repo(key)
            if entry is not None:
                return entry
    return None


def model_aliases(
    name: str, source: str | None = None, catalog_id: str | None = None
) -> list[Alias]:
    """Every name of the model `name` (first), without case-insensitive duplicates."""
    entry = catalog_entry(name, source, catalog_id)
    found = [Alias(name, "name")]
    if entry is not None:
        found.append(Alias(entry.name, "catalog-id"))
        found.append(Alias(entry.repo_id, "repo-id"))
        found += [Alias(a, "alias") for a in entry.aliases]
    if source and is_repo_id(source):
        found.append(Alias(source, "source"))
    seen: set[str] = set()
    out = []
    for alias in found:
        if alias.name.lower() not in seen:
            seen.add(alias.name.lower())
            out.append(alias)
    return out
