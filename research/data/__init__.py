"""Input: TFDS datasets read into memory and batched as pure functions of (seed, epoch).

`builders` (which TFDS builder a name gets, the data dir), `prepare` (a prepared builder: once,
under a lock, from IDX files or by download), `splits` (the dataset described, its splits in
memory, normalization), `batches` (the epoch order, the batches, the batch-size checks), `idx`
(the IDX file reader), `catalog` (`run.py data`) and `datasets/` (the project's own builders).
"""
