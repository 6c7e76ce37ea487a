"""TFDS builders for the datasets this project ships (importing one registers it with TFDS)."""
