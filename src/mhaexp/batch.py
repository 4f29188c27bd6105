"""What a batch holds beyond ``input_ids``: the column names the data writes and the model's objectives
read. Below both :mod:`mhaexp.data` and :mod:`mhaexp.nn` (which may not import each other), so each
name has one home."""

from __future__ import annotations

# Batch column (bool, B x T) of the positions whose next-token loss counts, where a dataset gives one
# (data=retrieval with data.loss=answer); absent: every real position counts.
LOSS_MASK = "loss_mask"
