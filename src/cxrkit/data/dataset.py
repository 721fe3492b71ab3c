"""A torch Dataset over the image cache, and the loader that feeds training.

Each item is a dict:

``image``     uint8 tensor ``(1, S, S)`` straight from the cache (transforms run later,
              on whole batches, see :mod:`cxrkit.data.transforms`);
``labels``    float32 ``(F,)`` 0/1, NaN where a label is unknown (masked out of losses);
``meta``      float32 ``(4,)``: age in years / 100, age missing (0/1), male (0/1), AP view (0/1);
``image_id``  the NIH file name; ``index`` the row in this dataset.

Batches are read with one fancy-index of the memory-mapped cache (``__getitems__``),
sorted by cache row so the read is sequential-ish, which is why the loader costs
microseconds per image instead of a PNG decode.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrkit.data.metadata import META_FEATURES, metadata_vector  # noqa: F401 (re-exported)
from cxrkit.labels import FINDINGS


class CXRDataset(Dataset):
    """Images of ``table`` (rows of the label table, optionally one split) from ``cache``.

    ``findings`` selects and orders the targets (all 14, one for a binary task, or any
    subset; see :func:`cxrkit.labels.resolve_findings`). Rows whose image is not in the
    cache (e.g. recorded as corrupt by ``cxrkit prepare``) raise here, naming them, unless
    ``drop_uncached=True``, which drops them with the count in ``self.dropped``.
    """

    def __init__(
        self, cache, table: pd.DataFrame, findings=FINDINGS, *, drop_uncached: bool = False
    ):
        self.cache = cache
        self.findings = tuple(findings)
        missing_cols = [f for f in self.findings if f not in table.columns]
        if missing_cols:
            raise KeyError(f"label table has no column(s) {missing_cols}")
        cached = pd.Index(cache.ids)
        in_cache = table["image_id"].isin(cached).to_numpy()
        self.dropped = table.loc[~in_cache, "image_id"].tolist()
        if self.dropped and not drop_uncached:
            raise KeyError(
                f"{len(self.dropped)} image(s) are not in the cache at "
                f"{getattr(cache, 'root', cache)}, e.g. {self.dropped[:5]} "
                "(corrupt or not prepared; see the cache's index.csv)"
            )
        table = table.loc[in_cache].reset_index(drop=True)
        self.table = table
        self.image_ids = table["image_id"].tolist()
        self.rows = np.asarray(cache.rows(self.image_ids), dtype=np.int64)
        self.labels = torch.tensor(table[list(self.findings)].to_numpy(dtype=np.float32))
        self.meta = torch.from_numpy(metadata_vector(table))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices) -> list[dict]:
        idx = np.asarray(indices, dtype=np.int64)
        rows = self.rows[idx]
        order = np.argsort(rows, kind="stable")
        images = np.empty((len(idx), 1, self.cache.size, self.cache.size), dtype=np.uint8)
        images[order, 0] = self.cache.images[rows[order]]
        batch = torch.from_numpy(images)
        return [
            {
                "image": batch[k],
                "labels": self.labels[i],
                "meta": self.meta[i],
                "image_id": self.image_ids[i],
                "index": int(i),
            }
            for k, i in enumerate(idx)
        ]


def collate(items: list[dict]) -> dict:
    """Stack a list of items into a batch dict (ids stay a list of str)."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
        "meta": torch.stack([it["meta"] for it in items]),
        "image_id": [it["image_id"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    workers: int = 0,
    drop_last: bool = False,
    sampler=None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader with a seeded shuffle (its own generator, never global RNG)."""
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
    )
