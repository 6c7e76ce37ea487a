"""Input: TFDS datasets read into memory and batched as pure functions of (seed, epoch)."""
